"""One Transformer encoder block: self-attention and a feed-forward net, each residual."""
import keras
from keras import ops

from layers.dropout import Dropout
from layers.linear_attention import LinearAttention
from layers.masking import resolve_padding_mask
from layers.multi_head_attention import MultiHeadAttention

_ATTENTION = ("softmax", "linear")


def check_block_arguments(hidden_dim, num_heads, intermediate_dim, dropout):
    """Raises a ValueError naming the first Transformer block argument out of range."""
    for name, value in (
        ("hidden_dim", hidden_dim),
        ("num_heads", num_heads),
        ("intermediate_dim", intermediate_dim),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int; received {name}={value!r}")
    if hidden_dim % num_heads:
        raise ValueError(
            "num_heads must divide hidden_dim; "
            f"received hidden_dim={hidden_dim}, num_heads={num_heads}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); received dropout={dropout}")


def check_hidden_dim(name, shape, hidden_dim):
    if shape[-1] != hidden_dim:
        raise ValueError(
            f"the last axis of {name} must equal hidden_dim; received {name} shape="
            f"{tuple(shape)}, hidden_dim={hidden_dim}"
        )


def feedforward(block, x):
    """The block's feed-forward net, `feedforward_output(feedforward_intermediate(x))`,
    on `x` (B, T, D) flattened to (B*T, D): the same matmuls, but 2-D, so that the
    bias add and activation follow the matmul directly (graph mode fuses them into it)."""
    shape = ops.shape(x)
    x = ops.reshape(x, (-1, x.shape[-1]))  # (B*T, D)
    x = block.feedforward_intermediate(x)  # (B*T, intermediate_dim)
    x = block.feedforward_output(x)  # (B*T, D)
    return ops.reshape(x, shape)  # (B, T, D)


def clone_initializer(initializer):
    # A fresh instance per sublayer, so a seeded initializer does not repeat weights.
    return initializer.__class__.from_config(initializer.get_config())


@keras.saving.register_keras_serializable(package="layers")
class TransformerEncoderBlock(keras.layers.Layer):
    """Self-attention then a position-wise feed-forward net, each with a residual.

    Post-norm (`normalize_first=False`, Vaswani et al.; BERT):
    `x = norm(x + attention(x))`, `x = norm(x + ffn(x))`.
    Pre-norm (`normalize_first=True`, GPT-2; Xiong et al., 2020):
    `x = x + attention(norm(x))`, `x = x + ffn(norm(x))`.
    Sublayers and weights match `keras_hub.layers.TransformerEncoder` role by role.

    Args:
        hidden_dim: int D, the size of the inputs and outputs.
        num_heads: int H; must divide `hidden_dim` (each head has `D / H` dims).
        intermediate_dim: int, the hidden size of the feed-forward net.
        dropout: float in `[0, 1)`, for the attention weights and both residual
            branches. Defaults to `0.0`.
        activation: activation of the feed-forward net. Defaults to `"relu"`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        normalize_first: bool, pre-norm instead of post-norm. Defaults to `False`.
        attention: `"softmax"` (`layers.MultiHeadAttention`) or `"linear"`
            (`layers.LinearAttention`, O(T); no `attention_mask` and no dropout
            on attention weights). Defaults to `"softmax"`.
        kernel_initializer: for the dense and attention kernels. Defaults to
            `"glorot_uniform"`.
        bias_initializer: for their biases. Defaults to `"zeros"`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        x: float tensor `(B, T, D)`.
        padding_mask: optional bool `(B, T)`, True at valid tokens; padded keys
            receive no attention. Defaults to the implicit Keras mask of `x`
            (an explicit mask wins).
        attention_mask: optional bool `(B, T, T)`, True where query `t` may
            attend to key `s`; combined with `padding_mask`.
        training: bool, for dropout.

    Returns:
        A tensor `(B, T, D)`; the implicit mask of `x` propagates to it.

    Example:
    ```python
    block = TransformerEncoderBlock(hidden_dim=64, num_heads=4, intermediate_dim=128)
    y = block(x, padding_mask=token_ids != 0)  # x (B, T, 64) -> y (B, T, 64)
    ```

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762);
        [Katharopoulos et al., 2020](https://arxiv.org/abs/2006.16236) (linear).
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
        attention="softmax",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_block_arguments(hidden_dim, num_heads, intermediate_dim, dropout)
        if attention not in _ATTENTION:
            raise ValueError(
                f"attention must be one of {_ATTENTION}; received attention={attention!r}"
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first
        self.attention = attention
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def build(self, x_shape):
        check_hidden_dim("x", x_shape, self.hidden_dim)
        attention_kwargs = dict(
            num_heads=self.num_heads,
            key_dim=self.hidden_dim // self.num_heads,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name="self_attention",
        )
        if self.attention == "softmax":
            self.self_attention = MultiHeadAttention(dropout=self.dropout, **attention_kwargs)
        else:
            self.self_attention = LinearAttention(**attention_kwargs)
        self.self_attention.build(x_shape, x_shape)
        self.self_attention_norm = self._layer_norm("self_attention_norm", x_shape)
        self.self_attention_dropout = Dropout(self.dropout, dtype=self.dtype_policy)

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

    def call(self, x, padding_mask=None, attention_mask=None, training=None):
        padding_mask = resolve_padding_mask(x, padding_mask, x.shape[1])  # (B, T) or None

        # Self-attention block.
        residual = x  # (B, T, D)
        if self.normalize_first:
            x = self.self_attention_norm(x)
        x = self._self_attend(x, padding_mask, attention_mask, training)  # (B, T, D)
        x = self.self_attention_dropout(x, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self.self_attention_norm(x)

        # Feed-forward block.
        residual = x
        if self.normalize_first:
            x = self.feedforward_norm(x)
        x = feedforward(self, x)  # (B, T, D)
        x = self.feedforward_dropout(x, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self.feedforward_norm(x)
        return x

    def _self_attend(self, x, padding_mask, attention_mask, training):
        if self.attention == "linear":
            if attention_mask is not None:
                raise ValueError(
                    "attention_mask is not supported with attention='linear' (it has "
                    "no (T, S) score matrix to mask); received attention_mask with "
                    f"shape {tuple(attention_mask.shape)}"
                )
            return self.self_attention(x, x, padding_mask=padding_mask, training=training)
        return self.self_attention(
            x, x, padding_mask=padding_mask, attention_mask=attention_mask, training=training
        )

    def compute_output_shape(self, x_shape):
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
                "attention": self.attention,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
