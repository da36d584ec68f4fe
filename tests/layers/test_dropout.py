"""Dropout / dropout: the masks of keras.layers.Dropout / keras.random.dropout, bit for bit."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from layers.dropout import Dropout, dropout
from tests.layers.testing import run_layer_test

X = np.random.default_rng(0).normal(size=(4, 6, 8)).astype("float32")


def _calls(layer, mode, n=3):
    """n training calls of `layer` on X: eagerly, in a tf.function, or XLA-compiled."""
    if mode == "eager":
        call = lambda: layer(X, training=True)  # noqa: E731
    else:
        call = tf.function(lambda: layer(X, training=True), jit_compile=mode == "xla")
    return [keras.ops.convert_to_numpy(call()) for _ in range(n)]


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("noise_shape", [None, (None, 1, None)])
def test_same_masks_as_keras_dropout(mode, noise_shape):
    ours = _calls(Dropout(0.3, noise_shape=noise_shape, seed=7), mode)
    theirs = _calls(keras.layers.Dropout(0.3, noise_shape=noise_shape, seed=7), mode)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ours[0], ours[1])  # the seed generator advances per call
    kept = ours[0] != 0
    np.testing.assert_allclose(ours[0][kept], X[kept] / 0.7, rtol=1e-6)
    if noise_shape is not None:  # one mask shared over the time axis
        assert (kept == kept[:, :1]).all()


@pytest.mark.parametrize("seed", [3, "generator"])
def test_function_equals_keras_random_dropout(seed):
    make = (lambda: keras.random.SeedGenerator(11)) if seed == "generator" else (lambda: seed)
    ours, theirs = make(), make()
    for _ in range(2):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(dropout(X, 0.5, ours)),
                                      keras.ops.convert_to_numpy(
                                          keras.random.dropout(X, 0.5, seed=theirs)))
    assert dropout(X, 0.0, 1) is X
    with pytest.raises(ValueError, match="SeedGenerator or an int"):
        dropout(X, 0.5, "seven")


def test_inference_is_identity_and_layer_contract(tmp_path):
    layer = Dropout(0.5, seed=1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(X)), X)
    assert keras.saving.get_registered_name(Dropout) == "layers>Dropout"
    assert layer.get_config()["rate"] == 0.5
    # Dropout is random in training: the shared checks compare inference calls.
    run_layer_test(Dropout, {"rate": 0.5, "seed": 1}, X, expected_output_shape=X.shape,
                   tmp_path=tmp_path)
