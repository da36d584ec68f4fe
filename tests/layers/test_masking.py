"""layers/masking.py: causal masks, merging explicit and implicit masks, masked softmax."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from layers.masking import causal_mask, large_negative, masked_softmax, merge_masks


def _np(x):
    return ops.convert_to_numpy(x)


def test_causal_mask_is_lower_triangular_and_offset_by_cache_index():
    np.testing.assert_array_equal(_np(causal_mask(3, 3)), np.tril(np.ones((3, 3), bool)))
    # Query t sits at absolute position offset + t and sees keys s <= offset + t.
    expected = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], bool)
    np.testing.assert_array_equal(_np(causal_mask(2, 5, offset=1)), expected)
    np.testing.assert_array_equal(_np(causal_mask(2, 5, offset=tf.constant(1))), expected)


def test_causal_mask_with_tensor_offset_compiles_with_xla():
    fn = tf.function(lambda i: causal_mask(1, 4, offset=i), jit_compile=True)
    np.testing.assert_array_equal(_np(fn(tf.constant(2))), [[1, 1, 1, 0]])


def test_merge_masks_none_when_nothing_is_masked():
    assert merge_masks(np.zeros((2, 3, 4), "float32")) is None


def test_merge_masks_padding_broadcasts_to_batch_query_key():
    query = np.zeros((2, 3, 4), "float32")
    value = np.zeros((2, 5, 4), "float32")
    padding = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
    mask = _np(merge_masks(query, padding_mask=padding, value=value))
    assert mask.shape == (2, 3, 5) and mask.dtype == bool
    np.testing.assert_array_equal(mask, np.broadcast_to(padding[:, None, :], (2, 3, 5)))


def test_merge_masks_combines_padding_attention_and_causal():
    query = np.zeros((1, 3, 2), "float32")
    padding = np.array([[1, 1, 0]], bool)
    attention = np.array([[[1, 1, 1], [0, 1, 1], [1, 1, 1]]], bool)
    mask = _np(
        merge_masks(query, padding_mask=padding, attention_mask=attention, use_causal_mask=True)
    )
    expected = padding[:, None, :] & attention & np.tril(np.ones((3, 3), bool))
    np.testing.assert_array_equal(mask, expected)


def test_merge_masks_with_cache_masks_unwritten_slots():
    query = np.zeros((1, 2, 4), "float32")
    # Without causal masking: every written slot (s < cache_index + T) is visible.
    mask = _np(merge_masks(query, key_length=6, cache_index=1))
    np.testing.assert_array_equal(mask[0], [[1, 1, 1, 0, 0, 0]] * 2)
    mask = _np(merge_masks(query, use_causal_mask=True, key_length=6, cache_index=1))
    np.testing.assert_array_equal(mask[0], [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])


def test_merge_masks_query_mask_masks_whole_rows():
    query = np.zeros((1, 2, 4), "float32")
    mask = _np(merge_masks(query, query_mask=np.array([[True, False]])))
    np.testing.assert_array_equal(mask[0], [[1, 1], [0, 0]])


def test_implicit_mask_equals_explicit_and_explicit_wins():
    tokens = np.array([[3, 1, 0, 0], [2, 0, 0, 0]])
    embedded = keras.layers.Embedding(5, 4, mask_zero=True)(tokens)  # carries a mask
    implicit = _np(merge_masks(embedded))
    explicit = _np(merge_masks(np.zeros((2, 4, 4), "float32"), padding_mask=tokens != 0))
    np.testing.assert_array_equal(implicit, explicit)
    # An explicit padding_mask replaces the implicit one.
    ones = np.ones((2, 4), bool)
    assert _np(merge_masks(embedded, padding_mask=ones)).all()


def test_implicit_mask_of_other_length_is_ignored_with_a_cache():
    tokens = np.array([[3, 0]])
    embedded = keras.layers.Embedding(5, 4, mask_zero=True)(tokens)  # mask over T=2
    # The keys span the 4 cache slots, so the length-2 implicit mask does not apply.
    mask = _np(merge_masks(embedded, key_length=4, cache_index=0))
    np.testing.assert_array_equal(mask[0], [[1, 1, 0, 0]] * 2)


def test_wrong_rank_padding_mask_is_named_in_the_error():
    query = np.zeros((2, 3, 4), "float32")
    with pytest.raises(ValueError, match=r"padding_mask must be a \(B, S\) mask of rank 2"):
        merge_masks(query, padding_mask=np.ones((2, 3, 3), bool))
    with pytest.raises(ValueError, match=r"padding_mask must have length 3"):
        merge_masks(query, padding_mask=np.ones((2, 5), bool))
    with pytest.raises(ValueError, match=r"attention_mask must be a \(B, T, S\) mask of rank 3"):
        merge_masks(query, attention_mask=np.ones((3, 3), bool))


def test_masked_softmax_ignores_masked_scores_and_zeroes_empty_rows():
    scores = np.array([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]], "float32")
    mask = np.array([[[1, 1, 0], [0, 0, 0]]], bool)
    weights = _np(masked_softmax(scores, mask))
    expected = np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()
    np.testing.assert_allclose(weights[0, 0], [*expected, 0.0], atol=1e-6)
    np.testing.assert_array_equal(weights[0, 1], [0.0, 0.0, 0.0])


def test_masked_softmax_is_finite_in_float16_with_large_scores():
    scores = np.array([[[6e4, -6e4, 3e4], [0.0, 0.0, 0.0]]], "float16")
    mask = np.array([[[1, 1, 0], [0, 0, 0]]], bool)
    weights = _np(masked_softmax(scores, mask))
    assert weights.dtype == np.float16
    assert np.all(np.isfinite(weights))
    np.testing.assert_allclose(weights[0, 0], [1.0, 0.0, 0.0])
    assert large_negative("float16") == -3e4 and large_negative("float32") == -1e9


def test_masked_softmax_broadcasts_a_batch_mask_over_heads():
    scores = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype("float32")
    mask = np.random.default_rng(1).random((2, 4, 5)) > 0.3
    weights = _np(masked_softmax(scores, mask))
    np.testing.assert_array_equal(weights == 0, np.broadcast_to(~mask[:, None], weights.shape))
