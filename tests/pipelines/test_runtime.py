"""TPU readiness without a TPU: every task x model pair trains with an XLA-compiled step, and
mixed precision keeps outputs and exports in the contract's dtypes."""
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir

from pipelines.config import register_schemas
from pipelines.run import execute
from tests.conftest import REPO

register_schemas()

PAIRS = [
    ("sentiment", "lstm"), ("sentiment", "gru"), ("sentiment", "transformer"),
    ("translation", "lstm"), ("translation", "gru"), ("translation", "transformer"),
    ("ner", "lstm"), ("ner", "gru"), ("ner", "transformer"),
    ("image_classification", "cnn"), ("image_classification", "vit"),
    ("segmentation", "unet"),
    ("captioning", "lstm"), ("captioning", "gru"), ("captioning", "transformer"),
]
# Two cheap pairs run in the default suite; the rest are `slow` (the suite's time budget).
FAST = {("sentiment", "lstm"), ("ner", "gru")}


def _cfg(task, model, *overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"task={task}", f"model={model}", "debug=smoke",
                                            "logger=none", *overrides])


@pytest.fixture(autouse=True)
def _fresh_keras():
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()


def _pairs():
    for pair in PAIRS:
        marks = () if pair in FAST else (pytest.mark.slow,)
        yield pytest.param(*pair, marks=marks, id="-".join(pair))


@pytest.mark.parametrize("task,model", list(_pairs()))
def test_every_pair_trains_with_an_xla_compiled_step(task, model, tmp_path):
    cfg = _cfg(task, model, "trainer.jit_compile=true", "export.enabled=false")
    result = execute(cfg, tmp_path)
    assert result.metrics and all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    state = json.loads((tmp_path / "checkpoints" / "trainer_state.json").read_text())
    assert math.isfinite(state["history"][-1]["train_loss"])


_TEXT = {"text": tf.constant(["a fine film", "dull"])}
_IMAGES = {"image_bytes": tf.stack([tf.io.encode_png(np.full((20, 30, 3), 200, np.uint8)),
                                    tf.io.encode_jpeg(np.zeros((50, 40, 3), np.uint8))])}


@pytest.mark.parametrize("task,model,inputs,precision", [
    ("sentiment", "transformer", _TEXT, "mixed_float16"),
    ("image_classification", "cnn", _IMAGES, "mixed_bfloat16"),
    pytest.param("sentiment", "transformer", _TEXT, "mixed_bfloat16", marks=pytest.mark.slow),
    pytest.param("image_classification", "cnn", _IMAGES, "mixed_float16", marks=pytest.mark.slow),
])
def test_mixed_precision_trains_and_exports_float32_outputs(task, model, inputs, precision,
                                                            tmp_path):
    result = execute(_cfg(task, model, f"trainer.precision={precision}"), tmp_path)
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    assert result.model.dtype_policy.name == precision
    assert any(v.dtype == "float32" for v in result.model.weights)  # variables stay float32
    out = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"](**inputs)
    assert out["label"].dtype == tf.string
    assert out["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, atol=1e-3)


# ----------------------------------------------------------------------------- jit_compile=auto
class _Family:
    def __init__(self, name, xla_on_cpu):
        self.name, self.xla_on_cpu = name, xla_on_cpu


@pytest.mark.parametrize("setting,family,steps,expected,reason", [
    (True, _Family("lstm", False), 2, True, "trainer.jit_compile=true"),
    (False, _Family("transformer", True), 10_000, False, "trainer.jit_compile=false"),
    ("auto", _Family("transformer", True), 10_000, True, "transformer trains faster under XLA"),
    ("auto", _Family("lstm", False), 10_000, False, "lstm trains slower under XLA"),
    ("auto", _Family("transformer", True), 10, False, "10 training steps do not pay"),
])
def test_jit_compile_auto_follows_the_family_and_the_run_length(setting, family, steps,
                                                                 expected, reason):
    from pipelines.distribute import choose_jit_compile

    jit, why = choose_jit_compile(setting, family, steps)
    assert jit is expected and reason in why


def test_jit_compile_takes_only_auto_true_false():
    from pipelines.config import ConfigError, check

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["trainer.jit_compile=sometimes"])
    with pytest.raises(ConfigError, match="trainer.jit_compile must be auto, true or false"):
        check(cfg)
