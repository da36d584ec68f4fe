"""Data sources (synthetic, files, tfds), read by format (`source.FORMATS`) into raw splits;
tf.data lives in the tasks."""
from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipelines.data.source import FORMATS, Source
from pipelines.data.splits import Splits


# Keys of every data group that are not the source's: `source` is a label, `shards` and
# `out` say where `python -m pipelines.prepare` writes.
NOT_SOURCE_KEYS = ("source", "shards", "out")


def open_source(data_cfg: DictConfig) -> Source:
    """Instantiates the `data=` group's `_target_` with its keys but `NOT_SOURCE_KEYS`."""
    kwargs = OmegaConf.to_container(data_cfg, resolve=True)
    for key in NOT_SOURCE_KEYS:
        kwargs.pop(key, None)
    return instantiate(kwargs)


__all__ = ["FORMATS", "Source", "Splits", "open_source"]
