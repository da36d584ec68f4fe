"""Tasks: one module each. `build_task(cfg)` is the one construction path.

The task class is the task group's `_target_`, built from its own subtree (`cfg.task`) and
handed the pieces it needs: the data source (`cfg.data`, read in the format `task.reader`
names), the backbone factory (`cfg.model`, playing the roles `task.needs` lists), the trainer
and the decode settings. Nothing here imports TensorFlow until a task class is loaded.
"""
from __future__ import annotations

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from pipelines.data import open_source

# Keys of the model group that describe it rather than configure its factory.
MODEL_LABELS = ("name", "roles", "init_from")


def build_backbone(model_cfg: DictConfig):
    """The model group's `_target_`, instantiated; `name` is kept as its label."""
    kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    labels = {key: kwargs.pop(key, None) for key in MODEL_LABELS}
    backbone = instantiate(kwargs)
    backbone.name = labels["name"]
    backbone.init_from = labels["init_from"]  # a pretraining run dir (pipelines.pretrained)
    return backbone


def group_config(name: str, changes=None) -> DictConfig:
    """The model group `conf/model/<name>.yaml` as plain YAML (its `defaults` list dropped),
    `changes` ({key: value}) merged in: a second backbone that a task key names (image_text's
    text tower, multitask's caption decoder), for `build_backbone`."""
    from pipelines.config import model_options

    option = OmegaConf.to_container(model_options()[name])
    option.pop("defaults", None)
    option.update(OmegaConf.to_container(OmegaConf.create(changes or {})))
    return OmegaConf.create(option)


def build_task(cfg: DictConfig):
    """The configured task, with its data source, backbone, trainer and decode settings."""
    task_class = get_class(cfg.task._target_)
    return task_class(cfg.task, data=open_source(cfg.data), backbone=build_backbone(cfg.model),
                      trainer=cfg.trainer, decode=cfg.get("decode"))


__all__ = ["build_backbone", "build_task", "group_config"]
