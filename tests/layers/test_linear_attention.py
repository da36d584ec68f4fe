"""LinearAttention equals its own quadratic formulation; projections match MHA's."""
import numpy as np
import pytest
from keras import ops

from layers import LinearAttention, MultiHeadAttention


def _normal(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _np(x):
    return ops.convert_to_numpy(x)


def _phi(x):
    return np.where(x > 0, x + 1.0, np.exp(x))  # elu(x) + 1


def _quadratic(layer, query, value, padding, causal):
    """The explicit (T, S) matrix phi(q) . phi(k), masked and row-normalised, in NumPy."""
    wq, bq, wk, bk, wv, bv, wo, bo = layer.get_weights()
    q = _phi(np.einsum("btd,dhk->bhtk", query, wq) + bq[None, :, None, :])
    k = _phi(np.einsum("bsd,dhk->bhsk", value, wk) + bk[None, :, None, :])
    v = np.einsum("bsd,dhv->bhsv", value, wv) + bv[None, :, None, :]
    similarity = q @ np.swapaxes(k, -1, -2)  # (B, H, T, S)
    mask = padding[:, None, None, :]
    if causal:
        mask = mask & np.tril(np.ones(similarity.shape[-2:], bool))
    similarity = np.where(mask, similarity, 0.0)
    weights = similarity / np.maximum(similarity.sum(-1, keepdims=True), 1e-30)
    heads = weights @ v  # (B, H, T, V)
    return np.einsum("bhtv,hvd->btd", heads, wo) + bo


PADDING = np.array([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]], bool)


def test_non_causal_equals_quadratic_form_with_padding():
    layer = LinearAttention(num_heads=2, key_dim=4, value_dim=3, bias_initializer="random_normal")
    query, value = _normal((2, 5, 6), 0), _normal((2, 8, 6), 1)
    out = _np(layer(query, value, padding_mask=PADDING))
    np.testing.assert_allclose(out, _quadratic(layer, query, value, PADDING, False), atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 64])  # ragged, exact and single chunks
def test_causal_equals_quadratic_form_with_padding(chunk_size):
    layer = LinearAttention(
        num_heads=2, key_dim=4, causal=True, chunk_size=chunk_size, bias_initializer="random_normal"
    )
    x = _normal((2, 8, 6), 0)
    out = _np(layer(x, x, padding_mask=PADDING))
    np.testing.assert_allclose(out, _quadratic(layer, x, x, PADDING, True), atol=1e-5)


def test_projection_weights_match_multi_head_attention():
    x = _normal((2, 4, 6), 0)
    linear = LinearAttention(num_heads=2, key_dim=4)
    mha = MultiHeadAttention(num_heads=2, key_dim=4)
    linear(x, x), mha(x, x)
    assert [w.shape for w in linear.weights] == [w.shape for w in mha.weights]
    linear.set_weights(mha.get_weights())


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"num_heads must be a positive int; received num_heads=0"):
        LinearAttention(num_heads=0, key_dim=4)
    with pytest.raises(ValueError, match=r"causal=True needs as many queries as keys"):
        layer = LinearAttention(num_heads=1, key_dim=4, causal=True)
        layer(_normal((1, 3, 4), 0), _normal((1, 5, 4), 1))
    x = _normal((2, 8, 4), 0)
    with pytest.raises(ValueError, match=r"padding_mask must be a \(B, S\) mask of rank 2"):
        LinearAttention(num_heads=1, key_dim=4)(x, x, padding_mask=PADDING[:, :, None])
