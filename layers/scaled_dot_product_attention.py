"""Scaled dot-product attention, softmax(Q K^T / sqrt(d)) V, as a function and a thin layer."""
import math

import keras
from keras import ops

from layers.dropout import Dropout
from layers.masking import masked_softmax, merge_masks


def scaled_dot_product_attention(
    query, key, value, mask=None, dropout_layer=None, training=None, scale=None
):
    """softmax(Q K^T * scale) V, with masked keys ignored.

    Args:
        query: `(B, H, T, D)` or `(B, T, D)` tensor.
        key: `(B, H, S, D)` or `(B, S, D)` tensor.
        value: `(B, H, S, V)` or `(B, S, V)` tensor.
        mask: optional boolean mask, True = may attend: `(B, T, S)` (broadcast over
            heads) or `(B, H, T, S)`. See `layers.masking.merge_masks`.
        dropout_layer: optional `keras.layers.Dropout` applied to the weights.
        training: passed to `dropout_layer`.
        scale: float; defaults to `1 / sqrt(D)`.

    Returns:
        `(output, scores)`: output `(B, H, T, V)` (or `(B, T, V)`), and the attention
        weights after masking and softmax, before dropout, `(B, H, T, S)` (or
        `(B, T, S)`). A query whose keys are all masked gets zero weights and a
        zero output.

    Reference: Vaswani et al. 2017, "Attention Is All You Need",
    https://arxiv.org/abs/1706.03762
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    if scale != 1.0:  # 1.0: the caller folded the scale into its query projection
        query = ops.multiply(query, ops.cast(scale, query.dtype))
    scores = ops.matmul(query, ops.swapaxes(key, -1, -2))  # (B, H, T, S)
    scores = masked_softmax(scores, mask)
    weights = scores if dropout_layer is None else dropout_layer(scores, training=training)
    output = ops.matmul(weights, value)  # (B, H, T, V)
    return output, scores


@keras.saving.register_keras_serializable(package="layers")
class ScaledDotProductAttention(keras.layers.Layer):
    """Parameter-free scaled dot-product attention with the project's masks.

    Args:
        dropout: float in [0, 1), dropout on the attention weights. Defaults to 0.
        scale: optional float; defaults to `1 / sqrt(D)`.
        seed: optional int seed for dropout.

    Call arguments:
        query: `(B, T, D)`, or `(B, H, T, D)` for several heads.
        value: `(B, S, V)` or `(B, H, S, V)`.
        key: optional `(B, S, D)` or `(B, H, S, D)`; defaults to `value`.
        padding_mask: optional `(B, S)` mask of valid keys; defaults to the
            implicit Keras mask of `value` (3-D inputs only).
        attention_mask: optional `(B, T, S)` mask.
        use_causal_mask: bool; query `t` sees keys `s <= t`.
        return_scores: bool; also return the attention weights.
        training: bool, for dropout.

    Returns:
        `output` with the shape of `query` except the last axis, V; or
        `(output, scores)` with scores `(B, T, S)` / `(B, H, T, S)` when
        `return_scores`.

    Example:
    >>> out = ScaledDotProductAttention()(x, x, use_causal_mask=True)

    Reference: Vaswani et al. 2017, https://arxiv.org/abs/1706.03762
    """

    def __init__(self, dropout=0.0, scale=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1); received dropout={dropout}")
        self.dropout = dropout
        self.scale = scale
        self.seed = seed
        self.supports_masking = True

    def build(self, query_shape, value_shape, key_shape=None):
        self._dropout_layer = Dropout(self.dropout, seed=self.seed, dtype=self.dtype_policy)

    def call(
        self,
        query,
        value,
        key=None,
        padding_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_scores=False,
        training=None,
    ):
        key = value if key is None else key
        heads_first = len(query.shape) == 4
        # Masks are per (batch, query, key); one head's slice carries B, T and S.
        mask = merge_masks(
            query[:, 0] if heads_first else query,
            padding_mask=padding_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            value=value[:, 0] if heads_first else value,
        )  # (B, T, S)
        output, scores = scaled_dot_product_attention(
            query, key, value, mask, self._dropout_layer, training, self.scale
        )
        if return_scores:
            return output, scores
        return output

    def get_config(self):
        config = super().get_config()
        config.update({"dropout": self.dropout, "scale": self.scale, "seed": self.seed})
        return config
