"""Bahdanau (additive) attention: score = v^T tanh(W1 q + W2 k)."""
import keras
from keras import ops

from layers.dropout import Dropout
from layers.masking import masked_softmax, merge_masks, resolve_padding_mask


@keras.saving.register_keras_serializable(package="layers")
class AdditiveAttention(keras.layers.Layer):
    """Bahdanau attention: softmax(v^T tanh(W1 q + W2 k)) v.

    With `units=N`, queries and keys are projected to N units by learned `W1`
    (`query_dense`, no bias) and `W2` (`key_dense`, with the one bias of the sum).
    With `units=None` there are no projections and the score is keras's
    `sum(scale * tanh(q + k))` exactly, so the layer matches
    `keras.layers.AdditiveAttention` weight for weight. The vector `v` is the
    learned weight `scale` (shape `(units,)`, or `(D,)` without projections) when
    `use_scale=True`, and all ones otherwise.

    Args:
        units: optional int, size of the projected space. Defaults to None (no
            projections; query and key must have the same last dimension).
        use_scale: bool, learn `v`. Defaults to True.
        dropout: float in [0, 1), dropout on the attention weights. Defaults to 0.
        kernel_initializer: initializer of `W1`, `W2`. Defaults to
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
            `keras.layers.AdditiveAttention`. The output carries this mask.

    Returns:
        `(B, T, Dv)`, or `(output, scores)` when `return_scores`. A query whose keys
        are all masked gets a zero output.

    Example:
    >>> context = AdditiveAttention(units=64)(decoder_states, encoder_states,
    ...                                       padding_mask=source_mask)

    Reference: Bahdanau et al. 2015, "Neural Machine Translation by Jointly Learning
    to Align and Translate", https://arxiv.org/abs/1409.0473
    """

    def __init__(
        self,
        units=None,
        use_scale=True,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if units is not None and (not isinstance(units, int) or units <= 0):
            raise ValueError(f"units must be None or a positive int; received units={units}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1); received dropout={dropout}")
        self.units = units
        self.use_scale = use_scale
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.seed = seed
        self.supports_masking = True

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        self.query_dense = self.key_dense = None
        if self.units is None:
            if query_shape[-1] != key_shape[-1]:
                raise ValueError(
                    "units=None adds query and key directly, so they need the same last "
                    f"dimension; received query dim={query_shape[-1]}, "
                    f"key dim={key_shape[-1]}"
                )
            score_dim = query_shape[-1]
        else:
            score_dim = self.units
            self.query_dense = self._dense("query_dense", use_bias=False)
            self.query_dense.build(query_shape)
            self.key_dense = self._dense("key_dense", use_bias=True)
            self.key_dense.build(key_shape)
        self.scale = None
        if self.use_scale:
            self.scale = self.add_weight(
                name="scale", shape=(score_dim,), initializer="glorot_uniform"
            )
        self._dropout_layer = Dropout(self.dropout, seed=self.seed, dtype=self.dtype_policy)

    def _dense(self, name, use_bias):
        initializer = self.kernel_initializer.__class__.from_config(
            self.kernel_initializer.get_config()
        )
        return keras.layers.Dense(
            self.units,
            use_bias=use_bias,
            kernel_initializer=initializer,
            name=name,
            dtype=self.dtype_policy,
        )

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
        if self.query_dense is not None:
            query = self.query_dense(query)  # (B, T, U)
            key = self.key_dense(key)  # (B, S, U)
        # Broadcast every query against every key: (B, T, 1, U) + (B, 1, S, U).
        hidden = ops.tanh(query[:, :, None, :] + key[:, None, :, :])  # (B, T, S, U)
        if self.scale is not None:
            hidden = hidden * ops.cast(self.scale, hidden.dtype)
        scores = ops.sum(hidden, axis=-1)  # (B, T, S)
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
                "units": self.units,
                "use_scale": self.use_scale,
                "dropout": self.dropout,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "seed": self.seed,
            }
        )
        return config
