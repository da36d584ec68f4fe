"""One Transformer decoder block: causal self-attention, cross-attention, feed-forward."""
import keras

from layers.dropout import Dropout
from layers.masking import resolve_padding_mask
from layers.multi_head_attention import MultiHeadAttention
from layers.transformer_encoder import (
    check_block_arguments,
    check_hidden_dim,
    clone_initializer,
    feedforward,
)


@keras.saving.register_keras_serializable(package="layers")
class TransformerDecoderBlock(keras.layers.Layer):
    """Causal self-attention, cross-attention to the encoder, and a feed-forward net.

    Each of the three sublayers is residual, normalised after the sum
    (`normalize_first=False`, Vaswani et al.) or before the sublayer
    (`normalize_first=True`, GPT-2). Without cross-attention this is a GPT-style
    decoder-only block. Sublayers and weights match
    `keras_hub.layers.TransformerDecoder` role by role.

    Cached decoding: keep a self-attention key/value cache
    `(B, 2, S_max, H, D / H)` per block, initially zeros, and feed one token at a
    time (`x` of shape `(B, 1, D)`) with `self_attention_cache_index=t`; the block
    writes the token's key and value at `t` and attends to positions `<= t`.
    Cross-attention keys and values are recomputed from `encoder_outputs` at
    every step (no cross-attention cache).

    Args:
        hidden_dim: int D, the size of the inputs and outputs.
        num_heads: int H; must divide `hidden_dim`.
        intermediate_dim: int, the hidden size of the feed-forward net.
        dropout: float in `[0, 1)`, for attention weights and the residual
            branches. Defaults to `0.0`.
        activation: activation of the feed-forward net. Defaults to `"relu"`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        normalize_first: bool, pre-norm instead of post-norm. Defaults to `False`.
        cross_attention: bool, whether the block attends to `encoder_outputs`
            (then they are required at every call). Defaults to `True`.
        kernel_initializer: for the dense and attention kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: for their biases. Defaults to `"zeros"`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        x: float tensor `(B, T, D)`, the decoder sequence (`T = 1` when decoding
            step by step).
        encoder_outputs: float tensor `(B, S, D)`; required iff `cross_attention`.
        decoder_padding_mask: optional bool, True at valid decoder tokens:
            `(B, T)`, or `(B, S_max)` over the cache slots with a cache. Defaults
            to the implicit Keras mask of `x` (without a cache).
        encoder_padding_mask: optional bool `(B, S)`, True at valid encoder
            tokens. Defaults to the implicit Keras mask of `encoder_outputs`.
        self_attention_cache: optional float `(B, 2, S_max, H, D / H)` cache of
            self-attention keys (`[:, 0]`) and values (`[:, 1]`).
        self_attention_cache_index: int or scalar int tensor, the position of
            `x[:, 0]`; required with a cache.
        training: bool, for dropout.
        use_causal_mask: bool, query `t` sees only decoder positions `<= t`.
            Defaults to `True`.
        return_cross_attention_scores: bool; also return the cross-attention
            weights `(B, H, T, S)` (for attention pictures). Needs
            `cross_attention=True`.

    Returns:
        `outputs` `(B, T, D)`; with a `self_attention_cache`, the tuple
        `(outputs, updated_cache)` with the cache's shape; with
        `return_cross_attention_scores`, the scores come last. The implicit mask of
        `x` propagates to `outputs`.

    Example:
    ```python
    block = TransformerDecoderBlock(hidden_dim=64, num_heads=4, intermediate_dim=128)
    y = block(x, encoder_outputs=memory, encoder_padding_mask=source_ids != 0)
    cache = keras.ops.zeros((batch, 2, max_length, 4, 16))
    y_t, cache = block(x_t, encoder_outputs=memory, self_attention_cache=cache,
                       self_attention_cache_index=t)
    ```

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762);
        [Radford et al., 2019](https://openai.com/research/better-language-models) (pre-norm).
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        activation="relu",
        layer_norm_epsilon=1e-5,
        normalize_first=False,
        cross_attention=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_block_arguments(hidden_dim, num_heads, intermediate_dim, dropout)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first
        self.cross_attention = cross_attention
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def build(self, x_shape, encoder_outputs_shape=None):
        check_hidden_dim("x", x_shape, self.hidden_dim)
        self.self_attention = self._attention("self_attention", x_shape, x_shape)
        self.self_attention_norm = self._layer_norm("self_attention_norm", x_shape)
        self.self_attention_dropout = Dropout(self.dropout, dtype=self.dtype_policy)

        if self.cross_attention:
            if encoder_outputs_shape is None:
                raise ValueError(
                    "cross_attention=True needs encoder_outputs at every call; "
                    "received encoder_outputs=None"
                )
            check_hidden_dim("encoder_outputs", encoder_outputs_shape, self.hidden_dim)
            self.cross_attention_layer = self._attention(
                "cross_attention", x_shape, encoder_outputs_shape
            )
            self.cross_attention_norm = self._layer_norm("cross_attention_norm", x_shape)
            self.cross_attention_dropout = Dropout(self.dropout, dtype=self.dtype_policy)

        self.feedforward_norm = self._layer_norm("feedforward_norm", x_shape)
        self.feedforward_intermediate = self._dense(
            self.intermediate_dim, self.activation, "feedforward_intermediate", x_shape
        )
        self.feedforward_output = self._dense(
            self.hidden_dim,
            None,
            "feedforward_output",
            tuple(x_shape[:-1]) + (self.intermediate_dim,),
        )
        self.feedforward_dropout = Dropout(self.dropout, dtype=self.dtype_policy)

    def _attention(self, name, query_shape, value_shape):
        attention = MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=self.hidden_dim // self.num_heads,
            dropout=self.dropout,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )
        attention.build(query_shape, value_shape)
        return attention

    def _layer_norm(self, name, shape):
        norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
        )
        norm.build(shape)
        return norm

    def _dense(self, units, activation, name, shape):
        dense = keras.layers.Dense(
            units,
            activation=activation,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name=name,
        )
        dense.build(shape)
        return dense

    def call(
        self,
        x,
        encoder_outputs=None,
        decoder_padding_mask=None,
        encoder_padding_mask=None,
        self_attention_cache=None,
        self_attention_cache_index=None,
        training=None,
        use_causal_mask=True,
        return_cross_attention_scores=False,
    ):
        self._check_call(encoder_outputs, self_attention_cache, self_attention_cache_index)
        has_cache = self_attention_cache is not None
        key_length = self_attention_cache.shape[2] if has_cache else x.shape[1]
        decoder_padding_mask = resolve_padding_mask(
            x, decoder_padding_mask, key_length, name="decoder_padding_mask"
        )  # (B, S_max) with a cache, else (B, T); or None

        # Causal self-attention block.
        residual = x  # (B, T, D)
        if self.normalize_first:
            x = self.self_attention_norm(x)
        x = self.self_attention(
            x,
            x,
            padding_mask=decoder_padding_mask,
            use_causal_mask=use_causal_mask,
            cache=self_attention_cache,
            cache_index=self_attention_cache_index,
            training=training,
        )
        if has_cache:
            x, self_attention_cache = x  # (B, T, D), (B, 2, S_max, H, D / H)
        x = self.self_attention_dropout(x, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self.self_attention_norm(x)

        # Cross-attention block.
        if self.cross_attention:
            encoder_padding_mask = resolve_padding_mask(
                encoder_outputs,
                encoder_padding_mask,
                encoder_outputs.shape[1],
                name="encoder_padding_mask",
            )  # (B, S) or None
            residual = x
            if self.normalize_first:
                x = self.cross_attention_norm(x)
            x = self.cross_attention_layer(
                x,
                encoder_outputs,
                padding_mask=encoder_padding_mask,
                return_scores=return_cross_attention_scores,
                training=training,
            )  # (B, T, D)
            if return_cross_attention_scores:
                x, cross_scores = x  # (B, T, D), (B, H, T, S)
            x = self.cross_attention_dropout(x, training=training)
            x = x + residual
            if not self.normalize_first:
                x = self.cross_attention_norm(x)

        # Feed-forward block.
        residual = x
        if self.normalize_first:
            x = self.feedforward_norm(x)
        x = feedforward(self, x)  # (B, T, D)
        x = self.feedforward_dropout(x, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self.feedforward_norm(x)

        outputs = (x, self_attention_cache) if has_cache else (x,)
        if return_cross_attention_scores:
            outputs += (cross_scores,)
        return outputs if len(outputs) > 1 else x

    def _check_call(self, encoder_outputs, cache, cache_index):
        if self.cross_attention and encoder_outputs is None:
            raise ValueError(
                "cross_attention=True needs encoder_outputs at every call; "
                "received encoder_outputs=None"
            )
        if not self.cross_attention and encoder_outputs is not None:
            raise ValueError(
                "encoder_outputs must be None when cross_attention=False; received "
                f"encoder_outputs with shape {tuple(encoder_outputs.shape)}"
            )
        if (cache is None) != (cache_index is None):
            raise ValueError(
                "self_attention_cache and self_attention_cache_index go together; "
                f"received self_attention_cache={'None' if cache is None else 'a tensor'}, "
                f"self_attention_cache_index={cache_index}"
            )

    def compute_output_shape(
        self, x_shape, encoder_outputs_shape=None, self_attention_cache_shape=None
    ):
        if self_attention_cache_shape is not None:
            return x_shape, self_attention_cache_shape
        return x_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "normalize_first": self.normalize_first,
                "cross_attention": self.cross_attention,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
