"""scaled_dot_product_attention and ScaledDotProductAttention against NumPy."""
import keras
import numpy as np
import pytest
from keras import ops

from layers import ScaledDotProductAttention, scaled_dot_product_attention


def _normal(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _np(x):
    return ops.convert_to_numpy(x)


def _reference(query, key, value, mask, scale):
    logits = np.where(mask, query @ np.swapaxes(key, -1, -2) * scale, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return weights @ value, weights


MASK = np.random.default_rng(9).random((2, 4, 6)) > 0.4
MASK[..., 0] = True  # every query sees at least one key


@pytest.mark.parametrize("heads", [None, 3])
def test_function_matches_numpy(heads):
    lead = (2,) if heads is None else (2, heads)
    query, key = _normal((*lead, 4, 8), 0), _normal((*lead, 6, 8), 1)
    value = _normal((*lead, 6, 5), 2)
    mask = MASK if heads is None else MASK[:, None]  # (B, T, S) broadcasts over heads
    out, scores = scaled_dot_product_attention(query, key, value, MASK)
    expected, weights = _reference(query, key, value, mask, 1 / np.sqrt(8))
    np.testing.assert_allclose(_np(out), expected, atol=1e-5)
    np.testing.assert_allclose(_np(scores), weights, atol=1e-5)
    out, _ = scaled_dot_product_attention(query, key, value, scale=0.3)
    np.testing.assert_allclose(_np(out), _reference(query, key, value, True, 0.3)[0], atol=1e-5)


def test_per_head_mask():
    query, key, value = _normal((2, 3, 4, 8), 0), _normal((2, 3, 6, 8), 1), _normal((2, 3, 6, 8), 2)
    mask = np.random.default_rng(3).random((2, 3, 4, 6)) > 0.3
    mask[..., 0] = True
    out, _ = scaled_dot_product_attention(query, key, value, mask)
    expected, _ = _reference(query, key, value, mask, 1 / np.sqrt(8))
    np.testing.assert_allclose(_np(out), expected, atol=1e-5)


def test_dropout_applies_to_weights_in_training_only_and_scores_are_before_dropout():
    query, key, value = _normal((2, 4, 8), 0), _normal((2, 6, 8), 1), _normal((2, 6, 5), 2)
    dropout = keras.layers.Dropout(0.5, seed=0)
    plain, plain_scores = scaled_dot_product_attention(query, key, value)
    out, scores = scaled_dot_product_attention(query, key, value, dropout_layer=dropout)
    np.testing.assert_allclose(_np(out), _np(plain))
    out, scores = scaled_dot_product_attention(
        query, key, value, dropout_layer=dropout, training=True
    )
    assert not np.allclose(_np(out), _np(plain))
    np.testing.assert_allclose(_np(scores), _np(plain_scores))


def test_layer_with_heads_first_inputs_and_padding():
    query, value = _normal((2, 3, 4, 8), 0), _normal((2, 3, 6, 8), 1)
    padding = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], bool)
    out = ScaledDotProductAttention()(query, value, padding_mask=padding, use_causal_mask=True)
    mask = padding[:, None, None, :] & np.tril(np.ones((4, 6), bool))
    expected, _ = _reference(query, value, value, mask, 1 / np.sqrt(8))
    np.testing.assert_allclose(_np(out), expected, atol=1e-5)


def test_errors_name_the_argument():
    message = r"dropout must be a float in \[0, 1\); received dropout=-0.1"
    with pytest.raises(ValueError, match=message):
        ScaledDotProductAttention(dropout=-0.1)
    x = _normal((2, 3, 4), 0)
    with pytest.raises(ValueError, match=r"padding_mask must be a \(B, S\) mask of rank 2"):
        ScaledDotProductAttention()(x, x, padding_mask=np.ones((2, 3, 3), bool))
