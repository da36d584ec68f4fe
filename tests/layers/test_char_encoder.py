"""char_ids on a hand-written example; CharCNN against a hand-computed case; CharBiLSTM
against keras.layers.Bidirectional(keras.layers.LSTM) with copied weights, word by word;
padding invariance, padding words, errors and the shared `run_layer_test` checks."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from layers.char_encoder import CharBiLSTM, CharCNN, char_ids
from tests.layers.testing import run_layer_test


def _np(x):
    return keras.ops.convert_to_numpy(x)


# Two sentences of three words: "abc", "b", padding / "ca", padding, padding.
IDS = np.array([[[1, 2, 3], [2, 0, 0], [0, 0, 0]], [[3, 1, 0], [0, 0, 0], [0, 0, 0]]])


def _pad_chars(ids, length):
    """The same words with more padding characters: (B, T, L) -> (B, T, length)."""
    return np.pad(ids, ((0, 0), (0, 0), (0, length - ids.shape[-1])))


# --- char_ids ----------------------------------------------------------------------


def test_char_ids_by_hand():
    words = tf.constant([["Zürich", "", "a"], ["日本", "abcdefgh", " "]])
    ids = _np(char_ids(words, max_word_length=4, num_chars=300))
    expected = np.array([
        [[ord("Z") + 1, ord("ü") + 1, ord("r") + 1, ord("i") + 1], [0, 0, 0, 0], [98, 0, 0, 0]],
        # CJK code points are above the table: the shared last id 299; "abcdefgh" is cut.
        [[299, 299, 0, 0], [98, 99, 100, 101], [ord(" ") + 1, 0, 0, 0]],
    ])
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, expected)


def test_char_ids_never_crash_on_bad_bytes_or_any_shape():
    ids = _np(char_ids(tf.constant([b"\xff\xfeA", b""]), max_word_length=3, num_chars=1024))
    # Invalid UTF-8 becomes U+FFFD, above the table: id 1023.
    np.testing.assert_array_equal(ids, [[1023, 1023, 66], [0, 0, 0]])
    assert char_ids(tf.zeros([0, 5], tf.string), 3).shape == (0, 5, 3)
    assert char_ids(tf.constant("word"), 2).shape == (2,)


def test_char_ids_in_a_graph_of_unknown_shape():
    graph = tf.function(lambda w: char_ids(w, 5),
                        input_signature=[tf.TensorSpec([None, None], tf.string)])
    words = tf.constant([["x", "hello!"], ["", "é"]])
    np.testing.assert_array_equal(_np(graph(words)), _np(char_ids(words, 5)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_word_length": 0},
         "max_word_length must be a positive int; received max_word_length=0"),
        ({"max_word_length": 3, "num_chars": 2},
         "num_chars must be an int >= 3; received num_chars=2"),
    ],
)
def test_char_ids_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        char_ids(tf.constant([["a"]]), **kwargs)


# --- CharCNN -----------------------------------------------------------------------


def test_char_cnn_equals_a_hand_computed_case():
    layer = CharCNN(num_chars=4, char_dim=2, filters=2, kernel_size=3, activation="linear")
    layer(IDS)
    embeddings = np.array([[9, 9], [1, 0], [0, 1], [1, 1]], "float32")  # row 0 is never used
    kernel = np.array([  # (width 3, E=2, F=2): left, centre, right neighbour
        [[1, 0], [0, 0]],
        [[0, 1], [2, 0]],
        [[0, 0], [1, -1]],
    ], "float32")
    bias = np.array([0.5, -0.5], "float32")
    layer.set_weights([embeddings, kernel, bias])

    def word_vector(chars):
        x = np.array([embeddings[c] for c in chars])  # (n, E)
        x = np.pad(x, ((1, 1), (0, 0)))  # zeros before and after the word
        conv = [sum(x[i + k] @ kernel[k] for k in range(3)) + bias for i in range(len(chars))]
        return np.max(conv, axis=0)

    # By hand: "b" = [2] is one window [0, e2, 0] = [0, 0 | 0, 1 | 0, 0] -> e2 @ centre + bias
    # = [2, 0] + [0.5, -0.5]; "ca" = [3, 1] has windows giving [2.5, 0.5] and [1.5, 0.5].
    np.testing.assert_allclose(word_vector([2]), [2.5, -0.5])
    np.testing.assert_allclose(word_vector([3, 1]), [2.5, 0.5])
    expected = np.zeros((2, 3, 2), "float32")
    expected[0, 0], expected[0, 1], expected[1, 0] = (word_vector([1, 2, 3]), word_vector([2]),
                                                      word_vector([3, 1]))
    np.testing.assert_allclose(_np(layer(IDS)), expected, atol=1e-6)


@pytest.mark.parametrize("cls, kwargs", [(CharCNN, {"filters": 5}), (CharBiLSTM, {"units": 3})])
def test_more_padding_characters_change_nothing(cls, kwargs):
    layer = cls(num_chars=4, char_dim=3, **kwargs)
    out = _np(layer(IDS))
    np.testing.assert_allclose(_np(layer(_pad_chars(IDS, 7))), out, atol=1e-6)
    # Padding words are zeros; a real word is not.
    np.testing.assert_array_equal(out[0, 2], 0.0)
    np.testing.assert_array_equal(out[1, 1:], 0.0)
    assert np.abs(out[0, 1]).sum() > 0


@pytest.mark.parametrize("cls, kwargs", [(CharCNN, {"filters": 5}), (CharBiLSTM, {"units": 3})])
def test_all_padding_input_is_finite_zero(cls, kwargs):
    out = _np(cls(num_chars=4, **kwargs)(np.zeros((2, 3, 4), "int32")))
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("cls", [CharCNN, CharBiLSTM])
def test_dropout_only_in_training_and_padding_words_stay_zero(cls):
    keras.utils.set_random_seed(1)
    layer = cls(num_chars=4, char_dim=8, dropout=0.5)
    plain = cls.from_config({**layer.get_config(), "dropout": 0.0})
    out = _np(layer(IDS))
    plain(IDS)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(_np(plain(IDS)), out, atol=1e-6)
    dropped = _np(layer(IDS, training=True))
    assert np.abs(dropped - out).max() > 1e-3
    np.testing.assert_array_equal(dropped[0, 2], 0.0)


# --- CharBiLSTM --------------------------------------------------------------------


def test_char_bilstm_equals_keras_bidirectional_lstm_per_word():
    layer = CharBiLSTM(num_chars=4, char_dim=3, units=5)
    layer(IDS)
    rng = np.random.default_rng(0)
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in layer.get_weights()])
    reference = keras.layers.Bidirectional(keras.layers.LSTM(5))
    reference(np.zeros((1, 2, 3), "float32"))
    weights = layer.get_weights()
    embeddings = weights[0]
    assert [w.shape for w in weights[1:]] == [w.shape for w in reference.get_weights()]
    reference.set_weights(weights[1:])  # forward kernels, then backward kernels
    out = _np(layer(IDS))
    for b, t, chars in [(0, 0, [1, 2, 3]), (0, 1, [2]), (1, 0, [3, 1])]:
        expected = reference(embeddings[chars][None])  # (1, 2U) over the unpadded word
        np.testing.assert_allclose(out[b, t], _np(expected)[0], atol=1e-5)


# --- shared checks -----------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, width",
    [
        (CharCNN, {"num_chars": 6, "char_dim": 4, "filters": 5, "kernel_size": 2}, 5),
        (CharBiLSTM, {"num_chars": 6, "char_dim": 4, "units": 3}, 6),
    ],
)
def test_run_layer_test(cls, kwargs, width, tmp_path):
    ids = _pad_chars(IDS, 4) + np.where(_pad_chars(IDS, 4) > 0, 2, 0)  # ids 3..5
    run_layer_test(cls, kwargs, ids, expected_output_shape=(2, 3, width), tmp_path=tmp_path)


def test_output_shape_and_symbolic_call():
    inputs = keras.Input((None, 7), dtype="int32")
    assert CharCNN(10, filters=8)(inputs).shape == (None, None, 8)
    assert CharBiLSTM(10, units=4)(inputs).shape == (None, None, 8)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (CharCNN, {"num_chars": 0}, "num_chars must be a positive int; received num_chars=0"),
        (CharCNN, {"num_chars": 5, "filters": "8"},
         "filters must be a positive int; received filters='8'"),
        (CharCNN, {"num_chars": 5, "kernel_size": 0}, "kernel_size must be a positive int"),
        (CharBiLSTM, {"num_chars": 5, "char_dim": 2.5},
         "char_dim must be a positive int; received char_dim=2.5"),
        (CharBiLSTM, {"num_chars": 5, "units": None},
         "units must be a positive int; received units=None"),
        (CharCNN, {"num_chars": 5, "dropout": 1.0},
         r"dropout must be a float in \[0, 1\); received dropout=1.0"),
    ],
)
def test_errors_name_the_argument(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_rank_error_names_char_ids():
    with pytest.raises(ValueError, match=r"char_ids must be \(B, T, L\) character ids of rank 3"):
        CharCNN(5)(np.zeros((2, 3), "int32"))


def test_saved_model_maps_raw_words_to_the_same_vectors(tmp_path):
    """char_ids inside an exported graph: raw words in, the in-process vectors out."""
    encoder = CharCNN(num_chars=64, char_dim=4, filters=3)
    words = tf.constant([["Hi", "zebra", ""], ["ünïcode", "x", "toolongword"]])
    expected = encoder(char_ids(words, 6, num_chars=64))

    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint("serving_default", lambda w: encoder(char_ids(w, 6, num_chars=64)),
                         input_signature=[tf.TensorSpec([None, None], tf.string)])
    archive.write_out(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(_np(served.serving_default(words)), _np(expected), atol=1e-6)


@pytest.mark.parametrize("cls, kwargs", [(CharCNN, {"filters": 8}), (CharBiLSTM, {"units": 8})])
def test_learns_a_spelling_rule_on_unseen_words(cls, kwargs):
    """Capitalised or not, from the characters alone: right on words never seen in training
    (which a word vocabulary cannot do)."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def words(count):
        out = ["".join(rng.choice(letters, size=rng.integers(2, 8))) for _ in range(count)]
        labels = rng.integers(0, 2, size=count)
        return [w.capitalize() if y else w for w, y in zip(out, labels)], labels

    train_words, train_labels = words(256)
    test_words, test_labels = words(160)
    unseen = [w.lower() not in {t.lower() for t in train_words} for w in test_words]
    test_words = [w for w, keep in zip(test_words, unseen) if keep]
    test_labels = test_labels[np.array(unseen)]
    assert len(test_words) > 100

    def ids(batch):
        return char_ids(tf.constant(batch)[:, None], 8, num_chars=128)  # (N, 1, 8)

    keras.utils.set_random_seed(0)
    encoder, head = cls(num_chars=128, char_dim=8, **kwargs), keras.layers.Dense(1)
    model = keras.Sequential([keras.Input((1, 8), dtype="int32"), encoder, head])
    model.compile(keras.optimizers.Adam(0.02), keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(ids(train_words), train_labels[:, None, None], batch_size=64, epochs=15, verbose=0)
    predicted = _np(model(ids(test_words)))[:, 0, 0] > 0
    assert np.mean(predicted == test_labels) > 0.95
