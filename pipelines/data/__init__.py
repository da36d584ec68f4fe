"""Data sources (synthetic, files, tfds) and their raw splits; tf.data lives in the tasks."""
from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipelines.data.splits import Splits


def open_source(data_cfg: DictConfig):
    """Instantiates the `data=` group's `_target_` (its `source` key is only a label)."""
    kwargs = OmegaConf.to_container(data_cfg, resolve=True)
    kwargs.pop("source")
    return instantiate(kwargs)


__all__ = ["Splits", "open_source"]
