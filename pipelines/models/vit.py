"""`model=vit`: a Vision Transformer assembled from `layers/`.

`Vit(...)` is what the model group's `_target_` instantiates; tasks ask it for
`image_encoder(image_shape)`: images (B, H, W, C) -> the class token's final state (B, D),
or every token (B, 1 + N, D) with `pooled=False`.
"""
from __future__ import annotations

import keras
from keras import ops

import layers


class Vit:
    """Sizes of a ViT (Dosovitskiy et al., 2020) built from our blocks.

    `PatchEmbedding` cuts the image into `patch_size` squares, projects each one, prepends
    a learned class token and adds learned positions; pre-norm `TransformerEncoderBlock`s
    (GELU feed-forward) follow, then a final LayerNorm. With `shifted_patches`, each patch
    also sees its diagonal neighbours half a patch away (Shifted Patch Tokenization, Lee et
    al., 2021): a ViT trained from scratch on a few thousand images then learns local shape
    in far fewer steps.

    Args:
        patch_size: side of the square patches; must divide the image size.
        hidden_dim: token width D.
        num_heads: attention heads (must divide hidden_dim).
        intermediate_dim: feed-forward width.
        num_layers: encoder blocks.
        dropout: dropout on the embeddings, in every block and before the task head.
        shifted_patches: concatenate four diagonally shifted copies of the image to it
            before cutting patches (`ShiftedImages`).
    """

    # trainer.jit_compile=auto: XLA/graph train steps per second measured by
    # `python -m benchmarks jit_families` on this project's 2-core CPU: 1.17; 1.05 on
    # 2026-12-04 with layers.Dropout.
    xla_on_cpu = True

    def __init__(self, patch_size: int = 4, hidden_dim: int = 64, num_heads: int = 4,
                 intermediate_dim: int = 128, num_layers: int = 4, dropout: float = 0.0,
                 shifted_patches: bool = True):
        if hidden_dim % num_heads:
            raise ValueError(f"model.num_heads must divide model.hidden_dim; received "
                             f"hidden_dim={hidden_dim}, num_heads={num_heads}")
        if patch_size < 1 or num_layers < 1:
            raise ValueError(f"model.patch_size and model.num_layers must be >= 1; received "
                             f"patch_size={patch_size}, num_layers={num_layers}")
        self.patch_size, self.hidden_dim, self.num_heads = patch_size, hidden_dim, num_heads
        self.intermediate_dim, self.num_layers, self.dropout = intermediate_dim, num_layers, dropout
        self.shifted_patches = shifted_patches

    def image_encoder(self, image_shape: tuple[int, int, int], pooled: bool = True) -> keras.Model:
        """Images (B, H, W, C) -> class token (B, D), or all tokens (B, 1 + N, D)."""
        height, width = image_shape[0], image_shape[1]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"model.patch_size must divide the image size; received patch_size="
                f"{self.patch_size}, image size={height}x{width} (task.image_size)"
            )
        images = keras.Input(tuple(image_shape), name="images")
        x = images
        if self.shifted_patches:
            x = ShiftedImages(max(self.patch_size // 2, 1), name="shifted_images")(x)  # (B, H, W, 5C)
        x = layers.PatchEmbedding(self.patch_size, self.hidden_dim,
                                  name="patch_embedding")(x)  # (B, 1 + N, D)
        x = layers.Dropout(self.dropout)(x)
        for index in range(self.num_layers):
            x = layers.TransformerEncoderBlock(
                self.hidden_dim, self.num_heads, self.intermediate_dim, dropout=self.dropout,
                activation="gelu", normalize_first=True, name=f"encoder_{index}")(x)
        x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)
        if pooled:
            x = ClassToken(name="class_token")(x)  # (B, D)
        return keras.Model(images, x, name="vit_encoder")


@keras.saving.register_keras_serializable(package="pipelines")
class ClassToken(keras.layers.Layer):
    """The first token of a sequence: (B, T, D) -> (B, D)."""

    def call(self, x):
        return x[:, 0]

    def compute_output_shape(self, x_shape):
        return (x_shape[0], x_shape[2])


@keras.saving.register_keras_serializable(package="pipelines")
class ShiftedImages(keras.layers.Layer):
    """The image and four copies shifted diagonally by `shift` pixels (zeros fill in),
    stacked on the channel axis: (B, H, W, C) -> (B, H, W, 5C).

    Cut into patches afterwards, each patch holds its own pixels and those of its four
    diagonal neighbours: the Shifted Patch Tokenization of Lee et al., 2021
    (https://arxiv.org/abs/2112.13492).
    """

    def __init__(self, shift, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(shift, int) or shift <= 0:
            raise ValueError(f"shift must be a positive int; received shift={shift}")
        self.shift = shift

    def call(self, images):
        s, height, width = self.shift, images.shape[1], images.shape[2]
        padded = ops.pad(images, [[0, 0], [s, s], [s, s], [0, 0]])  # (B, H + 2s, W + 2s, C)
        shifted = [padded[:, s + dy:s + dy + height, s + dx:s + dx + width, :]
                   for dy, dx in ((-s, -s), (-s, s), (s, -s), (s, s))]
        return ops.concatenate([images, *shifted], axis=-1)

    def compute_output_shape(self, images_shape):
        return (*images_shape[:3], 5 * images_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"shift": self.shift})
        return config
