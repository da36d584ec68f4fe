"""What every task provides to `run()`: data in, model, loss, metrics, serving function."""
from __future__ import annotations

import abc

import keras
import tensorflow as tf
from omegaconf import DictConfig

from pipelines import export as export_lib
from pipelines.data import Source, Splits


def plain(fn):
    """`fn` for tf.data / tf.function without AutoGraph: it has no tensor-dependent Python
    control flow, and AutoGraph re-reads source files, which may have changed on disk
    since this process started."""
    return tf.autograph.experimental.do_not_convert(fn)


def name_ids(values, names: list[str]):
    """strings (...) -> int32 (...): each value's index in `names` (every value is one of
    them: labels and tags of the training split), in the graph (a streamed split's labels)."""
    matches = tf.equal(tf.expand_dims(values, -1), tf.constant(names))  # (..., N)
    return tf.argmax(tf.cast(matches, tf.int32), -1, output_type=tf.int32)


def label_names(splits: Splits, shown: int = 20) -> list[str]:
    """The sorted label names of the training split (one pass over a streamed one), checked:
    at least two, and none in the validation or test split that training never saw."""
    names = sorted(set(splits.train[1]))
    if len(names) < 2:
        raise ValueError(f"the training split has only the label {names}; need at least 2")
    for split_name, pair in (("validation", splits.validation), ("test", splits.test)):
        unknown = sorted(set(pair[1]) - set(names)) if pair else []
        if unknown:
            raise ValueError(f"the {split_name} split has labels {unknown[:5]} that never occur "
                             f"in train (train labels: {names[:shown]})")
    return names


class Task(abc.ABC):
    """A task owns the mapping between raw examples and tensors.

    Built by `pipelines.tasks.build_task` from its own config subtree (`task:`) and the pieces
    it needs: the data source (`data=`), read in the format `task.reader` names; the backbone
    factory (`model=`), which plays the roles `task.needs` lists (`pipelines.models.roles`);
    the trainer settings (`trainer:`); and the generation settings (`decode:`).

    Life cycle, driven by `pipelines.run`: `load()` the raw splits, `adapt()` the
    preprocessing on the training split, `dataset()` for training and validation,
    `build_model()` under the strategy scope, train with `loss`/`stats`, `evaluate()` with
    the task's real metric, and `export()` a SavedModel that serves raw input
    (`serving_fn`, `serving_signature`, `trackables`; `pipelines.export`).
    """

    # False: the model comes trained (zero_shot_text: a pretraining run, whole); `run` builds
    # it, evaluates and exports, with no optimizer, checkpoints or epochs.
    trains: bool = True

    def __init__(self, config: DictConfig, *, data: Source, backbone, trainer: DictConfig,
                 decode: DictConfig | None = None):
        self.task_cfg = config
        self.name = str(config.name)
        self.data, self.backbone = data, backbone
        self.trainer_cfg, self.decode_cfg = trainer, decode
        self.seed = int(trainer.seed)

    @property
    def monitor_mode(self) -> str:
        """"min" when `task.monitor` names a loss (`val_loss`, ...), "max" for the metrics
        (accuracy, BLEU): the direction of early stopping and of the best checkpoint."""
        return "min" if str(self.task_cfg.monitor).endswith("loss") else "max"

    @property
    def model_name(self) -> str:
        return f"{self.name}_{self.backbone.name}"

    # -------------------------------------------------------------- data
    def load(self) -> Splits:
        """The raw splits of the format `task.reader` names, from the `data=` source."""
        return self.data.read(str(self.task_cfg.reader))

    def train_examples(self, splits: Splits) -> int:
        """How many training examples one epoch covers (the default steps per epoch is this
        over the batch size): one per training input; a task that trains on several
        examples per input (captioning's every image-caption pair) says so."""
        return len(splits.train[0])

    @abc.abstractmethod
    def adapt(self, splits: Splits) -> None:
        """Fits vocabularies and label maps on the training split."""

    @abc.abstractmethod
    def dataset(self, pair: tuple[list, list], training: bool,
                batch_size: int) -> tf.data.Dataset:
        """Batched (x, y) with static shapes; training repeats, shuffles, drops the rest."""

    # -------------------------------------------------------------- model
    @abc.abstractmethod
    def build_model(self) -> keras.Model:
        """The full network: backbone + head, producing float32 outputs."""

    @abc.abstractmethod
    def loss(self, y_true, y_pred) -> tf.Tensor:
        """Per-example training loss, shape (B,)."""

    @abc.abstractmethod
    def stats(self, y_true, y_pred) -> dict:
        """Monitoring statistics {name: (total, count)} for progress and validation."""

    # -------------------------------------------------------------- results
    @abc.abstractmethod
    def evaluate(self, model: keras.Model, pair: tuple[list, list], batch_size: int) -> dict:
        """The task metric(s) from the reference libraries, as plain floats."""

    def run_files(self) -> dict[str, str]:
        """{file name: text} the task leaves in the run directory after `adapt` (masked_lm:
        its vocabulary, which `model.init_from` reads). None by default."""
        return {}

    def hooks(self, model: keras.Model, splits: Splits) -> list:
        """Extra trainer hooks; they run before the others, so what they add to the epoch's
        logs is logged and can be monitored. By default the per-epoch validation metrics
        (`pipelines.tasks.validation`: `task.monitor=val_<metric>`, `trainer.eval_every`)."""
        from pipelines.tasks.validation import validation_hooks

        return validation_hooks(self, model, splits)

    def validation_metrics(self, model: keras.Model, pair: tuple[list, list],
                           batch_size: int) -> dict:
        """The task metrics on the validation split, added to an epoch's logs as
        `val_<name>` for `task.monitor`: `evaluate` by default."""
        return self.evaluate(model, pair, batch_size)

    def pictures(self, model: keras.Model, splits: Splits, directory) -> list:
        """Writes the task's PNGs (confusion matrix, overlays, attention maps) into
        `directory` and returns their paths; run() logs them to MLflow. None by default."""
        return []

    # -------------------------------------------------------------- serving
    @abc.abstractmethod
    def serving_fn(self, model: keras.Model):
        """Raw input tensors (as `serving_signature`) -> dict of readable outputs."""

    def serving_signature(self) -> list[tf.TensorSpec]:
        """The raw inputs of `serving_default`: strings [batch] named `text` by default."""
        return [tf.TensorSpec([None], tf.string, name="text")]

    def trackables(self) -> list:
        """Resources the serving graph uses besides the model (tokenizers, lookup tables)."""
        return []

    def export(self, model: keras.Model, path: str) -> None:
        """Writes a SavedModel whose `serving_default` takes raw input (CONTRACT.md)."""
        export_lib.export(self, model, path)

    def serve_in_process(self, model: keras.Model, inputs) -> dict:
        """What the exported signature returns, computed with the in-process model."""
        return export_lib.serve_in_process(self, model, inputs)
