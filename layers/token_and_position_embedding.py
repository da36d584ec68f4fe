"""Token (+ segment) embedding merged with a position embedding; padding mask from id 0."""
import math

import keras
from keras import ops

from layers.learned_positional_embedding import LearnedPositionalEmbedding
from layers.multi_head_attention import check_positive_int
from layers.reversible_embedding import ReversibleEmbedding
from layers.sinusoidal_encoding import SinusoidalPositionalEncoding
from layers.transformer_encoder import clone_initializer

_POSITIONAL = ("learned", "sinusoidal")
_MERGE = ("add", "concat")


@keras.saving.register_keras_serializable(package="layers")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Embeds token ids (and segment ids) and their positions, and merges them.

    The token vector (times `sqrt(embedding_dim)` with `scale_embeddings`) plus,
    with `num_segments`, a segment vector (BERT's sentence A/B embedding) is
    merged with the position vector:
    - `merge="add"`: `token + segment + position`, `embedding_dim` features
      (Vaswani et al.; Devlin et al.);
    - `merge="concat"`: `concat([token + segment, position])`,
      `embedding_dim + position_dim` features.

    The token embedding, `self.token_embedding`, is a `ReversibleEmbedding` that
    exists from construction on, so a model ties its output layer to it:
    `embedding.token_embedding(hidden, reverse=True)` maps `(B, T, embedding_dim)`
    hidden states to `(B, T, vocabulary_size)` logits. With `merge="concat"` the
    hidden states are `embedding_dim + position_dim` wide: project them to
    `embedding_dim` first (`MaskedLMHead` does).

    Args:
        vocabulary_size: int, the number of token ids.
        sequence_length: int, the largest number of positions (the size of the
            learned table; an upper bound on `T` for sinusoidal encodings too).
        embedding_dim: int, the size of the token (and segment) vectors.
        positional: `"learned"` (a trainable table) or `"sinusoidal"` (fixed
            sine/cosine encodings). Defaults to `"learned"`.
        merge: `"add"` or `"concat"`. Defaults to `"add"`.
        mask_zero: bool, whether id 0 is padding; the output then carries a
            `(B, T)` Keras mask that is `False` at id 0. Defaults to `True`.
        scale_embeddings: bool, multiply token vectors by `sqrt(embedding_dim)`
            before merging (Vaswani et al., section 3.4). Defaults to `False`.
        embeddings_initializer: initializer of every table. Defaults to
            `"uniform"`, as `keras.layers.Embedding`.
        num_segments: optional int, the number of segment ids (2 for BERT's
            sentence pairs); `None` or `0` means no segment embedding. Defaults
            to `None`.
        position_dim: optional int, the size of the position vectors with
            `merge="concat"`; `None` means `embedding_dim`. With `merge="add"` it
            must be `None` or `embedding_dim`. Defaults to `None`.
        reverse_dtype: optional dtype of the tied output projection
            `token_embedding(x, reverse=True)`; `"float32"` gives float32 logits
            under mixed precision. Defaults to `None` (the compute dtype).
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: int tensor `(B, T)` of token ids.
        start_index: int or scalar int tensor, the position of the first token
            (the current step in cached decoding). Defaults to `0`.
        segment_ids: int tensor `(B, T)` of segment ids in `[0, num_segments)`;
            only with `num_segments`. Defaults to all zeros (one segment).

    Returns:
        A float tensor `(B, T, embedding_dim)` (`(B, T, embedding_dim +
        position_dim)` with `merge="concat"`), with a `(B, T)` mask when
        `mask_zero=True`.

    Example:
    ```python
    embed = TokenAndPositionEmbedding(1000, sequence_length=32, embedding_dim=64)
    x = embed(np.array([[5, 7, 9, 0]]))  # (1, 4, 64), mask [[1, 1, 1, 0]]
    bert = TokenAndPositionEmbedding(1000, 32, 64, num_segments=2)
    x = bert(ids, segment_ids=segments)  # token + segment + position
    logits = bert.token_embedding(hidden, reverse=True)  # (B, T, 1000), tied
    ```

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), section 3.4-3.5;
        [Devlin et al., 2019](https://arxiv.org/abs/1810.04805), section 3 (segments);
        [Press & Wolf, 2016](https://arxiv.org/abs/1608.05859) (tied output).
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
        num_segments=None,
        position_dim=None,
        reverse_dtype=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("vocabulary_size", vocabulary_size),
            ("sequence_length", sequence_length),
            ("embedding_dim", embedding_dim),
        ):
            check_positive_int(name, value)
        check_positive_int("num_segments", num_segments or None, allow_none=True)
        check_positive_int("position_dim", position_dim, allow_none=True)
        if positional not in _POSITIONAL:
            raise ValueError(
                f"positional must be one of {_POSITIONAL}; received positional={positional!r}"
            )
        if merge not in _MERGE:
            raise ValueError(f"merge must be one of {_MERGE}; received merge={merge!r}")
        if merge == "add" and position_dim not in (None, embedding_dim):
            raise ValueError(
                "merge='add' needs position_dim=None or position_dim == embedding_dim; "
                f"received position_dim={position_dim}, embedding_dim={embedding_dim}"
            )
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.embedding_dim = embedding_dim
        self.positional = positional
        self.merge = merge
        self.mask_zero = mask_zero
        self.scale_embeddings = scale_embeddings
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.num_segments = num_segments
        self.position_dim = position_dim
        self.reverse_dtype = reverse_dtype
        self.supports_masking = mask_zero
        # Made here, not in `build`, so that a model can tie a head to it in its
        # own `__init__`. It clones its initializer in its `build`, so seeded
        # weights are drawn in the same order as before it existed. The mask is
        # computed here from the ids, so the inner embedding needs none.
        self.token_embedding = ReversibleEmbedding(
            vocabulary_size,
            embedding_dim,
            embeddings_initializer=self.embeddings_initializer,
            reverse_dtype=reverse_dtype,
            dtype=self.dtype_policy,
            name="token_embedding",
        )

    @property
    def output_dim(self):
        """The number of output features: `embedding_dim`, plus `position_dim` with concat."""
        if self.merge == "add":
            return self.embedding_dim
        return self.embedding_dim + (self.position_dim or self.embedding_dim)

    def build(self, inputs_shape):
        seq_length = inputs_shape[-1]
        if seq_length is not None and seq_length > self.sequence_length:
            raise ValueError(
                "the input length must not exceed sequence_length; received "
                f"input length={seq_length}, sequence_length={self.sequence_length}"
            )
        self.token_embedding.build(inputs_shape)
        if self.num_segments:
            self.segment_embedding = keras.layers.Embedding(
                self.num_segments,
                self.embedding_dim,
                embeddings_initializer=clone_initializer(self.embeddings_initializer),
                dtype=self.dtype_policy,
                name="segment_embedding",
            )
            self.segment_embedding.build(inputs_shape)
        if self.positional == "learned":
            self.position_embedding = LearnedPositionalEmbedding(
                self.sequence_length,
                initializer=clone_initializer(self.embeddings_initializer),
                dtype=self.dtype_policy,
                name="position_embedding",
            )
        else:
            self.position_embedding = SinusoidalPositionalEncoding(
                dtype=self.dtype_policy, name="position_embedding"
            )
        position_dim = self.position_dim or self.embedding_dim
        self.position_embedding.build(tuple(inputs_shape) + (position_dim,))

    def call(self, inputs, start_index=0, segment_ids=None):
        tokens = self.token_embedding(inputs)  # (B, T, D)
        if self.scale_embeddings:
            tokens = tokens * ops.cast(math.sqrt(self.embedding_dim), tokens.dtype)
        if self.num_segments:
            if segment_ids is None:
                segment_ids = ops.zeros_like(inputs)
            tokens = tokens + self.segment_embedding(segment_ids)  # (B, T, D)
        elif segment_ids is not None:
            raise ValueError(
                "segment_ids needs num_segments; received segment_ids with "
                f"num_segments={self.num_segments}"
            )
        positions = self.position_embedding(
            self._position_shaped(tokens), start_index=start_index
        )  # (B, T, P)
        if self.merge == "concat":
            return ops.concatenate([tokens, positions], axis=-1)  # (B, T, D + P)
        return tokens + positions  # (B, T, D)

    def _position_shaped(self, tokens):
        # The position layers read only the shape of their input.
        if self.position_dim in (None, self.embedding_dim):
            return tokens
        shape = ops.shape(tokens)
        return ops.zeros((shape[0], shape[1], self.position_dim), tokens.dtype)  # (B, T, P)

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)  # (B, T)

    def compute_output_shape(self, inputs_shape):
        return tuple(inputs_shape) + (self.output_dim,)

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
                "num_segments": self.num_segments,
                "position_dim": self.position_dim,
                "reverse_dtype": self.reverse_dtype,
            }
        )
        return config
