"""`model=unet`: a U-Net (Ronneberger et al., 2015) from our `DownBlock`/`UpBlock` layers.

`UNet(...)` is what the model group's `_target_` instantiates; the segmentation task asks it
for `segmenter(image_size, num_classes)`.
"""
from __future__ import annotations

import keras

import layers


class UNet:
    """Sizes of a U-Net: `depth` down steps with skips, a bottleneck, `depth` up steps.

    Args:
        filters: channels of the first level; each level down doubles them.
        depth: down/up steps; the image side must be divisible by 2 ** depth.
        kernel_size: conv kernel size in every block.
        norm: "batch", "layer" or None, as in `layers.ConvBlock`.
        dropout: ConvBlock dropout (bottleneck and decoder).
    """

    # trainer.jit_compile=auto: XLA/graph train steps per second measured by
    # `python -m benchmarks jit_families` on this project's 2-core CPU: 0.66; 0.60 on
    # 2026-12-04 with layers.Dropout.
    xla_on_cpu = False

    def __init__(self, filters: int = 16, depth: int = 3, kernel_size: int = 3,
                 norm: str | None = "batch", dropout: float = 0.0):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"model.depth must be an int >= 1; received depth={depth!r}")
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"model.filters must be an int >= 1; received filters={filters!r}")
        self.filters, self.depth, self.kernel_size = filters, depth, kernel_size
        self.norm, self.dropout = norm, dropout

    def segmenter(self, image_size: int, num_classes: int, channels: int = 3,
                  mean=None, variance=None) -> keras.Model:
        """Pixels (B, S, S, channels) in [0, 255] -> per-pixel logits (B, S, S, C), float32.

        `mean`/`variance` (per channel, of the training pixels) standardise the input inside
        the model; without them pixels are scaled to [0, 1]. Standardised inputs keep batch
        norm's moving statistics close to the batch ones early in training, so validation
        does not lag behind training for epochs.
        """
        step = 2 ** self.depth
        if image_size % step:
            raise ValueError(
                f"task.image_size must be divisible by 2 ** model.depth = {step}; received "
                f"image_size={image_size}, depth={self.depth}"
            )
        conv = dict(kernel_size=self.kernel_size, norm=self.norm)
        pixels = keras.Input((image_size, image_size, channels), name="pixels")
        x = input_scaling(mean, variance)(pixels)  # (B, S, S, 3), standardised
        skips = []
        for level in range(self.depth):
            x, skip = layers.DownBlock(self.filters * 2 ** level, **conv,
                                       name=f"down_{level}")(x)  # (B, S / 2^(l+1), ...)
            skips.append(skip)
        x = layers.ConvBlock(self.filters * 2 ** self.depth, dropout=self.dropout, **conv,
                             name="bottleneck")(x)  # (B, S / 2^depth, S / 2^depth, F 2^depth)
        for level in reversed(range(self.depth)):
            x = layers.UpBlock(self.filters * 2 ** level, dropout=self.dropout, **conv,
                               name=f"up_{level}")(x, skips[level])  # (B, S / 2^l, ...)
        logits = keras.layers.Conv2D(num_classes, 1, dtype="float32", name="head")(x)
        return keras.Model(pixels, logits, name="unet")  # (B, S, S, C)


def input_scaling(mean=None, variance=None) -> keras.layers.Layer:
    """Per-channel standardisation with the training pixels' statistics, or / 255."""
    if mean is None:
        return keras.layers.Rescaling(1.0 / 255.0, name="rescale")
    return keras.layers.Normalization(mean=mean, variance=variance, name="normalize")

