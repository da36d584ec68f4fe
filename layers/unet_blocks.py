"""The contracting and expanding steps of a U-Net (Ronneberger et al., 2015)."""
import keras
from keras import ops

from layers.conv_block import ConvBlock, check_conv_arguments


@keras.saving.register_keras_serializable(package="layers")
class DownBlock(keras.layers.Layer):
    """ConvBlock, then 2x2 max pooling; returns the pooled map and the skip.

    Args:
        filters: int, output channels of the ConvBlock.
        kernel_size: int, conv kernel size. Defaults to `3`.
        norm: `"batch"`, `"layer"` or `None`, as in `ConvBlock`. Defaults to
            `"batch"`.
        activation: conv activation. Defaults to `"relu"`.
        dropout: float, ConvBlock dropout rate. Defaults to `0.0`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        x: float tensor `(B, H, W, C)`, `H` and `W` even.
        training: bool, for batch norm and dropout.

    Returns:
        `(downsampled, skip)`: `(B, H / 2, W / 2, filters)` and the pre-pooling
        features `(B, H, W, filters)` that the matching `UpBlock` consumes.

    Example:
    ```python
    down, skip = DownBlock(16)(np.zeros((2, 32, 32, 3), "float32"))
    # down (2, 16, 16, 16), skip (2, 32, 32, 16)
    ```

    Reference:
        [Ronneberger et al., 2015](https://arxiv.org/abs/1505.04597).
    """

    def __init__(self, filters, kernel_size=3, norm="batch", activation="relu", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_conv_arguments(filters, kernel_size, norm=norm, dropout=dropout)
        self.filters = filters
        self.kernel_size = kernel_size
        self.norm = norm
        self.activation = keras.activations.get(activation)
        self.dropout = dropout

    def build(self, x_shape):
        if x_shape[1] is not None and (x_shape[1] % 2 or x_shape[2] % 2):
            raise ValueError(
                "DownBlock input height and width must be even; "
                f"received input shape={tuple(x_shape)}"
            )
        self.conv_block = ConvBlock(
            self.filters,
            kernel_size=self.kernel_size,
            norm=self.norm,
            activation=self.activation,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="conv_block",
        )
        self.conv_block.build(x_shape)
        self.pool = keras.layers.MaxPooling2D(2, dtype=self.dtype_policy, name="pool")

    def call(self, x, training=None):
        skip = self.conv_block(x, training=training)  # (B, H, W, F)
        x = self.pool(skip)  # (B, H / 2, W / 2, F)
        return x, skip

    def compute_output_shape(self, x_shape):
        batch, height, width, _ = x_shape
        half = lambda n: None if n is None else n // 2
        return (batch, half(height), half(width), self.filters), (batch, height, width, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "norm": self.norm,
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="layers")
class UpBlock(keras.layers.Layer):
    """2x2 transposed conv, concatenation with the skip, then ConvBlock.

    Args:
        filters: int, output channels of the transposed conv and the ConvBlock.
        kernel_size: int, conv kernel size of the ConvBlock. Defaults to `3`.
        norm: `"batch"`, `"layer"` or `None`, as in `ConvBlock`. Defaults to
            `"batch"`.
        activation: conv activation. Defaults to `"relu"`.
        dropout: float, ConvBlock dropout rate. Defaults to `0.0`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        x: float tensor `(B, H, W, C)` from the layer below.
        skip: float tensor `(B, 2H, 2W, C_skip)` from the matching `DownBlock`.
        training: bool, for batch norm and dropout.

    Returns:
        A tensor `(B, 2H, 2W, filters)`.

    Example:
    ```python
    down, skip = DownBlock(16)(images)         # (B, 16, 16, 16), (B, 32, 32, 16)
    up = UpBlock(16)(ConvBlock(32)(down), skip)  # (B, 32, 32, 16)
    ```

    Reference:
        [Ronneberger et al., 2015](https://arxiv.org/abs/1505.04597).
    """

    def __init__(self, filters, kernel_size=3, norm="batch", activation="relu", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_conv_arguments(filters, kernel_size, norm=norm, dropout=dropout)
        self.filters = filters
        self.kernel_size = kernel_size
        self.norm = norm
        self.activation = keras.activations.get(activation)
        self.dropout = dropout

    def build(self, x_shape, skip_shape):
        double = lambda n: None if n is None else 2 * n
        upsampled = (x_shape[0], double(x_shape[1]), double(x_shape[2]))
        if tuple(skip_shape[1:3]) != upsampled[1:3]:
            raise ValueError(
                "skip must have twice the height and width of x; received "
                f"x shape={tuple(x_shape)}, skip shape={tuple(skip_shape)}"
            )
        self.upsample = keras.layers.Conv2DTranspose(
            self.filters, 2, strides=2, dtype=self.dtype_policy, name="upsample"
        )
        self.upsample.build(x_shape)
        self.conv_block = ConvBlock(
            self.filters,
            kernel_size=self.kernel_size,
            norm=self.norm,
            activation=self.activation,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="conv_block",
        )
        self.conv_block.build(upsampled + (self.filters + skip_shape[-1],))

    def call(self, x, skip, training=None):
        x = self.upsample(x)  # (B, 2H, 2W, F)
        x = ops.concatenate([x, ops.cast(skip, x.dtype)], axis=-1)  # (B, 2H, 2W, F + C_skip)
        return self.conv_block(x, training=training)  # (B, 2H, 2W, F)

    def compute_output_shape(self, x_shape, skip_shape):
        return (x_shape[0], skip_shape[1], skip_shape[2], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "norm": self.norm,
                "activation": keras.activations.serialize(self.activation),
                "dropout": self.dropout,
            }
        )
        return config
