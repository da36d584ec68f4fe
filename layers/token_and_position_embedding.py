"""Token embedding merged with a position embedding, with a padding mask from id 0."""
import math

import keras
from keras import ops

from layers.learned_positional_embedding import LearnedPositionalEmbedding
from layers.sinusoidal_encoding import SinusoidalPositionalEncoding

_POSITIONAL = ("learned", "sinusoidal")
_MERGE = ("add", "concat")


@keras.saving.register_keras_serializable(package="layers")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Embeds token ids and their positions, and merges the two.

    With `merge="add"` the output is `token + position` with `embedding_dim`
    features (Vaswani et al.); with `merge="concat"` it is
    `concat([token, position])` with `2 * embedding_dim` features.

    Args:
        vocabulary_size: int, the number of token ids.
        sequence_length: int, the largest number of positions (the size of the
            learned table; an upper bound on `T` for sinusoidal encodings too).
        embedding_dim: int, the size of the token and of the position vectors.
        positional: `"learned"` (a trainable table) or `"sinusoidal"` (fixed
            sine/cosine encodings). Defaults to `"learned"`.
        merge: `"add"` or `"concat"`. Defaults to `"add"`.
        mask_zero: bool, whether id 0 is padding; the output then carries a
            `(B, T)` Keras mask that is `False` at id 0. Defaults to `True`.
        scale_embeddings: bool, multiply token vectors by `sqrt(embedding_dim)`
            before merging (Vaswani et al., section 3.4). Defaults to `False`.
        embeddings_initializer: initializer of both tables. Defaults to
            `"uniform"`, as `keras.layers.Embedding`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: int tensor `(B, T)` of token ids.
        start_index: int or scalar int tensor, the position of the first token
            (the current step in cached decoding). Defaults to `0`.

    Returns:
        A float tensor `(B, T, embedding_dim)` (`(B, T, 2 * embedding_dim)` with
        `merge="concat"`), with a `(B, T)` mask when `mask_zero=True`.

    Example:
    ```python
    embed = TokenAndPositionEmbedding(1000, sequence_length=32, embedding_dim=64)
    x = embed(np.array([[5, 7, 9, 0]]))  # (1, 4, 64), mask [[1, 1, 1, 0]]
    ```

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), section 3.4-3.5.
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        embedding_dim,
        positional="learned",
        merge="add",
        mask_zero=True,
        scale_embeddings=False,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("vocabulary_size", vocabulary_size),
            ("sequence_length", sequence_length),
            ("embedding_dim", embedding_dim),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int; received {name}={value}")
        if positional not in _POSITIONAL:
            raise ValueError(
                f"positional must be one of {_POSITIONAL}; received positional={positional!r}"
            )
        if merge not in _MERGE:
            raise ValueError(f"merge must be one of {_MERGE}; received merge={merge!r}")
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.embedding_dim = embedding_dim
        self.positional = positional
        self.merge = merge
        self.mask_zero = mask_zero
        self.scale_embeddings = scale_embeddings
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.supports_masking = mask_zero

    def build(self, inputs_shape):
        seq_length = inputs_shape[-1]
        if seq_length is not None and seq_length > self.sequence_length:
            raise ValueError(
                "the input length must not exceed sequence_length; received "
                f"input length={seq_length}, sequence_length={self.sequence_length}"
            )
        # The mask is computed here from the ids, so the inner Embedding needs none.
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            self.embedding_dim,
            embeddings_initializer=self._clone_initializer(),
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.token_embedding.build(inputs_shape)
        if self.positional == "learned":
            self.position_embedding = LearnedPositionalEmbedding(
                self.sequence_length,
                initializer=self._clone_initializer(),
                dtype=self.dtype_policy,
                name="position_embedding",
            )
        else:
            self.position_embedding = SinusoidalPositionalEncoding(
                dtype=self.dtype_policy, name="position_embedding"
            )
        self.position_embedding.build(tuple(inputs_shape) + (self.embedding_dim,))

    def _clone_initializer(self):
        return self.embeddings_initializer.__class__.from_config(
            self.embeddings_initializer.get_config()
        )

    def call(self, inputs, start_index=0):
        tokens = self.token_embedding(inputs)  # (B, T, D)
        if self.scale_embeddings:
            tokens = tokens * ops.cast(math.sqrt(self.embedding_dim), tokens.dtype)
        positions = self.position_embedding(tokens, start_index=start_index)  # (B, T, D)
        if self.merge == "concat":
            return ops.concatenate([tokens, positions], axis=-1)  # (B, T, 2D)
        return tokens + positions  # (B, T, D)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)  # (B, T)

    def compute_output_shape(self, inputs_shape):
        width = 2 * self.embedding_dim if self.merge == "concat" else self.embedding_dim
        return tuple(inputs_shape) + (width,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "embedding_dim": self.embedding_dim,
                "positional": self.positional,
                "merge": self.merge,
                "mask_zero": self.mask_zero,
                "scale_embeddings": self.scale_embeddings,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config
