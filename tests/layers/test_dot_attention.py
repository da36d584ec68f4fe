"""DotAttention (Luong) against keras.layers.Attention and NumPy."""
import keras
import numpy as np
import pytest
from keras import ops

from layers import DotAttention


def _normal(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _np(x):
    return ops.convert_to_numpy(x)


def _softmax(logits, mask):
    logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


QUERY_MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
VALUE_MASK = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], bool)


@pytest.mark.parametrize("use_scale", [False, True])
@pytest.mark.parametrize("use_causal_mask", [False, True])
def test_matches_keras_attention_with_copied_weights(use_scale, use_causal_mask):
    query, value, key = _normal((2, 4, 5), 0), _normal((2, 6, 3), 1), _normal((2, 6, 5), 2)
    reference = keras.layers.Attention(use_scale=use_scale)
    reference([query, value, key])
    if use_scale:
        reference.scale.assign(1.7)  # a scale other than its initial 1
    expected, expected_scores = reference(
        [query, value, key],
        mask=[QUERY_MASK, VALUE_MASK],
        return_attention_scores=True,
        use_causal_mask=use_causal_mask,
    )
    layer = DotAttention(score_mode="dot", use_scale=use_scale)
    layer(query, value, key)
    layer.set_weights(reference.get_weights())
    out, scores = layer(
        query,
        value,
        key,
        padding_mask=VALUE_MASK,
        query_mask=QUERY_MASK,
        use_causal_mask=use_causal_mask,
        return_scores=True,
    )
    np.testing.assert_allclose(_np(out), _np(expected), atol=1e-5)
    np.testing.assert_allclose(_np(scores), _np(expected_scores), atol=1e-5)


def test_scaled_dot_divides_by_sqrt_key_dim():
    query, value = _normal((2, 4, 5), 0), _normal((2, 6, 5), 1)
    out, scores = DotAttention(score_mode="scaled_dot")(
        query, value, padding_mask=VALUE_MASK, return_scores=True
    )
    weights = _softmax(query @ value.transpose(0, 2, 1) / np.sqrt(5), VALUE_MASK[:, None])
    np.testing.assert_allclose(_np(scores), weights, atol=1e-5)
    np.testing.assert_allclose(_np(out), weights @ value, atol=1e-5)


def test_general_scores_through_a_learned_matrix():
    query, value = _normal((2, 4, 3), 0), _normal((2, 6, 5), 1)
    layer = DotAttention(score_mode="general")
    out, scores = layer(query, value, padding_mask=VALUE_MASK, return_scores=True)
    kernel = _np(layer.kernel)
    assert kernel.shape == (3, 5)
    weights = _softmax(query @ kernel @ value.transpose(0, 2, 1), VALUE_MASK[:, None])
    np.testing.assert_allclose(_np(scores), weights, atol=1e-5)
    np.testing.assert_allclose(_np(out), weights @ value, atol=1e-5)


def test_errors_name_the_argument():
    message = r"score_mode must be one of .*; received score_mode='bad'"
    with pytest.raises(ValueError, match=message):
        DotAttention(score_mode="bad")
    with pytest.raises(ValueError, match=r"score_mode='dot' needs query and key with the same"):
        DotAttention()(_normal((1, 2, 3), 0), _normal((1, 2, 4), 1))
    with pytest.raises(ValueError, match=r"padding_mask must be a \(B, S\) mask of rank 2"):
        DotAttention()(_normal((1, 2, 3), 0), _normal((1, 2, 3), 1), padding_mask=np.ones(2, bool))
