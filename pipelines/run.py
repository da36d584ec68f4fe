"""`run(cfg)`: strategy -> data -> task -> train -> evaluate -> export -> log.

Everything the run writes goes under its run directory (`hydra.run.dir`): `metrics.json`,
`saved_model/`, `checkpoints/`, and the MLflow run id that a re-run re-attaches.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.utils import get_class  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pipelines.distribute import is_chief, make_strategy  # noqa: E402
from pipelines.tracking import MlflowHook, Tracker  # noqa: E402
from pipelines.trainer import EarlyStopping, Hook, Trainer  # noqa: E402

log = logging.getLogger(__name__)


def _value(option) -> str:
    return str(getattr(option, "value", option))


def make_optimizer(tcfg: DictConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """Optimizer with the configured schedule and global-norm clipping."""
    lr = tcfg.learning_rate
    schedule = _value(tcfg.lr_schedule)
    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(total_steps, 1))
    elif schedule == "warmup_cosine":
        warmup = min(tcfg.warmup_steps, max(total_steps - 1, 0))
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(total_steps - warmup, 1), warmup_target=tcfg.learning_rate,
            warmup_steps=warmup,
        )
    common = {"learning_rate": lr, "global_clipnorm": tcfg.clip_norm}
    name = _value(tcfg.optimizer)
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=tcfg.weight_decay, **common)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(momentum=0.9, **common)
    else:
        optimizer = keras.optimizers.Adam(**common)
    if _value(tcfg.precision) == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class CheckpointHook(Hook):
    """Saves model, optimizer, dropout RNG and trainer state at every epoch end and save point
    (`trainer.checkpoint_every_steps`); restores on re-run. Checkpoints are numbered by the
    batches consumed (`state["step"]`), which is also where a resumed run picks up the data."""

    def __init__(self, directory: pathlib.Path, model, optimizer, write: bool = True):
        self.directory = pathlib.Path(directory)
        # Keras leaves the dropout seed generators' states out of the checkpoint's object
        # graph; listing the non-trainable variables puts them in (a variable reached by two
        # paths is saved once), so a resumed run draws the same dropout masks.
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                              rng=list(model.non_trainable_variables))
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory), 2)
        self.state_file = self.directory / "trainer_state.json"
        self.write = write
        # The best epoch's weights, so that a resumed run still ends on them.
        self.best = tf.train.Checkpoint(model=model)
        self.best_prefix = str(self.directory / "best" / "weights")

    def restore(self, trainer: Trainer) -> bool:
        if not (self.manager.latest_checkpoint and self.state_file.exists()):
            return False
        trainer.state = json.loads(self.state_file.read_text())
        # The state file is written after the checkpoint, so a kill in between leaves it one
        # save behind: restore the checkpoint it describes (still kept, max_to_keep=2).
        # States from before step numbering fall back to the latest.
        suffix = f"-{trainer.state.get('step')}"
        path = next((p for p in self.manager.checkpoints if p.endswith(suffix)),
                    self.manager.latest_checkpoint)
        self.checkpoint.restore(path).assert_existing_objects_matched()
        log.info("restored %s (epoch %d done, %d steps in all)", path, trainer.state["epoch"],
                 trainer.state.get("step", 0))
        return True

    def restore_best(self) -> bool:
        """Loads the best epoch's weights saved by an earlier (interrupted) process."""
        if not pathlib.Path(self.best_prefix + ".index").exists():
            return False
        self.best.read(self.best_prefix).expect_partial()
        return True

    def on_save_point(self, trainer):
        self._save(trainer)

    def on_epoch_end(self, trainer, epoch, logs):
        if self.write and trainer.state.get("best_epoch") == epoch:
            self.best.write(self.best_prefix)
        self._save(trainer)

    def _save(self, trainer):
        """Only the chief writes (`write`); the others restore the chief's files."""
        if not self.write:
            return
        self.manager.save(checkpoint_number=trainer.state["step"])
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(trainer.state))
        tmp.replace(self.state_file)


@dataclasses.dataclass
class RunResult:
    metrics: dict  # the final metrics, as in metrics.json
    task: object   # the adapted Task (tokenizers, label names)
    model: keras.Model
    run_dir: pathlib.Path


def run(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict:
    """Trains and evaluates the configured task; returns the final metrics.

    The returned dict also holds `objective`: the task's first metric, for sweeps.
    """
    metrics = execute(cfg, run_dir).metrics
    print(json.dumps(metrics))
    return {**metrics, "objective": next(iter(metrics.values()))}


def execute(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> RunResult:
    """The whole path; `run_dir` defaults to Hydra's output directory."""
    began = time.time()
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    run_dir = pathlib.Path(run_dir or hydra_cfg.runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg else []

    strategy = make_strategy(cfg.distribute)  # first: it may split the CPU into devices
    tcfg = cfg.trainer
    keras.utils.set_random_seed(tcfg.seed)
    if tcfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(_value(tcfg.precision))
    chief = is_chief(strategy)
    log.info("task=%s model=%s data=%s strategy=%s replicas=%d global batch=%d "
             "(per replica %d) precision=%s", cfg.task.name, cfg.model.name,
             _value(cfg.data.source), _value(cfg.distribute.strategy),
             strategy.num_replicas_in_sync, tcfg.batch_size,
             tcfg.batch_size // strategy.num_replicas_in_sync, _value(tcfg.precision))

    task = get_class(cfg.task._target_)(cfg)
    tracker = Tracker(cfg, run_dir, overrides) if chief else Tracker.disabled(cfg, run_dir)
    tracker.start()  # fails here, before any training, when the server is unreachable
    try:
        splits = task.load()
        log.info("data: %d train, %d validation, %s %s examples", len(splits.train[0]),
                 len(splits.validation[0]), len(splits.evaluation[0]), splits.evaluation_name)
        task.adapt(splits)
        batch = tcfg.batch_size
        if len(splits.train[0]) < batch:
            raise ValueError(f"trainer.batch_size={batch} is larger than the training split "
                             f"({len(splits.train[0])} examples)")
        train_ds = task.dataset(splits.train, training=True, batch_size=batch)
        val_ds = task.dataset(splits.validation, training=False, batch_size=batch)
        steps = tcfg.steps_per_epoch or max(1, task.train_examples(splits) // batch)

        with strategy.scope():
            model = task.build_model()
            optimizer = make_optimizer(tcfg, total_steps=steps * tcfg.epochs)
            optimizer.build(model.trainable_variables)
        log.info("model %s: %s parameters", model.name, f"{model.count_params():,}")
        tracker.log_metrics({"parameters": model.count_params()})

        checkpoints = CheckpointHook(run_dir / "checkpoints", model, optimizer, write=chief)
        early = EarlyStopping(cfg.task.monitor, tcfg.early_stopping_patience, task.monitor_mode,
                              restore_saved=checkpoints.restore_best)
        trainer = Trainer(model, optimizer, task.loss, task.stats, strategy, batch,
                          jit_compile=tcfg.jit_compile,
                          hooks=[*task.hooks(model, splits), early, checkpoints, MlflowHook(tracker)],
                          verbose=tcfg.verbose,
                          checkpoint_every_steps=tcfg.checkpoint_every_steps,
                          max_nan_recoveries=tcfg.max_nan_recoveries)
        checkpoints.restore(trainer)
        trainer.fit(train_ds, val_ds, tcfg.epochs, steps, tcfg.eval_steps)

        metrics = task.evaluate(model, splits.evaluation, batch)
        log.info("%s metrics: %s", splits.evaluation_name,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if chief:
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        tracker.log_final_metrics(metrics)
        tracker.log_metrics({"train_seconds": time.time() - began})
        for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json"):
            tracker.log_artifact(run_dir / name)
        if chief:
            for picture in task.pictures(model, splits, run_dir / "pictures"):
                tracker.log_artifact(picture, "pictures")
        samples = getattr(task, "samples", None)
        if samples and chief:
            (run_dir / "samples.json").write_text(json.dumps(samples, indent=2))
            tracker.log_table(samples, "samples.json")

        if cfg.export.enabled and chief:
            export_dir = run_dir / cfg.export.dir
            task.export(model, str(export_dir))
            log.info("exported SavedModel to %s", export_dir)
            if cfg.logger.log_model:
                tracker.log_model(export_dir, samples)
        tracker.finish()
    except BaseException:
        tracker.finish("FAILED")
        raise
    return RunResult(metrics, task, model, run_dir)
