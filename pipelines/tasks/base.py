"""What every task provides to `run()`: data in, model, loss, metrics, serving function."""
from __future__ import annotations

import abc

import keras
import tensorflow as tf
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipelines.data import Splits, open_source


class Task(abc.ABC):
    """A task owns the mapping between raw examples and tensors.

    Life cycle, driven by `pipelines.run`: `load()` the raw splits, `adapt()` the
    preprocessing on the training split, `dataset()` for training and validation,
    `build_model()` under the strategy scope, train with `loss`/`stats`, `evaluate()` with
    the task's real metric, and `export()` a SavedModel that serves raw input.
    """

    name: str = ""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.task_cfg = cfg.task
        self.seed = int(cfg.trainer.seed)

    @property
    def monitor_mode(self) -> str:
        """"min" when `task.monitor` names a loss (`val_loss`, ...), "max" for the metrics
        (accuracy, BLEU): the direction of early stopping and of the best checkpoint."""
        return "min" if str(self.task_cfg.monitor).endswith("loss") else "max"

    # -------------------------------------------------------------- data
    def load(self) -> Splits:
        """The raw splits from the `data=` source, by this task's name."""
        source = open_source(self.cfg.data)
        reader = getattr(source, self.name, None)
        if reader is None:
            raise NotImplementedError(
                f"data={self.cfg.data.source} has no reader for task={self.name} yet"
            )
        return reader()

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
    def backbone_factory(self):
        """The model group's `_target_`, instantiated (its `name` key is a label)."""
        kwargs = OmegaConf.to_container(self.cfg.model, resolve=True)
        kwargs.pop("name")
        return instantiate(kwargs)

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

    def hooks(self, model: keras.Model, splits: Splits) -> list:
        """Extra trainer hooks (e.g. per-epoch validation BLEU); they run before the
        others, so what they add to the epoch's logs is logged and can be monitored."""
        return []

    def pictures(self, model: keras.Model, splits: Splits, directory) -> list:
        """Writes the task's PNGs (confusion matrix, overlays, attention maps) into
        `directory` and returns their paths; run() logs them to MLflow. None by default."""
        return []

    @abc.abstractmethod
    def export(self, model: keras.Model, path: str) -> None:
        """Writes a SavedModel whose `serving_default` takes raw input (CONTRACT.md)."""

    @abc.abstractmethod
    def serve_in_process(self, model: keras.Model, inputs: list) -> dict:
        """What the exported signature returns, computed with the in-process model."""
