"""`model=cnn`: convolutional image encoders assembled from `layers.ConvBlock`.

`Cnn(...)` is what the model group's `_target_` instantiates; tasks ask it for
`image_encoder(image_shape)`: images (B, H, W, C) -> pooled features (B, D), or the last
feature map (B, H', W', D) with `pooled=False` (for decoders that attend over a grid).
"""
from __future__ import annotations

import keras

import layers


class Cnn:
    """Sizes of a ResNet-style CNN built from our ConvBlocks (He et al., 2016).

    Stage i is one `ConvBlock(filters[i])`; every stage after the first starts with a
    stride-2 conv, so the output is `2 ** (len(filters) - 1)` times smaller than the input.

    Args:
        filters: channels of each stage.
        num_convs: conv -> norm -> activation units per block.
        kernel_size: side of the square kernels.
        residual: add the (projected) block input to its output.
        norm: "batch", "layer" or None.
        dropout: dropout before the task head (tasks read `factory.dropout`).
    """

    # trainer.jit_compile=auto: XLA/graph train steps per second measured by
    # `python -m benchmarks jit_families` on this project's 2-core CPU: 0.54, 0.97 since
    # layers.Dropout (2026-12-04; Keras' dropout compiled slowly).
    xla_on_cpu = False

    def __init__(self, filters=(16, 32, 64, 128), num_convs: int = 2, kernel_size: int = 3,
                 residual: bool = True, norm: str | None = "batch", dropout: float = 0.1):
        filters = list(filters)
        if not filters or any(not isinstance(f, int) or f <= 0 for f in filters):
            raise ValueError(f"model.filters must be a non-empty list of positive ints; "
                             f"received filters={filters}")
        layers.conv_block.check_conv_arguments(filters[0], kernel_size, 1, norm, 0.0, num_convs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1); received dropout={dropout}")
        self.filters, self.num_convs, self.kernel_size = filters, num_convs, kernel_size
        self.residual, self.norm, self.dropout = residual, norm, dropout

    @property
    def downsampling(self) -> int:
        """How many times smaller the feature map is than the image."""
        return 2 ** (len(self.filters) - 1)

    def image_encoder(self, image_shape: tuple[int, int, int], pooled: bool = True) -> keras.Model:
        """Images (B, H, W, C) -> (B, filters[-1]) by global average pooling, or the feature
        map (B, H / s, W / s, filters[-1]) when `pooled=False` (s = `downsampling`)."""
        images = keras.Input(tuple(image_shape), name="images")
        x = images
        for index, filters in enumerate(self.filters):
            x = layers.ConvBlock(filters, kernel_size=self.kernel_size,
                                 strides=1 if index == 0 else 2, norm=self.norm,
                                 residual=self.residual, num_convs=self.num_convs,
                                 name=f"stage_{index}")(x)  # (B, H / 2^i, W / 2^i, F_i)
        if pooled:
            x = keras.layers.GlobalAveragePooling2D(name="pooling")(x)  # (B, F)
        return keras.Model(images, x, name="cnn_encoder")
