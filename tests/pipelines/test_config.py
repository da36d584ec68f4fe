"""Config composition and validation: fast, and never imports TensorFlow."""
import re
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.config import ConfigError, check, register_schemas
from tests.conftest import REPO

register_schemas()
PAIRS = [(task, model) for task in ("sentiment", "translation", "ner")
         for model in ("lstm", "gru", "transformer")]


def _compose(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("task,model", PAIRS)
def test_every_pair_composes_and_checks(task, model):
    cfg = _compose(f"task={task}", f"model={model}")
    check(cfg)
    assert cfg.task.name == task and cfg.model.name == model
    assert OmegaConf.select(cfg, "trainer.precision").value == "float32"
    for source in ("synthetic", "files", "tfds"):
        assert _compose(f"task={task}", f"model={model}", f"data={source}").data.source.value == source


@pytest.mark.parametrize("override,message", [
    ("trainer.precision=fp8", "expected one of \\[float32, mixed_float16, mixed_bfloat16\\]"),
    ("trainer.epochs=many", "trainer.epochs"),
    ("trainer.epoch=3", "Key 'epoch' not in 'TrainerConfig'"),
    ("distribute=gpus", "Available options in 'distribute'"),
])
def test_bad_overrides_fail_at_compose_time(override, message):
    with pytest.raises(Exception) as info:
        _compose(override)
    chain = f"{info.value} {info.value.__cause__}"
    assert re.search(message, chain), chain


def test_unfit_pair_lists_the_valid_models():
    cfg = _compose("task=sentiment", "model=lstm", "task.models=[gru]")
    with pytest.raises(ConfigError, match="model=lstm does not fit task=sentiment. Valid models for sentiment: gru"):
        check(cfg)


def test_smoke_profile_shrinks_the_run():
    cfg = _compose("debug=smoke")
    assert cfg.trainer.epochs == 1 and cfg.trainer.steps_per_epoch == 2 and cfg.data.limit == 128


# The CLI in a subprocess: exit code, message, speed, and no TensorFlow import.
_PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['pipelines'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('pipelines', run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    code = e.code\n"
    "else:\n"
    "    code = 0\n"
    "print('TF_IMPORTED' if 'tensorflow' in sys.modules else 'TF_NOT_IMPORTED')\n"
    "sys.exit(code)\n"
)


def _cli(*args):
    began = time.time()
    result = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    return result, time.time() - began


@pytest.mark.parametrize("args,valid", [
    (["task=foo"], ["ner", "sentiment", "translation"]),
    (["model=foo"], ["gru", "lstm", "transformer"]),
    (["model=lstm", "task.models=[gru]"], ["gru"]),
])
def test_cli_rejects_unknown_choices_fast_without_tensorflow(args, valid):
    result, seconds = _cli(*args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "TF_NOT_IMPORTED" in output
    assert all(choice in output for choice in valid), output
    print(f"config error took {seconds:.1f}s")  # fast because TensorFlow is never imported


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"]])
def test_help_and_config_printing_do_not_import_tensorflow(args):
    result, _ = _cli(*args)
    assert result.returncode == 0, result.stderr
    assert "TF_NOT_IMPORTED" in result.stdout
