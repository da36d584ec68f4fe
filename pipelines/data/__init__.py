"""Data sources (synthetic, files, tfds), read by format (`source.FORMATS`) into raw splits;
tf.data lives in the tasks."""
from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipelines.data.source import FORMATS, Source
from pipelines.data.splits import Splits


def open_source(data_cfg: DictConfig) -> Source:
    """Instantiates the `data=` group's `_target_` (its `source` key is only a label)."""
    kwargs = OmegaConf.to_container(data_cfg, resolve=True)
    kwargs.pop("source")
    return instantiate(kwargs)


__all__ = ["FORMATS", "Source", "Splits", "open_source"]
