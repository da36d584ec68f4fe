"""Luong (multiplicative) attention: dot, general and scaled-dot scores."""
import math

import keras
from keras import ops

from layers.dropout import Dropout
from layers.masking import masked_softmax, merge_masks, resolve_padding_mask

SCORE_MODES = ("dot", "general", "scaled_dot")


@keras.saving.register_keras_serializable(package="layers")
class DotAttention(keras.layers.Layer):
    """Luong attention: softmax(score(q, k)) v with a multiplicative score.

    Scores, for query `q` (B, T, Dq) and key `k` (B, S, Dk):
    - `"dot"`: `q . k` (needs Dq == Dk);
    - `"general"`: `q W k` with a learned `W` (Dq, Dk);
    - `"scaled_dot"`: `q . k / sqrt(Dk)`.
    With `use_scale=True` the scores are also multiplied by a learned scalar `scale`
    (initialised to 1), exactly as in `keras.layers.Attention(use_scale=True)`.

    Args:
        score_mode: one of `"dot"`, `"general"`, `"scaled_dot"`. Defaults to `"dot"`.
        use_scale: bool, learn a scalar multiplier of the scores. Defaults to False.
        dropout: float in [0, 1), dropout on the attention weights. Defaults to 0.
        kernel_initializer: initializer of `W` (`"general"`). Defaults to
            `"glorot_uniform"`.
        seed: optional int seed for dropout.

    Call arguments:
        query: `(B, T, Dq)`.
        value: `(B, S, Dv)`.
        key: optional `(B, S, Dk)`; defaults to `value`.
        padding_mask: optional `(B, S)` mask of valid keys; defaults to the
            implicit Keras mask of `value`.
        return_scores: bool; also return the attention weights `(B, T, S)`.
        training: bool, for dropout.
        use_causal_mask: bool; query `t` sees keys `s <= t`.
        query_mask: optional `(B, T)` mask of valid queries (defaults to the
            implicit mask of `query`); outputs at masked queries are zero, as in
            `keras.layers.Attention`. The output carries this mask.

    Returns:
        `(B, T, Dv)`, or `(output, scores)` when `return_scores`. A query whose keys
        are all masked gets a zero output.

    Example:
    >>> context = DotAttention(score_mode="general")(decoder_states, encoder_states,
    ...                                               padding_mask=source_mask)

    Reference: Luong et al. 2015, "Effective Approaches to Attention-based Neural
    Machine Translation", https://arxiv.org/abs/1508.04025
    """

    def __init__(
        self,
        score_mode="dot",
        use_scale=False,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if score_mode not in SCORE_MODES:
            raise ValueError(
                f"score_mode must be one of {SCORE_MODES}; received score_mode={score_mode!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1); received dropout={dropout}")
        self.score_mode = score_mode
        self.use_scale = use_scale
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.seed = seed
        self.supports_masking = True

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        query_dim, key_dim = query_shape[-1], key_shape[-1]
        if self.score_mode != "general" and query_dim != key_dim:
            raise ValueError(
                f"score_mode={self.score_mode!r} needs query and key with the same last "
                f"dimension; received query dim={query_dim}, key dim={key_dim}"
            )
        self.kernel = None
        if self.score_mode == "general":
            self.kernel = self.add_weight(
                name="kernel", shape=(query_dim, key_dim), initializer=self.kernel_initializer
            )
        self.scale = None
        if self.use_scale:
            self.scale = self.add_weight(name="scale", shape=(), initializer="ones")
        self._dropout_layer = Dropout(self.dropout, seed=self.seed, dtype=self.dtype_policy)

    def call(
        self,
        query,
        value,
        key=None,
        padding_mask=None,
        return_scores=False,
        training=None,
        use_causal_mask=False,
        query_mask=None,
    ):
        key = value if key is None else key
        mask = merge_masks(
            query, padding_mask=padding_mask, use_causal_mask=use_causal_mask, value=value
        )  # (B, T, S)
        rows = resolve_padding_mask(query, query_mask, query.shape[1], name="query_mask")  # (B, T)
        if self.kernel is not None:
            query = ops.matmul(query, self.kernel)  # (B, T, Dk)
        scores = ops.matmul(query, ops.swapaxes(key, -1, -2))  # (B, T, S)
        if self.score_mode == "scaled_dot":
            scores = scores * ops.cast(1.0 / math.sqrt(key.shape[-1]), scores.dtype)
        if self.scale is not None:
            scores = scores * ops.cast(self.scale, scores.dtype)
        scores = masked_softmax(scores, mask)
        weights = self._dropout_layer(scores, training=training)
        output = ops.matmul(weights, value)  # (B, T, Dv)
        if rows is not None:
            output = ops.where(rows[:, :, None], output, ops.zeros_like(output))
        if return_scores:
            return output, scores
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "score_mode": self.score_mode,
                "use_scale": self.use_scale,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "seed": self.seed,
            }
        )
        return config
