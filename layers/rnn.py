"""`RNN`: runs a recurrent cell over a sequence; `LSTM` and `GRU` conveniences.

The loop is a `tf.while_loop` over a `TensorArray` of a static or dynamic T (XLA
friendly, no Python control flow on values). The loop streams the narrower of
`x` (width D) and its input projection `x W + b` (width G = 4U or 3U):
- G <= D: `x W + b` of every step is one big `(T*B, D) @ (D, G)` matmul before
  the loop, which then only does the recurrent part `h U`;
- G > D (the usual case, e.g. LSTM(128) on D=64): `x_t W + b` is computed
  inside the loop, because on CPU the wider `(T, B, G)` TensorArray and its
  gradient cost more than the big matmul saves (measured: ~10% slower end to
  end, see benchmarks/lstm_throughput.py).
Both paths use the cell's `input_projection` and `step`, so they agree exactly.

Masking semantics (padding_mask, or the implicit Keras mask when it is None):
- a padded step updates no state: the states carry over unchanged;
- with `return_sequences=True`, the output at a padded step is zeros (Keras's
  `zero_output_for_mask=True`, which `keras.layers.Bidirectional` and the cuDNN
  path use; plain `keras.layers.LSTM` repeats the previous output there instead);
- with `return_sequences=False`, the output is the one of the last valid step
  (zeros for an all-padding row), as in Keras;
- left and right padding both work, and so does `go_backwards`.
"""
import keras
import tensorflow as tf
from keras import ops

from layers.masking import resolve_padding_mask
from layers.recurrent_cells import GRUCell, LSTMCell


def _as_cell(cell):
    if isinstance(cell, dict):
        cell = keras.saving.deserialize_keras_object(cell)
    needed = (
        "input_projection",
        "step",
        "dropout_masks",
        "get_initial_state",
        "state_size",
        "projection_size",
    )
    if not all(hasattr(cell, name) for name in needed):
        raise ValueError(
            f"cell must be a layers.LSTMCell or layers.GRUCell (a cell with {', '.join(needed)}); "
            f"received cell={cell!r}"
        )
    return cell


def _run_loop(step_fn, sequence, initial_states, mask, output_size, return_sequences):
    """Runs `step_fn` over a time-major sequence with a `tf.while_loop`.

    Args:
        step_fn: `(sequence_t, states) -> (output_t (B, U), new_states)`.
        sequence: `(T, B, F)`, the inputs or their projections, in loop order.
        initial_states: list of `(B, S)`.
        mask: `(T, B, 1)` bool, or None.
        output_size: int, U.
        return_sequences: whether to keep every step's output.

    Returns:
        `(last_output (B, U), outputs (T, B, U) or None, final_states)`.
    """
    num_steps = ops.shape(sequence)[0]
    batch_size = ops.shape(sequence)[1]
    # TensorArray reads keep the backward pass linear in T (slicing a tensor
    # inside the loop would build a dense (T, B, F) gradient at every step).
    inputs_ta = tf.TensorArray(sequence.dtype, size=num_steps, element_shape=sequence.shape[1:])
    inputs_ta = inputs_ta.unstack(sequence)
    mask_ta = None
    if mask is not None:
        mask_ta = tf.TensorArray(tf.bool, size=num_steps, element_shape=mask.shape[1:])
        mask_ta = mask_ta.unstack(mask)
    zero_output = ops.zeros((batch_size, output_size), dtype=sequence.dtype)  # (B, U)

    def body(t, last_output, states, *outputs_ta):
        output, new_states = step_fn(inputs_ta.read(t), list(states))
        if mask_ta is not None:
            valid = mask_ta.read(t)  # (B, 1)
            # A padded step keeps the states and the last valid output.
            new_states = [ops.where(valid, new, old) for new, old in zip(new_states, states)]
            last_output = ops.where(valid, output, last_output)
            output = ops.where(valid, output, zero_output)
        else:
            last_output = output
        outputs_ta = tuple(ta.write(t, output) for ta in outputs_ta)
        return (t + 1, last_output, tuple(new_states), *outputs_ta)

    outputs_ta = ()
    if return_sequences:
        outputs_ta = (
            tf.TensorArray(sequence.dtype, size=num_steps, element_shape=zero_output.shape),
        )
    _, last_output, states, *outputs_ta = tf.while_loop(
        lambda t, *_: t < num_steps,
        body,
        (tf.constant(0), zero_output, tuple(initial_states), *outputs_ta),
        maximum_iterations=num_steps,
        parallel_iterations=32,
    )
    outputs = outputs_ta[0].stack() if return_sequences else None
    return last_output, outputs, list(states)


def _cell_rnn_config(layer):
    """`LSTM`/`GRU` config: the base layer config, the cell's arguments and the
    sequence flags, i.e. exactly their `__init__` arguments."""
    config = keras.layers.Layer.get_config(layer)
    cell_config = layer.cell.get_config()
    for key in ("name", "trainable", "dtype"):  # the cell's own base-layer keys
        cell_config.pop(key, None)
    config.update(cell_config)
    config.update(
        {
            "return_sequences": layer.return_sequences,
            "return_state": layer.return_state,
            "go_backwards": layer.go_backwards,
        }
    )
    return config


@keras.saving.register_keras_serializable(package="layers")
class RNN(keras.layers.Layer):
    """Runs a recurrent cell (`layers.LSTMCell`, `layers.GRUCell`) over a sequence.

    The input projection `x W + b` is one matmul over all time steps before the
    loop when its width G is at most D, else computed step by step inside the
    loop (see the module docstring for why). Dropout masks are drawn once per
    sequence (variational dropout).

    Args:
        cell: a cell with `input_projection`, `step` and `state_size`, or its
            serialized config (dict).
        return_sequences: bool; return the output of every step `(B, T, U)`
            rather than the last one `(B, U)`. Defaults to `False`.
        return_state: bool; also return the final states. Defaults to `False`.
        go_backwards: bool; process the sequence from the end. The returned
            sequence is then in processing (reversed) order, as in Keras.
            Defaults to `False`.

    Call arguments:
        inputs: `(B, T, D)`.
        padding_mask: `(B, T)` bool, True at valid steps; the implicit Keras
            mask is used when it is None. Padded steps update no state; with
            `return_sequences` their output is zeros.
        initial_state: list of `(B, S)` tensors, one per `cell.state_size`;
            zeros when None.
        training: bool, whether dropout is active.

    Returns:
        `(B, T, U)` if `return_sequences` else `(B, U)`; with `return_state`, a
        list `[output, *final_states]`. With `return_sequences`, the output
        carries on the implicit Keras mask (`compute_mask`); an explicit
        `padding_mask` is not attached to it, so pass it to the next layer too.

    Example:
    >>> rnn = RNN(LSTMCell(16), return_sequences=True)
    >>> y = rnn(keras.ops.ones((2, 5, 3)), padding_mask=keras.ops.ones((2, 5), "bool"))

    Reference: Elman, "Finding Structure in Time" (1990); Gal & Ghahramani,
    https://arxiv.org/abs/1512.05287 (variational dropout).
    """

    def __init__(
        self,
        cell,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.cell = _as_cell(cell)
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        self.supports_masking = True

    @property
    def state_size(self):
        return self.cell.state_size

    def build(self, inputs_shape):
        if not self.cell.built:
            self.cell.build(tuple(inputs_shape[:1]) + tuple(inputs_shape[2:]))

    def call(self, inputs, padding_mask=None, initial_state=None, training=None, mask=None):
        # An explicit padding_mask wins over the implicit Keras mask.
        mask = resolve_padding_mask(inputs, padding_mask if padding_mask is not None else mask)
        batch_size = ops.shape(inputs)[0]
        if initial_state is None:
            initial_state = self.cell.get_initial_state(batch_size, dtype=inputs.dtype)
        elif not isinstance(initial_state, (list, tuple)):
            initial_state = [initial_state]
        initial_state = [ops.cast(s, inputs.dtype) for s in initial_state]

        dropout_mask, recurrent_dropout_mask = self.cell.dropout_masks(inputs, training)
        sequence = ops.transpose(inputs, (1, 0, 2))  # (T, B, D): the loop runs over T
        # Stream the narrower of x (D) and x W (G) through the loop. Precomputing
        # x W for all steps is one big matmul, but on CPU the (T, B, G) TensorArray
        # and its gradient cost more than that saves when G > D (LSTM(128) on
        # D=64: ~10% slower end to end than projecting x_t inside the loop).
        precompute = self.cell.projection_size <= inputs.shape[-1]
        if precompute:
            sequence = self.cell.input_projection(sequence, dropout_mask)  # (T, B, G)
        if mask is not None:
            mask = ops.expand_dims(ops.transpose(mask), -1)  # (T, B, 1)
        if self.go_backwards:
            sequence = ops.flip(sequence, axis=0)
            mask = None if mask is None else ops.flip(mask, axis=0)

        def step_fn(sequence_t, states):
            projected_t = sequence_t  # (B, G)
            if not precompute:
                projected_t = self.cell.input_projection(sequence_t, dropout_mask)  # (B, G)
            return self.cell.step(projected_t, states, recurrent_dropout_mask)

        last_output, outputs, states = _run_loop(
            step_fn, sequence, initial_state, mask, self.cell.output_size, self.return_sequences
        )
        output = ops.transpose(outputs, (1, 0, 2)) if self.return_sequences else last_output
        if self.return_state:
            return [output, *states]
        return output

    def compute_mask(self, inputs, mask=None):
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            return [output_mask] + [None] * len(self.cell.state_size)
        return output_mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "cell": keras.saving.serialize_keras_object(self.cell),
                "return_sequences": self.return_sequences,
                "return_state": self.return_state,
                "go_backwards": self.go_backwards,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="layers")
class LSTM(RNN):
    """An `RNN` over a `layers.LSTMCell`; weights match `keras.layers.LSTM`.

    Args:
        units: int, the size U of the output and states.
        return_sequences: bool. Defaults to `False`.
        return_state: bool; also return `[h, c]`. Defaults to `False`.
        go_backwards: bool. Defaults to `False`.
        dropout: float in [0, 1), variational dropout on the inputs.
        recurrent_dropout: float in [0, 1), variational dropout on `h`.
        activation, recurrent_activation, use_bias, kernel_initializer,
        recurrent_initializer, bias_initializer, unit_forget_bias: as in
            `layers.LSTMCell`.

    Call arguments and Returns: as in `layers.RNN`; states are `[h, c]`.

    Example:
    >>> y = LSTM(16)(keras.ops.ones((2, 5, 3)))  # (2, 16)

    Reference: Hochreiter & Schmidhuber, "Long Short-Term Memory" (1997).
    """

    def __init__(
        self,
        units,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        dropout=0.0,
        recurrent_dropout=0.0,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        unit_forget_bias=True,
        **kwargs,
    ):
        cell = LSTMCell(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            unit_forget_bias=unit_forget_bias,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            dtype=kwargs.get("dtype"),
            name="lstm_cell",
        )
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            **kwargs,
        )

    def get_config(self):
        return _cell_rnn_config(self)


@keras.saving.register_keras_serializable(package="layers")
class GRU(RNN):
    """An `RNN` over a `layers.GRUCell`; weights match `keras.layers.GRU`.

    Args:
        units: int, the size U of the output and state.
        return_sequences: bool. Defaults to `False`.
        return_state: bool; also return `[h]`. Defaults to `False`.
        go_backwards: bool. Defaults to `False`.
        dropout: float in [0, 1), variational dropout on the inputs.
        recurrent_dropout: float in [0, 1), variational dropout on `h`.
        reset_after: bool, as in `layers.GRUCell`. Defaults to `True`.
        activation, recurrent_activation, use_bias, kernel_initializer,
        recurrent_initializer, bias_initializer: as in `layers.GRUCell`.

    Call arguments and Returns: as in `layers.RNN`; states are `[h]`.

    Example:
    >>> y = GRU(16, return_sequences=True)(keras.ops.ones((2, 5, 3)))  # (2, 5, 16)

    Reference: Cho et al., https://arxiv.org/abs/1406.1078 (2014).
    """

    def __init__(
        self,
        units,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        dropout=0.0,
        recurrent_dropout=0.0,
        reset_after=True,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        **kwargs,
    ):
        cell = GRUCell(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            reset_after=reset_after,
            dtype=kwargs.get("dtype"),
            name="gru_cell",
        )
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            **kwargs,
        )

    def get_config(self):
        return _cell_rnn_config(self)
