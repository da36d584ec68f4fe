"""Mask properties and `run_layer_test` for every attention layer.

Each layer below is checked for the four mask properties of DESIGN.md: padded keys
change nothing; a causal mask leaks nothing from the future; an all-padding row gives
a finite output; the implicit Keras mask equals the explicit `padding_mask`.
Reference equivalences (copied weights vs keras) live in the per-layer test files.
"""
import keras
import numpy as np
import pytest
from keras import ops

from layers import (
    AdditiveAttention,
    DotAttention,
    LinearAttention,
    MultiHeadAttention,
    ScaledDotProductAttention,
)
from tests.layers.testing import run_layer_test

DIM = 8


def _make(name, causal=False):
    """Returns `(layer, call_kwargs)`; causal layers mask the future either way."""
    causal_kwargs = {"use_causal_mask": True} if causal else {}
    if name == "linear":
        return LinearAttention(num_heads=2, key_dim=4, causal=causal), {}
    layer = {
        "additive": lambda: AdditiveAttention(),
        "additive_units": lambda: AdditiveAttention(units=6),
        "dot": lambda: DotAttention(),
        "general": lambda: DotAttention(score_mode="general", use_scale=True),
        "scaled_dot": lambda: DotAttention(score_mode="scaled_dot"),
        "sdpa": lambda: ScaledDotProductAttention(),
        "mha": lambda: MultiHeadAttention(num_heads=2, key_dim=4),
    }[name]()
    return layer, causal_kwargs


LAYERS = ["additive", "additive_units", "dot", "general", "scaled_dot", "sdpa", "mha", "linear"]


def _np(x):
    return ops.convert_to_numpy(x)


def _normal(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("name", LAYERS)
def test_padded_keys_change_nothing(name):
    layer, _ = _make(name)
    query, value = _normal((2, 4, DIM), 0), _normal((2, 6, DIM), 1)
    padding = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], bool)
    changed = np.where(padding[:, :, None], value, _normal((2, 6, DIM), 2) * 10)
    out = _np(layer(query, value, padding_mask=padding))
    np.testing.assert_allclose(_np(layer(query, changed, padding_mask=padding)), out, atol=1e-6)
    # ...while the same change without the mask does change the output.
    assert not np.allclose(_np(layer(query, changed)), _np(layer(query, value)), atol=1e-3)


@pytest.mark.parametrize("name", LAYERS)
def test_causal_mask_leaks_nothing_from_the_future(name):
    layer, kwargs = _make(name, causal=True)
    x = _normal((2, 6, DIM), 0)
    out = _np(layer(x, x, **kwargs))
    for t in (1, 3, 5):
        future = x.copy()
        future[:, t:] = _normal((2, 6 - t, DIM), t)
        changed = _np(layer(future, future, **kwargs))
        np.testing.assert_allclose(changed[:, :t], out[:, :t], atol=1e-6)
        assert not np.allclose(changed[:, t:], out[:, t:], atol=1e-3)


@pytest.mark.parametrize("name", LAYERS)
def test_all_padding_row_gives_finite_output(name):
    layer, _ = _make(name)
    query, value = _normal((2, 4, DIM), 0), _normal((2, 6, DIM), 1)
    padding = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    out = _np(layer(query, value, padding_mask=padding))
    assert np.all(np.isfinite(out))
    if name not in ("mha", "linear"):  # no output projection: zero attention, zero output
        np.testing.assert_array_equal(out[1], 0.0)


@pytest.mark.parametrize("name", LAYERS)
def test_all_padding_row_gives_finite_output_in_float16(name):
    layer, _ = _make(name)
    layer = layer.__class__.from_config({**layer.get_config(), "dtype": "mixed_float16"})
    query, value = _normal((2, 4, DIM), 0), _normal((2, 6, DIM), 1)
    padding = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    out = _np(layer(query, value, padding_mask=padding)).astype("float32")
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("name", LAYERS)
def test_implicit_mask_equals_explicit_padding_mask(name):
    layer, _ = _make(name)
    tokens = np.array([[4, 2, 7, 1, 0, 0], [3, 5, 0, 0, 0, 0]])
    embedding = keras.layers.Embedding(10, DIM, mask_zero=True)
    value = embedding(tokens)  # carries the implicit mask tokens != 0
    plain_value = ops.convert_to_tensor(_np(value))  # the same numbers, no mask
    query = _normal((2, 4, DIM), 0)
    implicit = _np(layer(query, value))
    explicit = _np(layer(query, plain_value, padding_mask=tokens != 0))
    np.testing.assert_allclose(implicit, explicit, atol=1e-6)
    assert not np.allclose(_np(layer(query, plain_value)), explicit, atol=1e-3)


@pytest.mark.parametrize("name", ["additive", "dot", "sdpa", "mha", "linear"])
def test_output_carries_the_query_mask(name):
    layer, _ = _make(name)
    tokens = np.array([[4, 2, 0], [3, 0, 0]])
    x = keras.layers.Embedding(10, DIM, mask_zero=True)(tokens)
    mask = keras.src.backend.get_keras_mask(layer(x, x))
    np.testing.assert_array_equal(_np(mask), tokens != 0)


@pytest.mark.parametrize("name", LAYERS)
def test_functional_model_with_unknown_length_equals_eager_call(name):
    layer, kwargs = _make(name, causal=True)
    if name == "linear":  # chunks of 2 over 5 positions: the ragged last chunk
        layer = LinearAttention(num_heads=2, key_dim=4, causal=True, chunk_size=2)
    embedding = keras.layers.Embedding(10, DIM, mask_zero=True)
    tokens = keras.Input((None,), dtype="int32")
    x = embedding(tokens)
    model = keras.Model(tokens, layer(x, x, **kwargs))
    ids = np.array([[4, 2, 7, 1, 3], [3, 5, 2, 0, 0]])
    x = embedding(ids)
    np.testing.assert_allclose(_np(model(ids)), _np(layer(x, x, **kwargs)), atol=1e-6)


@pytest.mark.parametrize("name", ["additive", "dot"])
def test_additive_and_dot_zero_outputs_at_masked_queries(name):
    layer, _ = _make(name)
    query, value = _normal((2, 3, DIM), 0), _normal((2, 5, DIM), 1)
    query_mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
    out = _np(layer(query, value, query_mask=query_mask))
    np.testing.assert_array_equal(out[~query_mask], 0.0)
    np.testing.assert_allclose(out[query_mask], _np(layer(query, value))[query_mask])


# run_layer_test for every layer: config, .keras round trip, XLA, mixed precision and
# MirroredStrategy, with a padding mask so that the masked path is what gets compiled.
PADDING = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool)
LAYER_TESTS = {
    "additive": (AdditiveAttention, {}, {}),
    "additive_units": (AdditiveAttention, {"units": 6, "use_scale": True}, {}),
    "dot": (DotAttention, {}, {"use_causal_mask": True}),
    "general": (DotAttention, {"score_mode": "general", "use_scale": True}, {}),
    "scaled_dot": (DotAttention, {"score_mode": "scaled_dot"}, {"return_scores": True}),
    "sdpa": (ScaledDotProductAttention, {"scale": 0.5}, {"return_scores": True}),
    "mha": (MultiHeadAttention, {"num_heads": 2, "key_dim": 4}, {"return_scores": True}),
    "mha_sizes": (
        MultiHeadAttention,
        {"num_heads": 2, "key_dim": 4, "value_dim": 3, "output_dim": 5, "use_bias": False},
        {"use_causal_mask": True},
    ),
    "linear": (LinearAttention, {"num_heads": 2, "key_dim": 4}, {}),
    "linear_causal": (
        LinearAttention,
        {"num_heads": 2, "key_dim": 4, "value_dim": 3, "causal": True, "chunk_size": 2},
        {},
    ),
}


@pytest.mark.parametrize("name", list(LAYER_TESTS))
def test_run_layer_test(name, tmp_path):
    cls, init_kwargs, call_kwargs = LAYER_TESTS[name]
    x = _normal((2, 5, DIM), 0)
    output_dim = init_kwargs.get("output_dim", DIM)
    run_layer_test(
        cls,
        init_kwargs,
        [x, x],
        call_kwargs={"padding_mask": PADDING, **call_kwargs},
        expected_output_shape=(2, 5, output_dim),
        tmp_path=tmp_path,
    )
