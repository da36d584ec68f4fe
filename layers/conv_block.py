"""A stack of conv -> norm -> activation, optionally residual (He et al., 2016)."""
import keras

from layers.dropout import Dropout

_NORMS = ("batch", "layer", None)


def check_conv_arguments(filters, kernel_size=3, strides=1, norm="batch", dropout=0.0, num_convs=2):
    """Raises a ValueError naming the first ConvBlock argument that is out of range."""
    for name, value in (
        ("filters", filters),
        ("kernel_size", kernel_size),
        ("strides", strides),
        ("num_convs", num_convs),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int; received {name}={value}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}; received norm={norm!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); received dropout={dropout}")


@keras.saving.register_keras_serializable(package="layers")
class ConvBlock(keras.layers.Layer):
    """`num_convs` times conv -> norm -> activation, then dropout, then a residual.

    The first conv applies `strides`; the others keep the resolution. With
    `residual=True` the block input is added to the output, through a 1x1 conv
    (with the same `strides`) when the channel count or the resolution changes.
    Convolutions use `"same"` padding and channels-last images.

    Args:
        filters: int, output channels.
        kernel_size: int, size of the square kernels. Defaults to `3`.
        strides: int, stride of the first conv. Defaults to `1`.
        norm: `"batch"`, `"layer"` (over channels) or `None`. Convs have no
            bias when a norm follows, since the norm's shift replaces it.
            Defaults to `"batch"`.
        activation: activation after each norm. Defaults to `"relu"`.
        residual: bool, add the (projected) input to the output.
            Defaults to `False`.
        dropout: float in `[0, 1)`, dropout rate before the residual sum.
            Defaults to `0.0`.
        num_convs: int, the number of conv -> norm -> activation units.
            Defaults to `2`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        x: float tensor `(B, H, W, C)`.
        training: bool, for batch norm and dropout.

    Returns:
        A tensor `(B, ceil(H / strides), ceil(W / strides), filters)`.

    Example:
    ```python
    block = ConvBlock(32, strides=2, residual=True)
    y = block(np.zeros((2, 16, 16, 3), "float32"))  # (2, 8, 8, 32)
    ```

    Reference:
        [He et al., 2016](https://arxiv.org/abs/1512.03385) (residual);
        [Ronneberger et al., 2015](https://arxiv.org/abs/1505.04597) (two convs).
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        norm="batch",
        activation="relu",
        residual=False,
        dropout=0.0,
        num_convs=2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_conv_arguments(filters, kernel_size, strides, norm, dropout, num_convs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.norm = norm
        self.activation = keras.activations.get(activation)
        self.residual = residual
        self.dropout = dropout
        self.num_convs = num_convs

    def build(self, x_shape):
        self.convs, self.norms = [], []
        shape = tuple(x_shape)
        for i in range(self.num_convs):
            conv = keras.layers.Conv2D(
                self.filters,
                self.kernel_size,
                strides=self.strides if i == 0 else 1,
                padding="same",
                use_bias=self.norm is None,
                dtype=self.dtype_policy,
                name=f"conv_{i}",
            )
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            self.convs.append(conv)
            self.norms.append(self._make_norm(f"norm_{i}", shape))
        self.dropout_layer = Dropout(self.dropout, dtype=self.dtype_policy)

        self.projection = None
        if self.residual and (x_shape[-1] != self.filters or self.strides != 1):
            self.projection = keras.layers.Conv2D(
                self.filters,
                1,
                strides=self.strides,
                padding="same",
                dtype=self.dtype_policy,
                name="projection",
            )
            self.projection.build(x_shape)

    def _make_norm(self, name, shape):
        if self.norm is None:
            norm = keras.layers.Identity(dtype=self.dtype_policy, name=name)
        elif self.norm == "batch":
            norm = keras.layers.BatchNormalization(dtype=self.dtype_policy, name=name)
        else:
            norm = keras.layers.LayerNormalization(dtype=self.dtype_policy, name=name)
        norm.build(shape)
        return norm

    def call(self, x, training=None):
        residual = x  # (B, H, W, C)
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)  # (B, H', W', F)
            x = norm(x, training=training)
            x = self.activation(x)
        x = self.dropout_layer(x, training=training)
        if self.residual:
            if self.projection is not None:
                residual = self.projection(residual)  # (B, H', W', F)
            x = x + residual
        return x

    def compute_output_shape(self, x_shape):
        batch, height, width, _ = x_shape
        shrink = lambda n: None if n is None else -(-n // self.strides)  # "same" padding
        return (batch, shrink(height), shrink(width), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "norm": self.norm,
                "activation": keras.activations.serialize(self.activation),
                "residual": self.residual,
                "dropout": self.dropout,
                "num_convs": self.num_convs,
            }
        )
        return config
