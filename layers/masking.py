"""Attention masks: the one place where explicit masks meet the implicit Keras mask.

Every attention layer in `layers/` builds its boolean `(B, T, S)` mask with
`merge_masks` and normalises scores with `masked_softmax`, so that padding, causal
and cache masks mean the same thing everywhere:

- `True` means "may attend", `False` means "masked".
- A key padding mask is `(B, S)`; an attention mask is `(B, T, S)`.
- The implicit Keras mask (set by e.g. `keras.layers.Embedding(mask_zero=True)`) is
  read only here, with keras's `get_keras_mask`, and only when the matching
  explicit mask is `None` (an explicit mask wins).
- Masked scores are replaced (not offset) by `large_negative(dtype)` and the softmax
  is taken in float32, so float16 cannot overflow. A row whose keys are all masked
  gets all-zero attention weights, hence a zero attention output (before any output
  projection bias), never NaN. This matches `keras.layers.Softmax` with a mask.
"""
import keras
from keras import ops

# Keras 3.15 has no public `keras.backend.get_keras_mask`; this is the accessor that
# keras's own layers use (MultiHeadAttention, Layer.__call__), so the mask is never
# read through the private `_keras_mask` attribute.
from keras.src.backend import get_keras_mask


def large_negative(dtype):
    """The value that masked scores are replaced with: -3e4 in float16, else -1e9.

    -3e4 (not -65504) leaves headroom so that `score - max` stays finite in float16.
    """
    if keras.backend.standardize_dtype(dtype) == "float16":
        return -3e4
    return -1e9


def causal_mask(query_length, key_length, offset=0):
    """Lower-triangular boolean mask: query position `t` sees keys `s <= offset + t`.

    Args:
        query_length: int, T.
        key_length: int, S.
        offset: int or scalar int tensor; the absolute position of query 0. With a
            cache this is `cache_index`, so that a token decoded at position
            `cache_index + t` sees every earlier cached key and itself.

    Returns:
        Boolean tensor of shape `(T, S)`.

    Example:
    >>> causal_mask(2, 4, offset=1)  # [[T, T, F, F], [T, T, T, F]]
    """
    rows = ops.arange(query_length, dtype="int32")[:, None] + ops.cast(offset, "int32")
    cols = ops.arange(key_length, dtype="int32")[None, :]
    return ops.less_equal(cols, rows)  # (T, S)


def resolve_padding_mask(inputs, padding_mask=None, length=None, name="padding_mask"):
    """Merges an explicit `(B, S)` padding mask with the implicit Keras mask of `inputs`.

    The explicit mask wins. The implicit mask is skipped when its static length
    differs from `length`: with a cache the keys span the cache, not `inputs`.

    Args:
        inputs: `(B, S, ...)` tensor whose implicit Keras mask marks valid positions.
        padding_mask: optional `(B, S)` boolean or 0/1 tensor, True for valid positions.
        length: optional int S that the mask must cover (checked when static).
        name: the argument name used in error messages.

    Returns:
        Boolean `(B, S)` tensor, or None when there is no mask at all.
    """
    if padding_mask is None:
        implicit = get_keras_mask(inputs)
        if implicit is None or not _may_equal(implicit.shape[-1], length):
            return None
        return ops.cast(implicit, "bool")
    padding_mask = ops.convert_to_tensor(padding_mask)
    if len(padding_mask.shape) != 2:
        raise ValueError(
            f"{name} must be a (B, S) mask of rank 2; received {name} with shape "
            f"{tuple(padding_mask.shape)}"
        )
    if not _may_equal(padding_mask.shape[-1], length):
        raise ValueError(
            f"{name} must have length {length} in its last axis; received {name} "
            f"with shape {tuple(padding_mask.shape)}"
        )
    return ops.cast(padding_mask, "bool")


def _may_equal(size, length):
    """False only when both lengths are static ints and differ."""
    if isinstance(size, int) and isinstance(length, int):
        return size == length
    return True


def merge_masks(
    query,
    padding_mask=None,
    attention_mask=None,
    use_causal_mask=False,
    query_mask=None,
    key_length=None,
    value=None,
    cache_index=None,
):
    """Combines every kind of attention mask into one boolean `(B, T, S)` mask.

    The result is the logical AND of:
    - the key padding mask: `padding_mask` (B, S), or, when it is None, the implicit
      Keras mask of `value` (of `query` for self-attention, `value=None`);
    - `attention_mask` (B, T, S);
    - the causal mask, offset by `cache_index` (query `t` sees keys
      `s <= cache_index + t`) when `use_causal_mask`;
    - with `cache_index` and no causal mask, the filled part of the cache
      (keys `s < cache_index + T`), so that unwritten cache slots are never seen;
    - the query mask `query_mask` (B, T) as whole rows (a masked query attends to
      nothing and gets a zero attention output). Only used when given explicitly.

    Args:
        query: `(B, T, ...)` tensor; gives B and T.
        padding_mask: optional `(B, S)` mask of valid keys.
        attention_mask: optional `(B, T, S)` mask.
        use_causal_mask: bool.
        query_mask: optional `(B, T)` mask of valid queries.
        key_length: optional int S; defaults to `value.shape[1]`. Give the cache
            length when attending over a cache.
        value: optional `(B, S, ...)` tensor whose implicit mask marks valid keys;
            defaults to `query` (self-attention).
        cache_index: optional int or scalar int tensor, position of query 0 in the
            cache.

    Returns:
        Boolean tensor `(B, T, S)`, or None when nothing is masked.

    Example:
    >>> mask = merge_masks(x, padding_mask=tokens != 0, use_causal_mask=True)
    """
    value = query if value is None else value
    # ops.shape gives Python ints where static (XLA) and tensors where not (T=None).
    query_length = ops.shape(query)[1]
    key_length = ops.shape(value)[1] if key_length is None else key_length

    mask = None  # broadcastable to (B, T, S)

    def _and(mask, other):
        return other if mask is None else ops.logical_and(mask, other)

    keys = resolve_padding_mask(value, padding_mask, key_length)
    if keys is not None:
        mask = keys[:, None, :]  # (B, 1, S)
    if attention_mask is not None:
        attention_mask = ops.convert_to_tensor(attention_mask)
        if len(attention_mask.shape) != 3:
            raise ValueError(
                "attention_mask must be a (B, T, S) mask of rank 3; received "
                f"attention_mask with shape {tuple(attention_mask.shape)}"
            )
        mask = _and(mask, ops.cast(attention_mask, "bool"))
    offset = 0 if cache_index is None else cache_index
    if use_causal_mask:
        mask = _and(mask, causal_mask(query_length, key_length, offset)[None])
    elif cache_index is not None:
        filled = ops.arange(key_length, dtype="int32") < ops.cast(offset, "int32") + query_length
        mask = _and(mask, filled[None, None, :])  # (1, 1, S)
    if query_mask is not None:
        rows = resolve_padding_mask(query, query_mask, query_length, name="query_mask")
        mask = _and(mask, rows[:, :, None])  # (B, T, 1)
    if mask is None:
        return None
    batch_size = ops.shape(query)[0]
    return ops.broadcast_to(mask, (batch_size, query_length, key_length))  # (B, T, S)


def masked_softmax(scores, mask=None, axis=-1):
    """Softmax over `axis` that ignores masked scores; computed in float32.

    Args:
        scores: `(..., T, S)` float tensor, e.g. `(B, H, T, S)` or `(B, T, S)`.
        mask: optional boolean mask broadcastable to `scores` after inserting head
            axes: `(B, T, S)` is expanded to `(B, 1, T, S)` for 4-D scores.

    Returns:
        Weights with the dtype of `scores`; masked weights are exactly 0 and an
        all-masked row is all zeros.
    """
    dtype = scores.dtype
    scores = ops.cast(scores, "float32")
    if mask is None:
        return ops.cast(ops.softmax(scores, axis=axis), dtype)
    mask = ops.cast(mask, "bool")
    while len(mask.shape) < len(scores.shape):
        mask = ops.expand_dims(mask, axis=-3)  # (B, 1, T, S)
    scores = ops.where(mask, scores, large_negative("float32"))
    weights = ops.where(mask, ops.softmax(scores, axis=axis), 0.0)
    return ops.cast(weights, dtype)
