"""LSTMCell, GRUCell, RNN, LSTM, GRU and Bidirectional against keras with copied weights,
mask properties, golden values, errors and the shared `run_layer_test` checks."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from layers.bidirectional import Bidirectional
from layers.recurrent_cells import GRUCell, LSTMCell
from layers.rnn import GRU, LSTM, RNN
from tests.layers.testing import run_layer_test

B, T, D, U = 3, 5, 4, 6
LENGTHS = [5, 3, 1]  # one full row, two right-padded rows


def _inputs(seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, D)).astype("float32")


def _right_padding(lengths=LENGTHS):
    return np.arange(T)[None, :] < np.array(lengths)[:, None]  # (B, T) bool


def _left_padding(lengths=LENGTHS):
    return np.arange(T)[None, :] >= T - np.array(lengths)[:, None]


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _close(a, b, atol=1e-5):
    np.testing.assert_allclose(_np(a), _np(b), atol=atol, rtol=atol)


def _copy_weights(ours, ref, x, mask=None):
    """Builds both layers on `x`, then copies `ref`'s weights into `ours`."""
    ours(x, padding_mask=mask)
    ref(x, mask=mask)
    ours.set_weights(ref.get_weights())


def _randomize(layer, seed=1):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in layer.get_weights()])


# --- cells -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours, ref",
    [
        (lambda: LSTMCell(U), lambda: keras.layers.LSTMCell(U)),
        (lambda: GRUCell(U), lambda: keras.layers.GRUCell(U)),
        (lambda: GRUCell(U, reset_after=False), lambda: keras.layers.GRUCell(U, reset_after=False)),
    ],
    ids=["lstm", "gru_reset_after", "gru_reset_before"],
)
def test_cell_step_matches_keras(ours, ref):
    ours, ref = ours(), ref()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, D)).astype("float32")
    states = [rng.normal(size=(B, U)).astype("float32") for _ in ours.state_size]
    ref(x, states)
    ours(x, states)
    _randomize(ref)
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in ref.get_weights()]
    ours.set_weights(ref.get_weights())
    out, new_states = ours(x, states)
    ref_out, ref_states = ref(x, states)
    _close(out, ref_out)
    for a, b in zip(new_states, ref_states):
        _close(a, b)


@pytest.mark.parametrize("cell_cls", [LSTMCell, GRUCell])
def test_cell_steps_equal_full_rnn(cell_cls):
    """Incremental equals full: stepping the cell by hand gives the RNN's outputs."""
    x = _inputs()
    rnn = RNN(cell_cls(U), return_sequences=True, return_state=True)
    outputs, *final = rnn(x)
    states = rnn.cell.get_initial_state(B)
    for t in range(T):
        out, states = rnn.cell(x[:, t], states)
        _close(out, outputs[:, t])
    for a, b in zip(states, final):
        _close(a, b)


# --- LSTM / GRU against keras --------------------------------------------------------


def _check_against_keras(ours, ref, x, mask, return_sequences, go_backwards):
    """Outputs at valid positions and final states equal keras's."""
    _copy_weights(ours, ref, x, mask)
    out, *states = ours(x, padding_mask=mask)
    ref_out, *ref_states = ref(x, mask=mask)
    for a, b in zip(states, ref_states):
        _close(a, b)
    if not return_sequences:
        _close(out, ref_out)
        return
    valid = np.ones((B, T), bool) if mask is None else mask
    if go_backwards:  # both return the sequence in processing (reversed) order
        valid = valid[:, ::-1]
    _close(_np(out)[valid], _np(ref_out)[valid])
    # Ours puts zeros at padded positions; keras repeats the previous output there.
    np.testing.assert_array_equal(_np(out)[~valid], 0.0)


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
def test_lstm_matches_keras(return_sequences, go_backwards, masked):
    kwargs = dict(return_sequences=return_sequences, return_state=True, go_backwards=go_backwards)
    mask = _right_padding() if masked else None
    _check_against_keras(
        LSTM(U, **kwargs), keras.layers.LSTM(U, **kwargs), _inputs(), mask, return_sequences, go_backwards
    )


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset_after", "reset_before"])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
def test_gru_matches_keras(return_sequences, go_backwards, masked, reset_after):
    kwargs = dict(
        return_sequences=return_sequences,
        return_state=True,
        go_backwards=go_backwards,
        reset_after=reset_after,
    )
    mask = _right_padding() if masked else None
    _check_against_keras(
        GRU(U, **kwargs), keras.layers.GRU(U, **kwargs), _inputs(), mask, return_sequences, go_backwards
    )


@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize(
    "ours, ref",
    [(LSTM, keras.layers.LSTM), (GRU, keras.layers.GRU)],
    ids=["lstm", "gru"],
)
def test_precomputed_projection_path_matches_keras(ours, ref, go_backwards):
    """Inputs wider than the projection (D=32 >= G) take the path that projects
    all steps before the loop; it must agree with keras as the in-loop path does."""
    units = 4
    x = np.random.default_rng(5).normal(size=(B, T, 32)).astype("float32")
    kwargs = dict(return_sequences=True, return_state=True, go_backwards=go_backwards)
    layer = ours(units, **kwargs)
    assert layer.cell.projection_size <= x.shape[-1]
    _check_against_keras(layer, ref(units, **kwargs), x, _right_padding(), True, go_backwards)
    mask = tf.constant(_right_padding())
    jitted = tf.function(lambda a: layer(a, padding_mask=mask), jit_compile=True)
    for a, b in zip(jitted(x), layer(x, padding_mask=mask)):
        _close(a, b, atol=1e-4)


def test_unknown_time_dimension():
    """A functional model over `Input((None, D))` runs on any length."""
    inputs = keras.Input((None, D))
    model = keras.Model(inputs, Bidirectional(GRU(U, return_sequences=True))(inputs))
    for length in (2, 7):
        x = np.ones((B, length, D), "float32")
        assert tuple(model(x).shape) == (B, length, 2 * U)


@pytest.mark.parametrize("padding", [_right_padding, _left_padding], ids=["right", "left"])
def test_sequence_outputs_equal_keras_zero_output_for_mask(padding):
    """At every position, padded ones included, ours equals keras with
    `zero_output_for_mask=True` (what keras's Bidirectional and cuDNN give)."""
    x, mask = _inputs(), padding()
    ours = LSTM(U, return_sequences=True)
    ref = keras.layers.LSTM(U, return_sequences=True, zero_output_for_mask=True)
    _copy_weights(ours, ref, x, mask)
    _close(ours(x, padding_mask=mask), ref(x, mask=mask))


def test_return_state_false_gives_one_tensor():
    x = _inputs()
    assert tuple(LSTM(U)(x).shape) == (B, U)
    assert tuple(GRU(U, return_sequences=True)(x).shape) == (B, T, U)
    outputs = LSTM(U, return_state=True)(x)
    assert [tuple(o.shape) for o in outputs] == [(B, U)] * 3


def test_initial_state_matches_keras():
    x, mask = _inputs(), _right_padding()
    rng = np.random.default_rng(3)
    initial = [rng.normal(size=(B, U)).astype("float32") for _ in range(2)]
    ours, ref = LSTM(U, return_state=True), keras.layers.LSTM(U, return_state=True)
    _copy_weights(ours, ref, x, mask)
    for a, b in zip(
        ours(x, padding_mask=mask, initial_state=initial),
        ref(x, mask=mask, initial_state=initial),
    ):
        _close(a, b)


# --- Bidirectional against keras ---------------------------------------------------


@pytest.mark.parametrize("padding", [_right_padding, _left_padding], ids=["right", "left"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
def test_bidirectional_matches_keras(merge_mode, return_sequences, padding):
    x, mask = _inputs(), padding()
    ours = Bidirectional(LSTM(U, return_sequences=return_sequences), merge_mode=merge_mode)
    ref = keras.layers.Bidirectional(
        keras.layers.LSTM(U, return_sequences=return_sequences), merge_mode=merge_mode
    )
    _copy_weights(ours, ref, x, mask)
    _close(ours(x, padding_mask=mask), ref(x, mask=mask))


def test_bidirectional_return_state_matches_keras():
    x, mask = _inputs(), _right_padding()
    ours = Bidirectional(GRU(U, return_sequences=True, return_state=True))
    ref = keras.layers.Bidirectional(keras.layers.GRU(U, return_sequences=True, return_state=True))
    _copy_weights(ours, ref, x, mask)
    outputs, ref_outputs = ours(x, padding_mask=mask), ref(x, mask=mask)
    assert len(outputs) == len(ref_outputs) == 3  # [output, forward h, backward h]
    for a, b in zip(outputs, ref_outputs):
        _close(a, b)


def test_bidirectional_backward_starts_at_last_valid_step():
    """With right padding the backward half at position t equals a forward LSTM
    run over the row's valid steps reversed, i.e. it starts at the last valid step."""
    x, mask = _inputs(), _right_padding()
    bi = Bidirectional(LSTM(U, return_sequences=True))
    out = _np(bi(x, padding_mask=mask))[..., U:]  # (B, T, U): the backward half
    forward = LSTM(U, return_sequences=True)
    forward(x)
    forward.set_weights(bi.backward_layer.get_weights())
    for row, length in enumerate(LENGTHS):
        reversed_row = x[row : row + 1, :length][:, ::-1]  # (1, L, D)
        expected = _np(forward(reversed_row))[0, ::-1]  # back in input order
        _close(out[row, :length], expected)
        np.testing.assert_array_equal(out[row, length:], 0.0)


# --- mask properties ----------------------------------------------------------------


def _layers_under_test():
    return [
        LSTM(U, return_sequences=True, return_state=True),
        GRU(U, return_sequences=True, return_state=True, go_backwards=True),
        GRU(U, reset_after=False),
        Bidirectional(LSTM(U, return_sequences=True, return_state=True)),
    ]


@pytest.mark.parametrize("padding", [_right_padding, _left_padding], ids=["right", "left"])
@pytest.mark.parametrize("index", range(4))
def test_padded_values_change_nothing(index, padding):
    layer = _layers_under_test()[index]
    x, mask = _inputs(), padding()
    noisy = np.where(mask[..., None], x, 1e3 * _inputs(seed=7))
    for a, b in zip(
        keras.tree.flatten(layer(x, padding_mask=mask)),
        keras.tree.flatten(layer(noisy, padding_mask=mask)),
    ):
        _close(a, b, atol=0.0)


@pytest.mark.parametrize("index", range(4))
def test_all_padding_row_is_finite_and_zero(index):
    layer = _layers_under_test()[index]
    x, mask = _inputs(), _right_padding([5, 0, 2])
    for tensor in keras.tree.flatten(layer(x, padding_mask=mask)):
        tensor = _np(tensor)
        assert np.all(np.isfinite(tensor))
        np.testing.assert_array_equal(tensor[1], 0.0)  # zero state, zero output


@pytest.mark.parametrize("make", [lambda: LSTM(U, return_sequences=True), lambda: Bidirectional(GRU(U))])
def test_implicit_mask_equals_explicit(make):
    tokens = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0], [5, 0, 0, 0, 0]])
    embedding = keras.layers.Embedding(10, D, mask_zero=True)
    layer = make()
    implicit = layer(embedding(tokens))
    explicit = layer(embedding(tokens), padding_mask=tokens != 0)
    _close(implicit, explicit, atol=0.0)


def test_compute_mask_follows_return_sequences():
    mask = keras.ops.convert_to_tensor(_right_padding())
    x = _inputs()
    assert LSTM(U).compute_mask(x, mask) is None
    assert LSTM(U, return_sequences=True).compute_mask(x, mask) is mask
    assert LSTM(U, return_sequences=True, return_state=True).compute_mask(x, mask) == [mask, None, None]
    bi = Bidirectional(LSTM(U, return_sequences=True, return_state=True))
    bi(x)
    assert bi.compute_mask(x, mask) == [mask] + [None] * 4


def test_stacked_layers_propagate_the_mask():
    """Embedding(mask_zero) -> RNN(return_sequences) -> RNN: the second layer sees
    the mask, so padded values change nothing at the end of the stack."""
    tokens = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0], [5, 0, 0, 0, 0]])
    inputs = keras.Input((T,), dtype="int32")
    x = keras.layers.Embedding(10, D, mask_zero=True)(inputs)
    x = Bidirectional(LSTM(U, return_sequences=True))(x)
    x = LSTM(U, return_sequences=True)(x)
    model = keras.Model(inputs, x)
    out = _np(model(tokens))
    np.testing.assert_array_equal(out[tokens == 0], 0.0)  # the mask reached the last layer
    assert np.abs(out[tokens != 0]).min() > 0


# --- golden values ------------------------------------------------------------------

_GOLDEN_X = np.arange(12, dtype="float32").reshape(2, 3, 2) / 10.0
_CONSTANT = dict(
    kernel_initializer=keras.initializers.Constant(0.01),
    recurrent_initializer=keras.initializers.Constant(0.01),
    bias_initializer=keras.initializers.Constant(0.01),
)
# Computed once with keras.layers.LSTM / GRU 3.15 (return_sequences=True, units=3),
# one value per (row, step); all units are equal under constant initializers.
_GOLDEN = {
    "lstm": [[0.00278019, 0.0058668, 0.00919321], [0.0058817, 0.01130516, 0.01640425]],
    "gru_reset_after": [[0.0079413, 0.01398391, 0.01905703], [0.01380596, 0.0228767, 0.02951622]],
    "gru_reset_before": [[0.00546953, 0.01023909, 0.01465288], [0.01136575, 0.01915795, 0.02512413]],
}


@pytest.mark.parametrize(
    "name, layer",
    [
        ("lstm", lambda: LSTM(3, return_sequences=True, **_CONSTANT)),
        ("gru_reset_after", lambda: GRU(3, return_sequences=True, **_CONSTANT)),
        ("gru_reset_before", lambda: GRU(3, return_sequences=True, reset_after=False, **_CONSTANT)),
    ],
)
def test_golden_values(name, layer):
    expected = np.repeat(np.array(_GOLDEN[name], "float32")[..., None], 3, axis=-1)
    np.testing.assert_allclose(_np(layer()(_GOLDEN_X)), expected, atol=1e-7, rtol=1e-6)


# --- errors -------------------------------------------------------------------------


def test_errors_name_argument_and_value():
    with pytest.raises(ValueError, match=r"units must be a positive int; received units=0"):
        LSTMCell(0)
    with pytest.raises(ValueError, match=r"units must be a positive int; received units=0"):
        GRU(0)
    with pytest.raises(ValueError, match=r"units must be a positive int; received units=2.5"):
        LSTM(2.5)
    with pytest.raises(ValueError, match=r"dropout must be a float in \[0, 1\); received dropout=1.5"):
        LSTM(4, dropout=1.5)
    with pytest.raises(ValueError, match=r"merge_mode must be one of .*; received merge_mode='bad'"):
        Bidirectional(LSTM(4), merge_mode="bad")
    with pytest.raises(ValueError, match=r"layer must be a layers.RNN .*; received layer=<Dense"):
        Bidirectional(keras.layers.Dense(4))
    with pytest.raises(ValueError, match=r"cell must be a layers.LSTMCell or layers.GRUCell"):
        RNN(keras.layers.Dense(4))
    with pytest.raises(ValueError, match=r"padding_mask must be a \(B, S\) mask of rank 2"):
        LSTM(4)(_inputs(), padding_mask=np.ones((B, T, 1), bool))


# --- dropout ------------------------------------------------------------------------


def test_dropout_is_active_only_in_training_and_fixed_over_time():
    x = np.ones((B, T, D), "float32")  # the same input at every step
    layer = LSTM(U, return_sequences=True, dropout=0.5, recurrent_dropout=0.3)
    plain = LSTM(U, return_sequences=True)
    inference = layer(x)
    plain(x)
    plain.set_weights(layer.get_weights())
    _close(inference, plain(x))
    assert not np.allclose(_np(layer(x, training=True)), _np(inference))
    # Variational masks: one (B, D) input mask and one (B, U) recurrent mask per sequence.
    input_mask, recurrent_mask = layer.cell.dropout_masks(keras.ops.convert_to_tensor(x), training=True)
    assert tuple(input_mask.shape) == (B, D) and tuple(recurrent_mask.shape) == (B, U)
    assert layer.cell.dropout_masks(x, training=False) == (None, None)


# --- shared harness -----------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, init_kwargs, expected_shape",
    [
        (LSTM, dict(units=U, return_sequences=True), (B, T, U)),
        (GRU, dict(units=U, reset_after=False, go_backwards=True), (B, U)),
        (RNN, dict(cell=keras.saving.serialize_keras_object(LSTMCell(U)), return_state=True), (B, U)),
        (Bidirectional, dict(layer=LSTM(U, return_sequences=True), merge_mode="sum"), (B, T, U)),
    ],
    ids=["LSTM", "GRU", "RNN", "Bidirectional"],
)
def test_run_layer_test(cls, init_kwargs, expected_shape, tmp_path):
    run_layer_test(
        cls,
        init_kwargs,
        _inputs(),
        call_kwargs={"padding_mask": keras.ops.convert_to_tensor(_right_padding())},
        expected_output_shape=expected_shape,
        tmp_path=tmp_path,
    )


# --- training -----------------------------------------------------------------------


def test_stacked_bidirectional_model_trains():
    """Toy task: is token 1 among the (variable-length, zero-padded) tokens?"""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 8, size=(64, 8))
    lengths = rng.integers(2, 9, size=64)
    tokens[np.arange(8)[None, :] >= lengths[:, None]] = 0
    labels = (tokens == 1).any(axis=1).astype("float32")

    inputs = keras.Input((8,), dtype="int32")
    x = keras.layers.Embedding(8, 8, mask_zero=True)(inputs)
    x = Bidirectional(LSTM(8, return_sequences=True))(x)
    x = Bidirectional(GRU(8), merge_mode="sum")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy")
    history = model.fit(tokens, labels, batch_size=32, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
