"""SinusoidalPositionalEncoding, LearnedPositionalEmbedding, TokenAndPositionEmbedding."""
import keras
import keras_hub
import numpy as np
import pytest
from keras.src.backend import get_keras_mask  # the accessor layers/masking.py uses

from layers.learned_positional_embedding import LearnedPositionalEmbedding
from layers.sinusoidal_encoding import SinusoidalPositionalEncoding
from layers.token_and_position_embedding import TokenAndPositionEmbedding
from tests.layers.testing import run_layer_test


def numpy_sinusoid(length, dim, max_wavelength=10000.0, start=0):
    """Vaswani et al. 3.5, written out: PE[pos, 2i] = sin, PE[pos, 2i+1] = cos."""
    pe = np.zeros((length, dim))
    for pos in range(start, start + length):
        for i in range(0, dim, 2):
            angle = pos / max_wavelength ** (i / dim)
            pe[pos - start, i] = np.sin(angle)
            if i + 1 < dim:
                pe[pos - start, i + 1] = np.cos(angle)
    return pe


IDS = np.array([[5, 7, 9, 0, 0], [3, 1, 4, 1, 5]], dtype="int32")  # (B=2, T=5)


# --- SinusoidalPositionalEncoding -------------------------------------------------


@pytest.mark.parametrize("dim", [16, 7])
def test_sinusoidal_equals_numpy_formula(dim):
    x = np.zeros((2, 50, dim), "float32")
    out = keras.ops.convert_to_numpy(SinusoidalPositionalEncoding()(x))
    assert out.shape == (2, 50, dim)
    np.testing.assert_allclose(out[0], numpy_sinusoid(50, dim), atol=1e-6)
    np.testing.assert_allclose(out[1], out[0])


def test_sinusoidal_start_index_is_a_slice_of_the_full_encoding():
    layer = SinusoidalPositionalEncoding(max_wavelength=100)
    full = keras.ops.convert_to_numpy(layer(np.zeros((1, 12, 8), "float32")))
    step = keras.ops.convert_to_numpy(
        layer(np.zeros((1, 1, 8), "float32"), start_index=keras.ops.convert_to_tensor(7))
    )
    np.testing.assert_allclose(step[0, 0], full[0, 7], atol=1e-6)
    np.testing.assert_allclose(full[0], numpy_sinusoid(12, 8, 100.0), atol=1e-6)


def test_sinusoidal_run_layer_test(tmp_path):
    run_layer_test(
        SinusoidalPositionalEncoding,
        {"max_wavelength": 500},
        np.random.rand(2, 6, 8).astype("float32"),
        expected_output_shape=(2, 6, 8),
        tmp_path=tmp_path,
    )


def test_sinusoidal_rejects_bad_wavelength():
    with pytest.raises(ValueError, match="max_wavelength must be a positive number; received max_wavelength=0"):
        SinusoidalPositionalEncoding(max_wavelength=0)


# --- LearnedPositionalEmbedding ---------------------------------------------------


def test_learned_start_index_slices_the_table():
    layer = LearnedPositionalEmbedding(sequence_length=10)
    full = keras.ops.convert_to_numpy(layer(np.zeros((2, 10, 4), "float32")))
    table = keras.ops.convert_to_numpy(layer.embeddings)
    np.testing.assert_allclose(full[1], table)
    step = layer(np.zeros((2, 1, 4), "float32"), start_index=keras.ops.convert_to_tensor(6))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(step)[:, 0], table[[6, 6]])


def test_learned_traces_with_an_open_length():
    import tensorflow as tf

    layer = LearnedPositionalEmbedding(sequence_length=10)
    layer.build((None, None, 4))
    traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None, 4])])
    out = traced(tf.zeros((2, 7, 4))).numpy()
    np.testing.assert_allclose(out[0], keras.ops.convert_to_numpy(layer.embeddings)[:7])


def test_learned_rejects_too_long_inputs():
    with pytest.raises(ValueError, match="input length=12, sequence_length=10"):
        LearnedPositionalEmbedding(sequence_length=10)(np.zeros((1, 12, 4), "float32"))


def test_learned_run_layer_test(tmp_path):
    run_layer_test(
        LearnedPositionalEmbedding,
        {"sequence_length": 8},
        np.random.rand(2, 6, 4).astype("float32"),
        expected_output_shape=(2, 6, 4),
        tmp_path=tmp_path,
    )


# --- TokenAndPositionEmbedding ----------------------------------------------------


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
@pytest.mark.parametrize("merge, width", [("add", 8), ("concat", 16)])
def test_token_and_position_shapes(positional, merge, width, tmp_path):
    run_layer_test(
        TokenAndPositionEmbedding,
        {
            "vocabulary_size": 11,
            "sequence_length": 6,
            "embedding_dim": 8,
            "positional": positional,
            "merge": merge,
            "scale_embeddings": merge == "add",
        },
        IDS,
        expected_output_shape=(2, 5, width),
        tmp_path=tmp_path,
    )


def test_token_and_position_values():
    layer = TokenAndPositionEmbedding(11, 6, 8, positional="sinusoidal", scale_embeddings=True)
    out = keras.ops.convert_to_numpy(layer(IDS))
    tokens = keras.ops.convert_to_numpy(layer.token_embedding.embeddings)[IDS]
    np.testing.assert_allclose(out, tokens * np.sqrt(8) + numpy_sinusoid(5, 8), atol=1e-6)

    concat = TokenAndPositionEmbedding(11, 6, 8, merge="concat")
    out = keras.ops.convert_to_numpy(concat(IDS))
    np.testing.assert_allclose(out[..., :8], keras.ops.convert_to_numpy(concat.token_embedding.embeddings)[IDS])
    np.testing.assert_allclose(out[0, :, 8:], keras.ops.convert_to_numpy(concat.position_embedding.embeddings)[:5])


def test_token_and_position_mask_propagates_from_id_zero():
    expected = IDS != 0
    layer = TokenAndPositionEmbedding(11, 6, 8)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.compute_mask(IDS)), expected)

    # Eager call: the mask rides on the output and the next layer receives it.
    class Probe(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.supports_masking = True

        def call(self, x, mask=None):
            self.seen = mask
            return x

    probe = Probe()
    probe(layer(IDS))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(probe.seen), expected)

    # Functional model: the mask reaches a masked average downstream.
    inputs = keras.Input((5,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(TokenAndPositionEmbedding(11, 6, 8, merge="concat")(inputs))
    model = keras.Model(inputs, pooled)
    embed = model.layers[1]
    full = keras.ops.convert_to_numpy(embed(IDS))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(IDS))[0], full[0, :3].mean(0), atol=1e-6)

    no_mask = TokenAndPositionEmbedding(11, 6, 8, mask_zero=False)
    assert no_mask.compute_mask(IDS) is None


def test_token_and_position_start_index_matches_full_pass():
    layer = TokenAndPositionEmbedding(11, 6, 8)
    full = keras.ops.convert_to_numpy(layer(IDS))
    for t in range(IDS.shape[1]):
        step = layer(IDS[:, t : t + 1], start_index=keras.ops.convert_to_tensor(t))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(step)[:, 0], full[:, t], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"positional": "rotary"}, "positional must be one of .*received positional='rotary'"),
        ({"merge": "mul"}, "merge must be one of .*received merge='mul'"),
        ({"embedding_dim": 0}, "embedding_dim must be a positive int; received embedding_dim=0"),
    ],
)
def test_token_and_position_errors(kwargs, message):
    args = {"vocabulary_size": 11, "sequence_length": 6, "embedding_dim": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        TokenAndPositionEmbedding(**args)


# --- TokenAndPositionEmbedding: keras-hub, segments, concat width, tied output ------

SEGMENTS = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], dtype="int32")  # (B, T)


def _table(layer):
    return keras.ops.convert_to_numpy(layer.embeddings)


def _randomize(layer):
    """Random values in every table, so that a swapped or unused table would show."""
    for w in layer.weights:
        w.assign(np.random.default_rng(1).normal(size=w.shape).astype("float32"))


def test_token_and_position_equals_keras_hub_with_copied_weights():
    ours = TokenAndPositionEmbedding(11, 6, 8, mask_zero=True)
    hub = keras_hub.layers.TokenAndPositionEmbedding(11, 6, 8, mask_zero=True)
    ours(IDS)
    hub(IDS)
    _randomize(hub)
    assert [w.path.split("/", 1)[1] for w in ours.weights] == [
        w.path.split("/", 1)[1] for w in hub.weights
    ]
    ours.set_weights(hub.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(IDS)), keras.ops.convert_to_numpy(hub(IDS)), atol=1e-6)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(ours.compute_mask(IDS)),
        keras.ops.convert_to_numpy(get_keras_mask(hub(IDS))),
    )
    step = keras.ops.convert_to_tensor(3)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(IDS[:, 3:4], start_index=step)),
        keras.ops.convert_to_numpy(hub(IDS[:, 3:4], start_index=step)),
        atol=1e-6,
    )
    # The tied output projection equals keras-hub's too.
    hidden = np.random.default_rng(2).normal(size=(2, 5, 8)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours.token_embedding(hidden, reverse=True)),
        keras.ops.convert_to_numpy(hub.token_embedding(hidden, reverse=True)),
        atol=1e-5,
    )


@pytest.mark.parametrize("merge", ["add", "concat"])
def test_segments_equal_a_manual_sum_with_copied_tables(merge):
    layer = TokenAndPositionEmbedding(11, 6, 8, merge=merge, num_segments=2, position_dim=None)
    layer(IDS, segment_ids=SEGMENTS)
    _randomize(layer)
    out = keras.ops.convert_to_numpy(layer(IDS, segment_ids=SEGMENTS))
    tokens = _table(layer.token_embedding)[IDS] + _table(layer.segment_embedding)[SEGMENTS]
    positions = np.broadcast_to(_table(layer.position_embedding)[:5], tokens.shape)
    expected = tokens + positions if merge == "add" else np.concatenate([tokens, positions], -1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # No segment_ids means segment 0 everywhere.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(IDS)),
        keras.ops.convert_to_numpy(layer(IDS, segment_ids=np.zeros_like(SEGMENTS))),
    )
    # Segments change the output, and the mask still comes from the ids alone.
    assert not np.allclose(out, keras.ops.convert_to_numpy(layer(IDS)))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.compute_mask(IDS)), IDS != 0)


def test_segments_run_layer_test(tmp_path):
    run_layer_test(
        TokenAndPositionEmbedding,
        {"vocabulary_size": 11, "sequence_length": 6, "embedding_dim": 8, "num_segments": 3},
        IDS,
        call_kwargs={"segment_ids": SEGMENTS * 2},
        expected_output_shape=(2, 5, 8),
        tmp_path=tmp_path,
    )


def test_segments_off_by_default_and_with_zero():
    for num_segments in (None, 0):
        layer = TokenAndPositionEmbedding(11, 6, 8, num_segments=num_segments)
        layer(IDS)
        assert len(layer.weights) == 2  # token and position tables only
        with pytest.raises(ValueError, match="segment_ids needs num_segments"):
            layer(IDS, segment_ids=SEGMENTS)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_concat_with_its_own_position_width(positional, tmp_path):
    init = {"vocabulary_size": 11, "sequence_length": 6, "embedding_dim": 8,
            "positional": positional, "merge": "concat", "position_dim": 4}
    layer, out = run_layer_test(
        TokenAndPositionEmbedding, init, IDS, expected_output_shape=(2, 5, 12), tmp_path=tmp_path
    )
    assert layer.output_dim == 12
    out = keras.ops.convert_to_numpy(out)
    np.testing.assert_allclose(out[..., :8], _table(layer.token_embedding)[IDS], atol=1e-6)
    if positional == "learned":
        assert _table(layer.position_embedding).shape == (6, 4)
        expected_positions = _table(layer.position_embedding)[:5]
    else:
        expected_positions = numpy_sinusoid(5, 4)
    np.testing.assert_allclose(out[0, :, 8:], expected_positions, atol=1e-6)
    np.testing.assert_allclose(out[1, :, 8:], expected_positions, atol=1e-6)


@pytest.mark.parametrize("merge, position_dim", [("add", None), ("concat", None), ("concat", 3)])
@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_start_index_matches_full_pass_in_both_modes(merge, position_dim, positional):
    import tensorflow as tf

    layer = TokenAndPositionEmbedding(11, 6, 8, positional=positional, merge=merge,
                                      position_dim=position_dim, num_segments=2)
    full = keras.ops.convert_to_numpy(layer(IDS, segment_ids=SEGMENTS))
    step = tf.function(
        lambda ids, seg, t: layer(ids, start_index=t, segment_ids=seg), jit_compile=True
    )
    for t in range(IDS.shape[1]):
        out = step(IDS[:, t : t + 1], SEGMENTS[:, t : t + 1], tf.constant(t))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(out)[:, 0], full[:, t], atol=1e-6)


def test_concat_mask_reaches_a_masked_pooling_and_traces_open_shapes():
    import tensorflow as tf

    layer = TokenAndPositionEmbedding(11, 6, 8, merge="concat", position_dim=4)
    inputs = keras.Input((None,), dtype="int32")
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(layer(inputs)))
    full = keras.ops.convert_to_numpy(layer(IDS))
    pooled = keras.ops.convert_to_numpy(model(IDS))
    np.testing.assert_allclose(pooled[0], full[0, :3].mean(0), atol=1e-6)
    np.testing.assert_allclose(pooled[1], full[1].mean(0), atol=1e-6)
    traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None], tf.int32)])
    np.testing.assert_allclose(traced(IDS[:, :4]).numpy(), full[:, :4], atol=1e-6)


def test_tied_output_projection_and_its_dtype_under_mixed_precision():
    from layers.reversible_embedding import ReversibleEmbedding

    layer = TokenAndPositionEmbedding(11, 6, 8)
    layer(IDS)
    assert isinstance(layer.token_embedding, ReversibleEmbedding)
    hidden = np.random.default_rng(3).normal(size=(2, 5, 8)).astype("float32")
    logits = keras.ops.convert_to_numpy(layer.token_embedding(hidden, reverse=True))
    np.testing.assert_allclose(logits, hidden @ _table(layer.token_embedding).T, atol=1e-5)

    mixed = TokenAndPositionEmbedding(11, 6, 8, dtype="mixed_float16")
    assert mixed(IDS).dtype == "float16"
    assert mixed.token_embedding(hidden, reverse=True).dtype == "float16"
    head = TokenAndPositionEmbedding(11, 6, 8, reverse_dtype="float32", dtype="mixed_float16")
    assert head(IDS).dtype == "float16"
    head.set_weights(layer.get_weights())
    float32_logits = head.token_embedding(hidden, reverse=True)
    assert float32_logits.dtype == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(float32_logits), logits, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"merge": "add", "position_dim": 4}, "merge='add' needs position_dim=None or position_dim == embedding_dim; received position_dim=4, embedding_dim=8"),
        ({"merge": "concat", "position_dim": 0}, "position_dim must be None or a positive int; received position_dim=0"),
        ({"num_segments": -1}, "num_segments must be None or a positive int; received num_segments=-1"),
    ],
)
def test_token_and_position_new_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenAndPositionEmbedding(11, 6, 8, **kwargs)


def test_checkpoints_of_earlier_releases_still_restore(tmp_path):
    """Runs before the token embedding became reversible wrote the keys of a plain
    `keras.layers.Embedding` (its variable lives at `_embeddings`); resuming them
    must find every table."""
    import tensorflow as tf

    layer = TokenAndPositionEmbedding(11, 6, 8)
    layer(IDS)
    path = tf.train.Checkpoint(model=layer).write(str(tmp_path / "ckpt"))
    assert sorted(name for name, _ in tf.train.list_variables(path))[1:] == [
        "model/position_embedding/embeddings/.ATTRIBUTES/VARIABLE_VALUE",
        "model/token_embedding/_embeddings/.ATTRIBUTES/VARIABLE_VALUE",
    ]
    plain = keras.layers.Embedding(11, 8)
    plain.build()
    plain_path = tf.train.Checkpoint(model=plain).write(str(tmp_path / "plain"))
    assert "model/_embeddings/.ATTRIBUTES/VARIABLE_VALUE" in dict(tf.train.list_variables(plain_path))
