"""`model.init_from=RUN_DIR`: fine-tune a text task from a pretraining run.

RUN_DIR is the run directory of a `task=masked_lm` run. What it holds and what is taken:
- `.hydra/config.yaml`: its task and model; `check_init_from` compares them with this run's
  (before TensorFlow is imported) and refuses another task, another model family, other
  sizes or a longer `task.max_length` than its position table, naming the layer, both
  shapes and the fix;
- `pretraining.json`: its vocabulary and tokenizer, which the fine-tuning task uses instead
  of learning its own (`PretrainedRun.text_ids` for sentiment, `word_lookup` for NER);
- `checkpoints/`: its weights (the best epoch's, else the newest save point). `initialize`
  rebuilds its network, restores them and copies the text encoder's layers by name
  (`embedding`, `encoder_{i}`, `final_norm`) into the fine-tuning model;
- `mlflow_run_id`: tagged on the fine-tuning run as `pretrained_run_id`.

`trainer.freeze_epochs=N` trains only the layers that were not copied (the head) for the
first N epochs (`FreezeHook`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib

from omegaconf import DictConfig, OmegaConf

from pipelines.config import ConfigError
from pipelines.hooks import Hook

log = logging.getLogger(__name__)

PRETRAINING_TASKS = ("masked_lm",)
MANIFEST = "pretraining.json"  # = pipelines.tasks.masked_lm.MANIFEST (no TF import here)
# Model keys that decide weight shapes, with the layer and shape each one sets; D hidden,
# H heads, I feed-forward width.
_SHAPES = {
    "hidden_dim": ("embedding", "token embedding", lambda m, v: f"({v}, {m.hidden_dim})"),
    "num_heads": ("encoder_0", "attention query kernel",
                  lambda m, v: f"({m.hidden_dim}, {m.num_heads}, {m.hidden_dim // m.num_heads})"),
    "intermediate_dim": ("encoder_0", "feed-forward kernel",
                         lambda m, v: f"({m.hidden_dim}, {m.intermediate_dim})"),
    "num_layers": ("encoder_{n}", "blocks", lambda m, v: f"{m.num_layers} blocks"),
    "normalize_first": ("final_norm", "pre-norm final layer norm",
                        lambda m, v: "present" if m.normalize_first else "absent"),
    "positional": ("embedding", "position embedding", lambda m, v: m.positional),
    "attention": ("encoder_0", "attention", lambda m, v: m.attention),
}


class InitFromError(ConfigError):
    """`model.init_from` names a run this model cannot start from (the message says why)."""


@dataclasses.dataclass
class RunInfo:
    """What a pretraining run directory says about itself (no TensorFlow)."""

    directory: pathlib.Path
    config: DictConfig  # its resolved .hydra/config.yaml
    manifest: dict  # its pretraining.json

    @property
    def vocabulary_size(self) -> int:
        return len(self.manifest["vocabulary"])

    def checkpoint(self) -> tuple[pathlib.Path, str]:
        """The folder and prefix of the weights to copy: the best epoch's, else the newest
        save point (`pipelines.checkpoints`)."""
        for folder, prefix in ((self.directory / "checkpoints" / "best", "epoch"),
                               (self.directory / "checkpoints", "ckpt")):
            if sorted(folder.glob(f"{prefix}-*.index")):
                return folder, prefix
        raise InitFromError(
            f"model.init_from={self.directory}: no checkpoint in "
            f"{self.directory / 'checkpoints'} (neither best/epoch-N nor ckpt-N): the "
            "pretraining run never finished an epoch. Train it (the same command resumes it) "
            "or point model.init_from at a finished run")


def read_run(path: str | pathlib.Path, tasks: tuple[str, ...] = PRETRAINING_TASKS) -> RunInfo:
    """Reads and checks RUN_DIR: it exists, is a run directory, of one of `tasks`, with a
    checkpoint (and, for masked_lm, its `pretraining.json`)."""
    directory = pathlib.Path(str(path)).expanduser()
    if not directory.is_dir():
        raise InitFromError(f"model.init_from={path}: no such directory. Give the run directory "
                            "(hydra.run.dir) of a task=masked_lm run")
    config_file = directory / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise InitFromError(f"model.init_from={path}: {config_file} is missing, so this is not a "
                            "run directory. Give the hydra.run.dir of a task=masked_lm run")
    config = OmegaConf.load(config_file)
    task = OmegaConf.select(config, "task.name")
    if task not in tasks:
        raise InitFromError(
            f"model.init_from={path} is a run of task={task}, not of a pretraining task "
            f"({', '.join(tasks)}). Pretrain first: python -m pipelines "
            f"task={tasks[0]} model=transformer hydra.run.dir=RUN_DIR, then model.init_from=RUN_DIR")
    manifest_file = directory / MANIFEST
    if task == "masked_lm" and not manifest_file.is_file():
        raise InitFromError(f"model.init_from={path}: {manifest_file} is missing (the run stopped "
                            "before its vocabulary was written); re-run the pretraining")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}
    info = RunInfo(directory, config, manifest)
    info.checkpoint()
    return info


def check_init_from(cfg: DictConfig) -> None:
    """`config.check`'s part: refuses, before TensorFlow, an init_from this run cannot use
    and a `trainer.freeze_epochs` without one."""
    whole = cfg.task.get("init_from_tasks")
    if whole:  # a task that takes the run whole (zero_shot_text)
        check_whole_run(cfg, tuple(whole))
        return
    init_from = cfg.model.get("init_from")
    freeze = int(cfg.trainer.get("freeze_epochs", 0) or 0)
    if freeze < 0:
        raise ConfigError(f"trainer.freeze_epochs must be >= 0; received {freeze}")
    if not init_from:
        if freeze:
            raise ConfigError(f"trainer.freeze_epochs={freeze} freezes the layers copied by "
                              "model.init_from, which is not set: add model.init_from=RUN_DIR "
                              "or drop trainer.freeze_epochs")
        return
    accepted = cfg.task.get("init_from_tokenizers")
    if not accepted:
        raise InitFromError(
            f"model.init_from fine-tunes the text encoder of a task whose task.init_from_tokenizers "
            f"lists vocabularies (sentiment, ner); task={cfg.task.name} cannot start from a "
            "pretraining run yet (drop model.init_from)")
    run = read_run(init_from)
    theirs = run.config.model
    if theirs.name != cfg.model.name:
        raise InitFromError(
            f"model.init_from={init_from} pretrained model={theirs.name}; model={cfg.model.name} "
            f"has other layers (layer 'embedding' and the blocks). Use model={theirs.name} "
            "with its sizes, or pretrain a run of this model")
    vocabulary = run.vocabulary_size
    for key, (layer, what, shape) in _SHAPES.items():
        if key in theirs and key in cfg.model and theirs[key] != cfg.model[key]:
            raise InitFromError(
                f"model.{key}={cfg.model[key]} differs from the pretraining run's "
                f"{key}={theirs[key]} ({init_from}): layer '{layer}' ({what}) is "
                f"{shape(theirs, vocabulary)} there and would be {shape(cfg.model, vocabulary)} "
                f"here. Fix: model.{key}={theirs[key]} (or drop model.init_from)")
    length, table = int(cfg.task.max_length), int(run.manifest["sequence_length"])
    if length > table:
        raise InitFromError(
            f"task.max_length={length} exceeds the pretraining run's position table: layer "
            f"'embedding' (position embedding) is ({table}, {theirs.hidden_dim}) there and would "
            f"be ({length}, {theirs.hidden_dim}) here. Fix: task.max_length={table}, or pretrain "
            f"with task.max_length={length}")
    if run.manifest["tokenizer"] not in accepted:
        why = (f"{cfg.task.name.upper()} tags whole words, so it needs a word vocabulary"
               if accepted == ["word"] else f"task={cfg.task.name} takes {' or '.join(accepted)}")
        raise InitFromError(
            f"model.init_from={init_from} learned a {run.manifest['tokenizer']} vocabulary; "
            f"{why} (task.init_from_tokenizers): pretrain with task=masked_lm "
            f"task.tokenizer={accepted[0]}")
    if accepted == ["word"]:  # whole words: the lookup must standardise as the run did
        if bool(run.manifest["lowercase"]) != bool(cfg.task.lowercase):
            raise InitFromError(
                f"task.lowercase={cfg.task.lowercase} differs from the pretraining run's "
                f"vocabulary (task.lowercase={run.manifest['lowercase']}); set "
                f"task.lowercase={run.manifest['lowercase']}")


def check_whole_run(cfg: DictConfig, tasks: tuple[str, ...]) -> RunInfo:
    """For a task that takes a pretraining run whole, network and tokenizer, and trains
    nothing (`task.init_from_tasks`): model.init_from is required, names a run of one of
    `tasks` made with this model group, and `trainer.freeze_epochs` stays 0; then the task
    schema's `check_run(task, run)`, if it has one."""
    task = cfg.task.name
    init_from = cfg.model.get("init_from")
    if not init_from:
        raise InitFromError(
            f"task={task} needs model.init_from=RUN_DIR, the run directory of a "
            f"{' or '.join(tasks)} run whose model it uses as it is (e.g. python -m pipelines "
            f"task={tasks[0]} model=transformer hydra.run.dir=RUN_DIR first)")
    if int(cfg.trainer.get("freeze_epochs", 0) or 0):
        raise ConfigError(f"trainer.freeze_epochs={cfg.trainer.freeze_epochs} has no effect: "
                          f"task={task} trains nothing; drop it")
    run = read_run(init_from, tasks)
    theirs = run.config.model.name
    if theirs != cfg.model.name:
        raise InitFromError(f"model.init_from={init_from} is a run of model={theirs}; task={task} "
                            f"uses its network as it is: set model={theirs}")
    own_check = getattr(OmegaConf.get_type(cfg.task), "check_run", None)
    if own_check is not None:
        own_check(cfg.task, run)
    return run


def pretraining_run_id(path: str | pathlib.Path) -> str | None:
    """The MLflow run id of the pretraining run (its `mlflow_run_id` file), if it was tracked."""
    from pipelines.tracking import RUN_ID_FILE

    id_file = pathlib.Path(str(path)) / RUN_ID_FILE
    return id_file.read_text().strip() if id_file.is_file() else None


# ----------------------------------------------------------------------------- TensorFlow
@functools.lru_cache(maxsize=4)
def open_run(path: str) -> "PretrainedRun":
    return PretrainedRun(read_run(path))


class PretrainedRun:
    """A checked pretraining run: its tokenizer, its vocabulary and its restored encoder."""

    def __init__(self, info: RunInfo):
        self.info = info
        self.manifest = info.manifest
        self.vocabulary = list(info.manifest["vocabulary"])

    def text_ids(self, sequence_length: int):
        """The pretraining tokenizer: strings (B,) -> `[CLS] ... [SEP]` ids (B, T)."""
        from pipelines.tasks.masked_lm import TextIds

        return TextIds(self.vocabulary, self.manifest["tokenizer"], self.manifest["lowercase"],
                       sequence_length, name="text_ids")

    def word_lookup(self):
        """Words -> the pretraining ids ("" = 0 = padding, 1 = [UNK]): for word taggers."""
        import keras

        return keras.layers.StringLookup(vocabulary=self.vocabulary[2:], mask_token="",
                                         oov_token=self.vocabulary[1], name="word_lookup")

    def network(self):
        """The pretraining run's whole masked-LM network (encoder and tied head), restored."""
        from pipelines.tasks import build_backbone
        from pipelines.tasks.masked_lm import network

        cfg = self.info.config
        model = network(build_backbone(cfg.model), len(self.vocabulary),
                        int(self.manifest["sequence_length"]),
                        int(self.manifest["max_predictions"]), bool(self.manifest["next_sentence"]))
        restore(self.info, model)
        return model

    def encoder(self):
        """The pretraining run's text encoder with its trained weights."""
        model = self.network()
        return next(layer for layer in model.layers if isinstance(layer, type(model))
                    and any(sub.name == "embedding" for sub in layer.layers))


def restore(info: RunInfo, model) -> None:
    """Restores the run's weights (`RunInfo.checkpoint`: the best epoch's, else the newest
    save point) into `model`, the network the run trained, rebuilt."""
    import tensorflow as tf

    from pipelines.checkpoints import _SavePoints

    folder, prefix = info.checkpoint()
    points = _SavePoints(folder, prefix, tf.train.Checkpoint(model=model), partial=True)
    number = next(n for n in points.numbers() if points.committed(n))
    points.load(number)  # checks the files against their record
    points.read(number)
    log.info("init_from: restored %s", points.path(number))


def _models(model):
    """`model` and every model nested in it, outermost first."""
    import keras

    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _models(layer)


def _encoder_of(model, names: set[str]):
    """The (nested) model whose own layers hold every name in `names`: the text encoder."""
    return next((m for m in _models(model) if names <= {sub.name for sub in m.layers}), None)


def _copy_embedding(source, target, run_dir) -> None:
    """Token table (+ the segment-0 vector when the target has no segments: a single
    sentence is segment 0), and the first T rows of a learned position table."""
    import numpy as np

    tokens = np.asarray(source.token_embedding.embeddings)
    if getattr(source, "segment_embedding", None) is not None and not target.num_segments:
        tokens = tokens + np.asarray(source.segment_embedding.embeddings)[0]
    pairs = [("embedding/token_embedding", target.token_embedding.embeddings, tokens)]
    if target.num_segments:
        pairs.append(("embedding/segment_embedding", target.segment_embedding.embeddings,
                      np.asarray(source.segment_embedding.embeddings)))
    if source.positional == "learned" and target.positional == "learned":
        table = np.asarray(source.position_embedding.embeddings)
        pairs.append(("embedding/position_embedding", target.position_embedding.embeddings,
                      table[: target.position_embedding.embeddings.shape[0]]))
    for name, variable, value in pairs:
        if tuple(variable.shape) != value.shape:
            raise InitFromError(
                f"model.init_from={run_dir}: layer '{name}' is {value.shape} in the pretraining "
                f"run and {tuple(variable.shape)} here. Use the pretraining run's sizes and "
                "vocabulary (the task takes its tokenizer from the run)")
        variable.assign(value.astype(variable.dtype))


def initialize(cfg: DictConfig, model) -> list:
    """With `model.init_from`: copies the pretraining run's text encoder layers into `model`
    by name and returns the target layers copied; [] without it. Raises `InitFromError`
    (layer, both shapes, the fix) before any training when they do not fit."""
    init_from = cfg.model.get("init_from")
    if not init_from:
        return []
    source = open_run(str(init_from)).encoder()
    named = {layer.name: layer for layer in source.layers if layer.weights}
    target_encoder = _encoder_of(model, set(named))
    if target_encoder is None:
        mine = {layer.name for m in _models(model) for layer in m.layers}
        missing = sorted(set(named) - set(mine))
        raise InitFromError(
            f"model.init_from={init_from}: the pretraining run has the layers "
            f"{', '.join(sorted(named))}; this model lacks {', '.join(missing)}. Use the "
            "pretraining run's model sizes (e.g. model.num_layers, model.normalize_first)")
    copied = []
    for name, layer in named.items():
        target = target_encoder.get_layer(name)
        if name == "embedding":
            _copy_embedding(layer, target, init_from)
        else:
            ours, theirs = target.weights, layer.weights
            for mine, their in zip(ours, theirs):
                if tuple(mine.shape) != tuple(their.shape) or len(ours) != len(theirs):
                    raise InitFromError(
                        f"model.init_from={init_from}: layer '{name}' weight {their.path} is "
                        f"{tuple(their.shape)} in the pretraining run and {tuple(mine.shape)} "
                        "here. Use the pretraining run's model sizes")
                mine.assign(their)
        copied.append(target)
    log.info("init_from %s: copied %s", init_from, ", ".join(layer.name for layer in copied))
    return copied


class FreezeHook(Hook):
    """`trainer.freeze_epochs=N`: the copied layers do not train in the first N epochs (only
    the new head does); then they join, and the trainer rebuilds its steps."""

    def __init__(self, layers: list, epochs: int):
        self.layers, self.epochs = layers, epochs

    def _set(self, trainer, trainable: bool) -> None:
        for layer in self.layers:
            layer.trainable = trainable
        trainer.rebuild_steps()

    def on_train_begin(self, trainer):
        if trainer.state.epoch < self.epochs:  # epochs >= trainer.epochs: a linear probe
            log.info("freeze_epochs: training only the head for %d epochs", self.epochs)
            self._set(trainer, False)

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch + 1 == self.epochs:
            log.info("freeze_epochs: the pretrained layers train from epoch %d", epoch + 2)
            self._set(trainer, True)


def freeze(cfg: DictConfig, copied: list) -> list:
    """The hooks of `trainer.freeze_epochs` (none when 0 or nothing was copied)."""
    epochs = int(cfg.trainer.get("freeze_epochs", 0) or 0)
    return [FreezeHook(copied, epochs)] if epochs and copied else []
