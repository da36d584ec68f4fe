"""MultiHeadAttention against keras.layers.MultiHeadAttention; cached decoding."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from layers import MultiHeadAttention


def _normal(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _np(x):
    return ops.convert_to_numpy(x)


PADDING = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], bool)


def _pair(key_features=7, **kwargs):
    """Our layer and keras's, built on the same shapes, with copied weights."""
    ours_kwargs = dict(kwargs)
    if "output_shape" in ours_kwargs:
        ours_kwargs["output_dim"] = ours_kwargs.pop("output_shape")
    reference = keras.layers.MultiHeadAttention(**kwargs)
    layer = MultiHeadAttention(**ours_kwargs)
    query, value = _normal((2, 4, 8), 0), _normal((2, 6, 8), 1)
    key = _normal((2, 6, key_features), 2)
    reference(query, value, key)
    layer(query, value, key)
    assert [w.shape for w in layer.weights] == [w.shape for w in reference.weights]
    layer.set_weights(reference.get_weights())
    return layer, reference, query, value, key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_heads": 2, "key_dim": 4},
        {"num_heads": 3, "key_dim": 4, "value_dim": 5, "output_shape": 6, "use_bias": False},
    ],
)
def test_matches_keras_with_padding_mask_and_scores(kwargs):
    layer, reference, query, value, key = _pair(**kwargs)
    expected, expected_scores = reference(
        query, value, key, value_mask=PADDING, return_attention_scores=True
    )
    out, scores = layer(query, value, key, padding_mask=PADDING, return_scores=True)
    np.testing.assert_allclose(_np(out), _np(expected), atol=1e-5)
    np.testing.assert_allclose(_np(scores), _np(expected_scores), atol=1e-5)
    # The path without scores (keras uses its fused kernel there) agrees too.
    expected = reference(query, value, key, value_mask=PADDING)
    out = layer(query, value, key, padding_mask=PADDING)
    np.testing.assert_allclose(_np(out), _np(expected), atol=1e-5)


def test_matches_keras_with_attention_mask():
    layer, reference, query, value, key = _pair(num_heads=2, key_dim=4)
    attention = np.random.default_rng(3).random((2, 4, 6)) > 0.3
    attention[..., 0] = True
    expected = reference(query, value, key, attention_mask=attention)
    np.testing.assert_allclose(
        _np(layer(query, value, key, attention_mask=attention)), _np(expected), atol=1e-5
    )


@pytest.mark.parametrize("return_scores", [False, True])
def test_matches_keras_with_causal_mask(return_scores):
    layer, reference, _, _, _ = _pair(key_features=8, num_heads=2, key_dim=4)
    x = _normal((2, 6, 8), 5)
    expected = reference(x, x, use_causal_mask=True, return_attention_scores=return_scores)
    out = layer(x, x, use_causal_mask=True, return_scores=return_scores)
    for ours, theirs in zip(keras.tree.flatten(out), keras.tree.flatten(expected)):
        np.testing.assert_allclose(_np(ours), _np(theirs), atol=1e-5)
    # Causal and padding together.
    expected = reference(x, x, value_mask=PADDING, use_causal_mask=True)
    out = layer(x, x, padding_mask=PADDING, use_causal_mask=True)
    np.testing.assert_allclose(_np(out), _np(expected), atol=1e-5)



@pytest.mark.parametrize("value_dim", [None, 5])
def test_fused_projections_equal_keras_and_the_separate_ones(value_dim):
    """One tensor as query, key and value takes the fused q/k/v matmul, a key=None
    cross-attention the fused k/v one; outputs and weight gradients equal keras's
    and those of the separate projections (distinct tensors)."""
    layer, reference, _, _, _ = _pair(key_features=8, num_heads=2, key_dim=4, value_dim=value_dim)
    x, memory = tf.constant(_normal((2, 6, 8), 5)), tf.constant(_normal((2, 6, 8), 6))
    cases = [
        # (fused call, separate call, keras call)
        (lambda: layer(x, x, padding_mask=PADDING, use_causal_mask=True),
         lambda: layer(x, tf.identity(x), tf.identity(x), padding_mask=PADDING,
                       use_causal_mask=True),
         lambda: reference(x, x, value_mask=PADDING, use_causal_mask=True)),
        (lambda: layer(x[:, :4], memory, padding_mask=PADDING),
         lambda: layer(x[:, :4], memory, tf.identity(memory), padding_mask=PADDING),
         lambda: reference(x[:, :4], memory, value_mask=PADDING)),
    ]
    for fused, separate, keras_call in cases:
        results = []
        for call, variables in ((fused, layer.trainable_variables),
                                (separate, layer.trainable_variables),
                                (keras_call, reference.trainable_variables)):
            with tf.GradientTape() as tape:
                out = call()
                loss = tf.reduce_sum(out * tf.range(out.shape[-1], dtype=out.dtype))
            results.append((out, tape.gradient(loss, variables)))
        for out, grads in results[1:]:
            np.testing.assert_allclose(_np(results[0][0]), _np(out), atol=1e-5)
            for ours, theirs in zip(results[0][1], grads):
                np.testing.assert_allclose(_np(ours), _np(theirs), atol=1e-4)


def test_fused_self_attention_cache_step_equals_full_pass():
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    x = tf.constant(_normal((2, 6, 8), 0))
    full = _np(layer(x, x, padding_mask=PADDING, use_causal_mask=True))
    cache = tf.zeros((2, 2, 6, 2, 4))
    outputs = []
    for t in range(6):
        token = x[:, t : t + 1]
        out, cache = layer(token, token, padding_mask=PADDING, use_causal_mask=True,
                           cache=cache, cache_index=t)
        outputs.append(_np(out))
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, atol=1e-5)
    np.testing.assert_allclose(_np(cache[:, 0]), _np(layer.key_dense(x)), atol=1e-6)
    np.testing.assert_allclose(_np(cache[:, 1]), _np(layer.value_dense(x)), atol=1e-6)

def _decode(layer, x, steps, padding_mask=None, step_fn=None):
    """Feeds `x` through `layer` in chunks `steps` with a cache; returns outputs, cache."""
    batch, length, _ = x.shape
    cache = ops.zeros((batch, 2, length, layer.num_heads, layer.key_dim))

    def eager_step(chunk, cache, index):
        return layer(
            chunk,
            chunk,
            padding_mask=padding_mask,
            use_causal_mask=True,
            cache=cache,
            cache_index=index,
        )

    step_fn = step_fn or eager_step
    outputs, start = [], 0
    for size in steps:
        out, cache = step_fn(x[:, start : start + size], cache, start)
        outputs.append(_np(out))
        start += size
    return np.concatenate(outputs, axis=1), cache


def test_incremental_decoding_equals_full_causal_pass():
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    x = _normal((2, 6, 8), 0)
    full = _np(layer(x, x, use_causal_mask=True))
    token_by_token, cache = _decode(layer, x, [1] * 6)
    np.testing.assert_allclose(token_by_token, full, atol=1e-5)
    # The cache holds every projected key and value.
    np.testing.assert_allclose(_np(cache[:, 0]), _np(layer.key_dense(x)), atol=1e-6)
    np.testing.assert_allclose(_np(cache[:, 1]), _np(layer.value_dense(x)), atol=1e-6)
    # A prompt chunk first, then single tokens.
    chunked, _ = _decode(layer, x, [3, 1, 2])
    np.testing.assert_allclose(chunked, full, atol=1e-5)


def test_incremental_decoding_with_padding_and_xla():
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    x = _normal((2, 6, 8), 0)
    full = _np(layer(x, x, padding_mask=PADDING, use_causal_mask=True))

    @tf.function(jit_compile=True)
    def step(chunk, cache, index):
        return layer(
            chunk, chunk, padding_mask=PADDING, use_causal_mask=True, cache=cache, cache_index=index
        )

    # A tensor cache_index: one compiled step serves every position.
    def tensor_step(chunk, cache, index):
        return step(chunk, cache, tf.constant(index))

    decoded, _ = _decode(layer, x, [1] * 6, step_fn=tensor_step)
    np.testing.assert_allclose(decoded, full, atol=1e-5)
    assert step.experimental_get_tracing_count() == 1


def test_cache_return_order_and_mixed_precision():
    layer = MultiHeadAttention(num_heads=2, key_dim=4, dtype="mixed_float16")
    x = _normal((2, 1, 8), 0)
    cache = np.zeros((2, 2, 5, 2, 4), "float32")
    out, scores, new_cache = layer(x, x, cache=cache, cache_index=2, return_scores=True)
    assert out.shape == (2, 1, 8) and out.dtype == "float16"
    assert scores.shape == (2, 2, 1, 5)
    assert new_cache.shape == (2, 2, 5, 2, 4)
    np.testing.assert_array_equal(_np(scores)[..., 3:], 0.0)  # slots after the new token
    # Slots up to cache_index count as written (here: zero keys from earlier steps).
    np.testing.assert_allclose(_np(scores).astype("float32")[..., :3].sum(-1), 1.0, atol=1e-3)
    assert np.all(np.isfinite(_np(out).astype("float32")))


def test_precomputed_cache_without_index_equals_plain_cross_attention():
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    query, memory = _normal((2, 3, 8), 0), _normal((2, 6, 8), 1)
    expected = _np(layer(query, memory, padding_mask=PADDING))
    cache = ops.stack([layer.key_dense(memory), layer.value_dense(memory)], axis=1)
    out, same_cache = layer(query, memory, padding_mask=PADDING, cache=cache)
    np.testing.assert_allclose(_np(out), expected, atol=1e-5)
    np.testing.assert_array_equal(_np(same_cache), _np(cache))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"num_heads must be a positive int; received num_heads=0"):
        MultiHeadAttention(num_heads=0, key_dim=4)
    with pytest.raises(ValueError, match=r"key_dim must be a positive int; received key_dim=-1"):
        MultiHeadAttention(num_heads=2, key_dim=-1)
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    x = _normal((2, 6, 8), 0)
    with pytest.raises(ValueError, match=r"padding_mask must be a \(B, S\) mask of rank 2"):
        layer(x, x, padding_mask=np.ones((2, 6, 6), bool))
    with pytest.raises(ValueError, match=r"cache_index must be None when cache is None"):
        layer(x, x, cache_index=0)
    message = r"cache must have shape \(B, 2, S_max, num_heads, key_dim\)"
    with pytest.raises(ValueError, match=message):
        layer(x, x, cache=np.zeros((2, 6, 2, 4), "float32"), cache_index=0)
    other = MultiHeadAttention(num_heads=2, key_dim=4, value_dim=3)
    message = r"value_dim must equal key_dim; received key_dim=4, value_dim=3"
    with pytest.raises(ValueError, match=message):
        other(x, x, cache=np.zeros((2, 2, 6, 2, 4), "float32"), cache_index=0)
