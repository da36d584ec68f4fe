"""Image to a sequence of patch embeddings with a class token (ViT)."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="layers")
class PatchEmbedding(keras.layers.Layer):
    """Cuts an image into `patch_size` squares and embeds each one (ViT).

    A conv with kernel and stride `patch_size` is the linear patch projection;
    a learned class token is prepended and a learned position embedding is
    added to every token.

    Args:
        patch_size: int, side of the square patches. The image height and width
            must be multiples of it.
        hidden_dim: int, the size of each patch embedding.
        use_class_token: bool, prepend a learned `[CLS]` token. Defaults to
            `True`.
        kernel_initializer: initializer of the patch projection. Defaults to
            `"glorot_uniform"`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        images: float tensor `(B, H, W, C)` with static `H`, `W`.

    Returns:
        A tensor `(B, N + 1, hidden_dim)` with the class token first, or
        `(B, N, hidden_dim)` without one, where `N = (H / p) * (W / p)`.

    Example:
    ```python
    embed = PatchEmbedding(patch_size=4, hidden_dim=64)
    tokens = embed(np.zeros((2, 32, 32, 3), "float32"))  # (2, 65, 64)
    ```

    Reference:
        [Dosovitskiy et al., 2020](https://arxiv.org/abs/2010.11929), section 3.1.
    """

    def __init__(
        self,
        patch_size,
        hidden_dim,
        use_class_token=True,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("patch_size", patch_size), ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int; received {name}={value}")
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.use_class_token = use_class_token
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, images_shape):
        height, width = images_shape[1], images_shape[2]
        if height is None or width is None or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                "the image height and width must be known multiples of patch_size; "
                f"received image size=({height}, {width}), patch_size={self.patch_size}"
            )
        self.num_patches = (height // self.patch_size) * (width // self.patch_size)
        self.projection = keras.layers.Conv2D(
            self.hidden_dim,
            self.patch_size,
            strides=self.patch_size,
            padding="valid",
            kernel_initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()
            ),
            dtype=self.dtype_policy,
            name="projection",
        )
        self.projection.build(images_shape)
        num_tokens = self.num_patches + int(self.use_class_token)
        if self.use_class_token:
            self.class_token = self.add_weight(
                name="class_token", shape=(1, 1, self.hidden_dim), initializer="zeros"
            )
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=(1, num_tokens, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, images):
        x = self.projection(images)  # (B, H / p, W / p, D)
        x = ops.reshape(x, (-1, self.num_patches, self.hidden_dim))  # (B, N, D)
        if self.use_class_token:
            class_token = ops.cast(self.class_token, x.dtype)  # (1, 1, D)
            class_token = ops.broadcast_to(class_token, (ops.shape(x)[0], 1, self.hidden_dim))
            x = ops.concatenate([class_token, x], axis=1)  # (B, N + 1, D)
        return x + ops.cast(self.position_embedding, x.dtype)

    def compute_output_shape(self, images_shape):
        patches = (images_shape[1] // self.patch_size) * (images_shape[2] // self.patch_size)
        return (images_shape[0], patches + int(self.use_class_token), self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "use_class_token": self.use_class_token,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
