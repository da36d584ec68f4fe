"""`python -m pipelines.prepare task=TASK data=SOURCE ... data.out=DIR [data.shards=8]`:
writes the task's data as sharded TFRecords plus `manifest.json` (`pipelines.data.records`).

The config is composed as `python -m pipelines` composes it (the same groups and
overrides); the data source reads the format `task.reader` names, and every split is
written as `data.shards` TFRecord files of raw examples. Train from them with
`python -m pipelines task=TASK data=tfrecord data.path=DIR`. A model is not built, so
model keys have no effect here.

    python -m pipelines.prepare task=translation data=files data.train=corpus/train \\
        data.validation=corpus/val data.out=prepared/wmt data.shards=16
"""
from __future__ import annotations

import logging
import shlex
import sys

from omegaconf import DictConfig, OmegaConf

from pipelines.config import ConfigError, conf_dir, register_schemas
from pipelines.data.files import DataFileError

log = logging.getLogger("pipelines.prepare")


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `python -m pipelines OVERRIDES` runs with."""
    from hydra import compose, initialize_config_dir

    register_schemas()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def settings(cfg: DictConfig) -> dict:
    """What decided the examples: the task's name and format, the data group's keys but
    where and how many shards it writes."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("shards", "out"):
        data.pop(key, None)
    return {"task": str(cfg.task.name), "reader": str(cfg.task.reader), "data": data}


def prepare(cfg: DictConfig, command: str) -> dict:
    """Reads `cfg`'s data in its task's format and writes it to `data.out`; returns the
    manifest."""
    from pipelines.config import option_value
    from pipelines.data import open_source
    from pipelines.data.records import write_prepared

    if not cfg.data.get("out"):
        raise ConfigError("python -m pipelines.prepare needs data.out=DIR, the folder that "
                          "receives the shards and manifest.json")
    if cfg.data.shards < 1:
        raise ConfigError(f"data.shards must be >= 1; received {cfg.data.shards}")
    source = open_source(cfg.data)
    format = str(cfg.task.reader)
    log.info("reading task=%s format=%s from data=%s", cfg.task.name, format,
             option_value(cfg.data.source))
    splits = source.read(format)
    manifest = write_prepared(splits, format, str(cfg.task.name), cfg.data.out,
                              int(cfg.data.shards), settings(cfg), command,
                              ignore_index=source.ignore_index)
    for split, entry in manifest["splits"].items():
        log.info("%s: %d examples in %d shards", split, entry["count"], len(entry["shards"]))
    log.info("wrote %s/manifest.json; train with: python -m pipelines task=%s data=tfrecord "
             "data.path=%s", cfg.data.out, cfg.task.name, cfg.data.out)
    return manifest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    command = shlex.join(["python", "-m", "pipelines.prepare", *argv])
    try:
        cfg = compose_config(argv)
        from pipelines.logs import quiet_tensorflow

        with quiet_tensorflow():
            import tensorflow  # noqa: F401 - the writer's
        prepare(cfg, command)
    except ConfigError as error:
        print(f"Config error: {error}", file=sys.stderr)
        return 2
    except DataFileError as error:
        print(f"Data error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
