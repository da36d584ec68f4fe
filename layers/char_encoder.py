"""Character-level word features: `char_ids` (strings to character ids, in the graph) and
two encoders of a word's characters into one vector, `CharCNN` and `CharBiLSTM`.

Character ids are `(B, T, L)` int32, L = max_word_length, each word's characters from
position 0 and id 0 at padding (after the word, and everywhere for a padding word). The
encoders fold `(B, T)` into one batch of B*T words, encode each word over its valid
characters only, and unfold to `(B, T, D)`; a padding word (no valid character) gives a
zero vector, so the output does not depend on L or on how much padding there is.
"""
import keras
import tensorflow as tf
from keras import ops

from layers.bidirectional import Bidirectional
from layers.dropout import Dropout
from layers.masking import large_negative
from layers.rnn import LSTM

# Ids 1 .. NUM_CHARS - 2 are code points 0 .. NUM_CHARS - 3 (Basic Latin up to Greek);
# every higher code point shares the last id.
DEFAULT_NUM_CHARS = 1024


def _check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int; received {name}={value!r}")


def char_ids(words, max_word_length, num_chars=DEFAULT_NUM_CHARS):
    """Maps words to character ids with TensorFlow ops only (usable in tf.data and exports).

    Each word is decoded as UTF-8 into Unicode code points (invalid bytes become U+FFFD,
    never an error), cut to its first `max_word_length` characters, and code point `c`
    becomes id `min(c, num_chars - 2) + 1`: 0 is padding, ids 1 .. num_chars - 2 are code
    points 0 .. num_chars - 3, and id `num_chars - 1` stands for every rarer character.
    The empty string (a padding word) is all padding.

    Args:
        words: string tensor of any shape, e.g. `(B, T)` words with "" at padding.
        max_word_length: int, L; longer words are cut.
        num_chars: int >= 3, the size of the id table (the `num_chars` of `CharCNN` and
            `CharBiLSTM`). Defaults to `1024`.

    Returns:
        int32 tensor `words.shape + (L,)`, right-padded with 0.

    Example:
    >>> char_ids(tf.constant([["Zürich", ""]]), max_word_length=4)
    # [[[91, 253, 115, 106], [0, 0, 0, 0]]]   (Z, ü, r, i; the padding word)
    """
    _check_positive_int("max_word_length", max_word_length)
    if not isinstance(num_chars, int) or isinstance(num_chars, bool) or num_chars < 3:
        raise ValueError(f"num_chars must be an int >= 3; received num_chars={num_chars!r}")
    words = tf.convert_to_tensor(words, tf.string)
    flat = tf.reshape(words, [-1])  # (N,)
    code_points = tf.strings.unicode_decode(flat, "UTF-8", errors="replace")  # ragged (N, None)
    code_points = code_points[:, :max_word_length]
    ids = tf.ragged.map_flat_values(lambda c: tf.minimum(c, num_chars - 2) + 1, code_points)
    dense = ids.to_tensor(default_value=0, shape=[None, max_word_length])  # (N, L)
    return tf.reshape(dense, tf.concat([tf.shape(words), [max_word_length]], axis=0))


class _CharEncoder(keras.layers.Layer):
    """What both encoders share: argument checks, the character embedding, folding
    `(B, T, L)` into `(B*T, L)` words and back, and the config."""

    def __init__(self, num_chars, char_dim, dropout, embeddings_initializer, **kwargs):
        super().__init__(**kwargs)
        _check_positive_int("num_chars", num_chars)
        _check_positive_int("char_dim", char_dim)
        is_rate = isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
        if not is_rate or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a float in [0, 1); received dropout={dropout!r}")
        self.num_chars = num_chars
        self.char_dim = char_dim
        self.dropout = dropout
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def _build_embedding(self, char_ids_shape):
        if len(char_ids_shape) != 3:
            raise ValueError(
                "char_ids must be (B, T, L) character ids of rank 3; received char_ids with "
                f"shape {tuple(char_ids_shape)}"
            )
        self.embedding = keras.layers.Embedding(
            self.num_chars,
            self.char_dim,
            embeddings_initializer=self.embeddings_initializer,
            dtype=self.dtype_policy,
            name="char_embedding",
        )
        self.embedding.build((None, char_ids_shape[-1]))
        self.embedding_dropout = Dropout(self.dropout, dtype=self.dtype_policy, name="char_dropout")

    def call(self, char_ids, training=None):
        shape = ops.shape(char_ids)  # (B, T, L)
        words = ops.reshape(char_ids, (-1, shape[-1]))  # (B*T, L)
        valid = ops.not_equal(words, 0)  # (B*T, L)
        chars = self.embedding(words)  # (B*T, L, E)
        chars = self.embedding_dropout(chars, training=training)
        encoded = self._encode(chars, valid, training)  # (B*T, D)
        return ops.reshape(encoded, (shape[0], shape[1], self.output_dim))  # (B, T, D)

    def compute_output_shape(self, char_ids_shape):
        return (*char_ids_shape[:2], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_chars": self.num_chars,
                "char_dim": self.char_dim,
                "dropout": self.dropout,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="layers")
class CharCNN(_CharEncoder):
    """A word vector from its characters: embedding -> Conv1D -> max over valid characters.

    The convolution uses `"same"` padding over the characters, with the embeddings of
    padded characters set to zero, so a window at the word's edge sees zeros past it
    whatever L is; the max is taken over the word's characters only.

    Args:
        num_chars: int, the size of the character id table (`char_ids`'s `num_chars`).
        char_dim: int, the character embedding size. Defaults to `30`.
        filters: int, D, the number of convolution filters (the output size).
            Defaults to `30`.
        kernel_size: int, the convolution width in characters. Defaults to `3`.
        activation: the convolution's activation. Defaults to `"tanh"`.
        dropout: float in [0, 1), dropout on the character embeddings in training.
            Defaults to `0.0`.
        embeddings_initializer: initializer of the character embedding.
            Defaults to `"uniform"`.
        kernel_initializer, bias_initializer: of the convolution. Default to
            `"glorot_uniform"` and `"zeros"`.

    Call arguments:
        char_ids: `(B, T, L)` int, character ids with 0 at padding.
        training: bool, whether the embedding dropout is active.

    Returns:
        `(B, T, filters)`; zeros for a word without characters.

    Example:
    >>> cnn = CharCNN(num_chars=1024, char_dim=30, filters=30)
    >>> vectors = cnn(char_ids(words, max_word_length=20))  # (B, T, 30)

    Reference: Ma & Hovy, https://arxiv.org/abs/1603.01354 (2016); Chiu & Nichols,
    https://arxiv.org/abs/1511.08308 (2016).
    """

    def __init__(
        self,
        num_chars,
        char_dim=30,
        filters=30,
        kernel_size=3,
        activation="tanh",
        dropout=0.0,
        embeddings_initializer="uniform",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(num_chars, char_dim, dropout, embeddings_initializer, **kwargs)
        _check_positive_int("filters", filters)
        _check_positive_int("kernel_size", kernel_size)
        self.filters = filters
        self.kernel_size = kernel_size
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    @property
    def output_dim(self):
        return self.filters

    def build(self, char_ids_shape):
        self._build_embedding(char_ids_shape)
        self.conv = keras.layers.Conv1D(
            self.filters,
            self.kernel_size,
            padding="same",
            activation=self.activation,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
            name="char_conv",
        )
        self.conv.build((None, char_ids_shape[-1], self.char_dim))

    def _encode(self, chars, valid, training):
        chars = chars * ops.cast(valid[..., None], chars.dtype)  # (N, L, E), zeros past the word
        features = self.conv(chars)  # (N, L, F)
        features = ops.where(valid[..., None], features, large_negative(features.dtype))
        pooled = ops.max(features, axis=1)  # (N, F)
        return ops.where(ops.any(valid, axis=1)[:, None], pooled, ops.zeros_like(pooled))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="layers")
class CharBiLSTM(_CharEncoder):
    """A word vector from its characters: embedding -> bidirectional LSTM, final states.

    Our `layers.Bidirectional(layers.LSTM(units))` runs over each word's valid characters
    (a padding mask): the output is the forward LSTM's `h` after the last character
    concatenated with the backward LSTM's `h` after the first one.

    Args:
        num_chars: int, the size of the character id table (`char_ids`'s `num_chars`).
        char_dim: int, the character embedding size. Defaults to `25`.
        units: int, U, the LSTM size of each direction; the output has 2U.
            Defaults to `25`.
        dropout: float in [0, 1), dropout on the character embeddings in training.
            Defaults to `0.0`.
        embeddings_initializer: initializer of the character embedding.
            Defaults to `"uniform"`.

    Call arguments:
        char_ids: `(B, T, L)` int, character ids with 0 at padding.
        training: bool, whether the embedding dropout is active.

    Returns:
        `(B, T, 2 * units)`; zeros for a word without characters.

    Example:
    >>> lstm = CharBiLSTM(num_chars=1024, char_dim=25, units=25)
    >>> vectors = lstm(char_ids(words, max_word_length=20))  # (B, T, 50)

    Reference: Lample et al., https://arxiv.org/abs/1603.01360 (2016).
    """

    def __init__(
        self,
        num_chars,
        char_dim=25,
        units=25,
        dropout=0.0,
        embeddings_initializer="uniform",
        **kwargs,
    ):
        super().__init__(num_chars, char_dim, dropout, embeddings_initializer, **kwargs)
        _check_positive_int("units", units)
        self.units = units

    @property
    def output_dim(self):
        return 2 * self.units

    def build(self, char_ids_shape):
        self._build_embedding(char_ids_shape)
        self.encoder = Bidirectional(LSTM(self.units), dtype=self.dtype_policy, name="char_bilstm")
        self.encoder.build((None, char_ids_shape[-1], self.char_dim))

    def _encode(self, chars, valid, training):
        return self.encoder(chars, padding_mask=valid, training=training)  # (N, 2U)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units})
        return config
