"""AdditiveAttention (Bahdanau) against keras.layers.AdditiveAttention and NumPy."""
import keras
import numpy as np
import pytest
from keras import ops

from layers import AdditiveAttention


def _normal(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _np(x):
    return ops.convert_to_numpy(x)


QUERY_MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
VALUE_MASK = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], bool)


@pytest.mark.parametrize("use_scale", [True, False])
@pytest.mark.parametrize("use_causal_mask", [False, True])
def test_matches_keras_additive_attention_with_copied_weights(use_scale, use_causal_mask):
    query, value, key = _normal((2, 4, 5), 0), _normal((2, 6, 5), 1), _normal((2, 6, 5), 2)
    reference = keras.layers.AdditiveAttention(use_scale=use_scale)
    expected, expected_scores = reference(
        [query, value, key],
        mask=[QUERY_MASK, VALUE_MASK],
        return_attention_scores=True,
        use_causal_mask=use_causal_mask,
    )
    layer = AdditiveAttention(units=None, use_scale=use_scale)
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


def test_units_is_the_full_bahdanau_form():
    query, value = _normal((2, 3, 5), 0), _normal((2, 4, 7), 1)
    layer = AdditiveAttention(units=6)
    out, scores = layer(query, value, padding_mask=VALUE_MASK[:, :4], return_scores=True)
    names = sorted(w.path.split("/", 1)[1] for w in layer.trainable_weights)
    assert names == ["key_dense/bias", "key_dense/kernel", "query_dense/kernel", "scale"]
    # v^T tanh(W1 q + W2 k + b), masked softmax, weighted sum of values.
    w1 = _np(layer.query_dense.kernel)
    w2, b2 = _np(layer.key_dense.kernel), _np(layer.key_dense.bias)
    v = _np(layer.scale)
    hidden = np.tanh((query @ w1)[:, :, None, :] + (value @ w2 + b2)[:, None, :, :])
    logits = np.where(VALUE_MASK[:, None, :4], hidden @ v, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(_np(scores), weights, atol=1e-5)
    np.testing.assert_allclose(_np(out), weights @ value, atol=1e-5)


def test_dropout_only_in_training():
    query, value = _normal((2, 3, 5), 0), _normal((2, 4, 5), 1)
    layer = AdditiveAttention(dropout=0.5, seed=1)
    np.testing.assert_allclose(_np(layer(query, value)), _np(layer(query, value, training=False)))
    assert not np.allclose(_np(layer(query, value, training=True)), _np(layer(query, value)))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"units must be None or a positive int; received units=0"):
        AdditiveAttention(units=0)
    message = r"dropout must be a float in \[0, 1\); received dropout=1.5"
    with pytest.raises(ValueError, match=message):
        AdditiveAttention(dropout=1.5)
    with pytest.raises(ValueError, match=r"units=None adds query and key directly"):
        AdditiveAttention()(_normal((1, 2, 3), 0), _normal((1, 2, 4), 1))
    with pytest.raises(ValueError, match=r"padding_mask must be a \(B, S\) mask of rank 2"):
        AdditiveAttention()(
            _normal((1, 2, 3), 0), _normal((1, 2, 3), 1), padding_mask=np.ones((1, 2, 2), bool)
        )
