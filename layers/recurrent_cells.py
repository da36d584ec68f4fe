"""LSTM and GRU cells, with the gate equations written out.

Each cell splits one time step into two parts so that a sequence wrapper
(`layers.rnn.RNN`) can be fast:

- `input_projection(inputs, dropout_mask=None)`: `x W + b` for every gate at
  once (one fused matmul). It takes `(B, D)` or a time-major `(T, B, D)`, so
  the wrapper can project the whole sequence with one large matmul before the
  loop; the `(B, D)` dropout mask broadcasts over T, so it is the same at
  every step.
- `step(projected, states, recurrent_dropout_mask=None)`: the recurrent part of
  one step, given the projected input of that step.

`call(inputs, states, training=None)` chains the two for a single step, so a
cell also works on its own (and inside `keras.layers.RNN`).

The weight layout equals `keras.layers.LSTMCell` / `keras.layers.GRUCell`, so
weights copy over with `set_weights(keras_cell.get_weights())`.
"""
import keras
from keras import ops

from layers.dropout import dropout


def _check_units(units):
    if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
        raise ValueError(f"units must be a positive int; received units={units!r}")


def _check_rate(name, value):
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1); received {name}={value!r}")


def _project(inputs, kernel, bias=None):
    """`inputs @ kernel + bias` over the last axis: ([T,] B, D) -> ([T,] B, G).

    A sequence is flattened to one (T*B, D) @ (D, G) matmul: a rank-3 matmul
    would be a batch matmul that broadcasts the kernel, and its gradient would
    sum T outer products (and the bias gradient would reduce over two axes).
    """
    flat = inputs if len(inputs.shape) == 2 else ops.reshape(inputs, (-1, inputs.shape[-1]))
    projected = ops.matmul(flat, ops.cast(kernel, inputs.dtype))  # (T*B, G)
    if bias is not None:
        projected = projected + ops.cast(bias, inputs.dtype)
    if len(inputs.shape) == 2:
        return projected
    return ops.reshape(projected, (*ops.shape(inputs)[:-1], kernel.shape[-1]))


class _DropoutMasks:
    """Variational dropout masks: one mask per sequence, shared by all time steps
    (Gal & Ghahramani, https://arxiv.org/abs/1512.05287), as Keras does."""

    def dropout_masks(self, inputs, training=None):
        """Returns `(input_mask, recurrent_mask)`, each `None` when not training.

        Args:
            inputs: `(B, D)`, or `(B, T, D)`; only B and D are used.
            training: Python bool or None (None means inference).

        Returns:
            input_mask `(B, D)` or None, recurrent_mask `(B, units)` or None.
        """
        if not training:
            return None, None
        batch_size = ops.shape(inputs)[0]
        input_mask = None
        recurrent_mask = None
        if self.dropout > 0:
            ones = ops.ones((batch_size, inputs.shape[-1]), dtype=inputs.dtype)
            input_mask = dropout(ones, self.dropout, self.seed_generator)
        if self.recurrent_dropout > 0:
            ones = ops.ones((batch_size, self.units), dtype=inputs.dtype)
            recurrent_mask = dropout(ones, self.recurrent_dropout, self.seed_generator)
        return input_mask, recurrent_mask

    def get_initial_state(self, batch_size, dtype=None):
        """Zero states, one `(B, units)` tensor per entry of `state_size`."""
        dtype = dtype or self.compute_dtype
        return [ops.zeros((batch_size, size), dtype=dtype) for size in self.state_size]

    def _apply_input_dropout(self, inputs, dropout_mask):
        if dropout_mask is None:
            return inputs
        return inputs * ops.cast(dropout_mask, inputs.dtype)


@keras.saving.register_keras_serializable(package="layers")
class LSTMCell(_DropoutMasks, keras.layers.Layer):
    """One step of a long short-term memory cell.

    With `x` the input, `h` and `c` the previous output and carry, and `σ` the
    recurrent activation:

        i  = σ(x W_i + h U_i + b_i)          input gate
        f  = σ(x W_f + h U_f + b_f)          forget gate
        c̃  = tanh(x W_c + h U_c + b_c)       candidate carry
        o  = σ(x W_o + h U_o + b_o)          output gate
        c' = f * c + i * c̃
        h' = o * tanh(c')

    Weights: `kernel` (D, 4U) and `recurrent_kernel` (U, 4U), gates in the order
    i, f, c, o; `bias` (4U,). This is `keras.layers.LSTMCell`'s layout.

    Args:
        units: int, the size U of `h` and `c`.
        activation: activation of the candidate and of the output carry.
            Defaults to `"tanh"`.
        recurrent_activation: activation of the gates. Defaults to `"sigmoid"`.
        use_bias: bool, whether the gates have biases. Defaults to `True`.
        kernel_initializer: initializer of `kernel`. Defaults to `"glorot_uniform"`.
        recurrent_initializer: initializer of `recurrent_kernel`. Defaults to
            `"orthogonal"`.
        bias_initializer: initializer of `bias`. Defaults to `"zeros"`.
        unit_forget_bias: bool; if True, the forget-gate bias starts at 1
            (Jozefowicz et al., 2015). Defaults to `True`.
        dropout: float in [0, 1), dropout on the inputs. Defaults to `0.0`.
        recurrent_dropout: float in [0, 1), dropout on `h` before `U`.
            Defaults to `0.0`.

    Call arguments:
        inputs: `(B, D)`, the input of one step.
        states: `[h, c]`, each `(B, U)`.
        training: bool, whether dropout is active. A single `call` draws fresh
            masks; `layers.RNN` draws them once per sequence.

    Returns:
        `(h', [h', c'])`, each `(B, U)`.

    Example:
    >>> cell = LSTMCell(8)
    >>> h, (h, c) = cell(keras.ops.ones((2, 3)), cell.get_initial_state(2))

    Reference: Hochreiter & Schmidhuber, "Long Short-Term Memory" (1997);
    Gers et al., "Learning to Forget" (2000).
    """

    def __init__(
        self,
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        unit_forget_bias=True,
        dropout=0.0,
        recurrent_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_units(units)
        _check_rate("dropout", dropout)
        _check_rate("recurrent_dropout", recurrent_dropout)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.unit_forget_bias = unit_forget_bias
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.seed_generator = keras.random.SeedGenerator()
        self.state_size = [units, units]
        self.output_size = units
        self.projection_size = 4 * units  # G, the width of x [W_i W_f W_c W_o]

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(input_dim, 4 * self.units),
            name="kernel",
            initializer=self.kernel_initializer,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, 4 * self.units),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(4 * self.units,),
                name="bias",
                initializer=self._full_bias_initializer,
            )

    def _full_bias_initializer(self, shape, dtype=None):
        if not self.unit_forget_bias:
            return self.bias_initializer(shape, dtype=dtype)
        units = self.units
        return ops.concatenate(
            [
                self.bias_initializer((units,), dtype=dtype),  # b_i
                ops.ones((units,), dtype=dtype),  # b_f = 1
                self.bias_initializer((2 * units,), dtype=dtype),  # b_c, b_o
            ]
        )

    def input_projection(self, inputs, dropout_mask=None):
        """`x [W_i W_f W_c W_o] + b`: ([T,] B, D) -> ([T,] B, 4U)."""
        inputs = self._apply_input_dropout(inputs, dropout_mask)
        return _project(inputs, self.kernel, self.bias)

    def step(self, projected, states, recurrent_dropout_mask=None):
        """One step from the projected input `(B, 4U)` and `[h, c]`."""
        h, c = states  # (B, U) each
        if recurrent_dropout_mask is not None:
            h = h * recurrent_dropout_mask
        z = projected + ops.matmul(h, ops.cast(self.recurrent_kernel, h.dtype))  # (B, 4U)
        z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
        i = self.recurrent_activation(z_i)  # input gate
        f = self.recurrent_activation(z_f)  # forget gate
        c_candidate = self.activation(z_c)  # c̃
        o = self.recurrent_activation(z_o)  # output gate
        c = f * c + i * c_candidate
        h = o * self.activation(c)
        return h, [h, c]

    def call(self, inputs, states, training=None):
        dropout_mask, recurrent_dropout_mask = self.dropout_masks(inputs, training)
        projected = self.input_projection(inputs, dropout_mask)  # (B, 4U)
        return self.step(projected, states, recurrent_dropout_mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "recurrent_activation": keras.activations.serialize(self.recurrent_activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "unit_forget_bias": self.unit_forget_bias,
                "dropout": self.dropout,
                "recurrent_dropout": self.recurrent_dropout,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="layers")
class GRUCell(_DropoutMasks, keras.layers.Layer):
    """One step of a gated recurrent unit, in Keras's convention.

    With `x` the input, `h` the previous state and `σ` the recurrent activation:

        z  = σ(x W_z + h U_z + b_z)              update gate
        r  = σ(x W_r + h U_r + b_r)              reset gate
        h̃  = tanh(x W_h + r * (h U_h + b'_h))    candidate, reset_after=True
        h̃  = tanh(x W_h + (r * h) U_h + b_h)     candidate, reset_after=False
        h' = z * h + (1 - z) * h̃

    Weights: `kernel` (D, 3U) and `recurrent_kernel` (U, 3U), gates in the order
    z, r, h; `bias` (2, 3U) (input bias, recurrent bias) with `reset_after=True`,
    else (3U,). This is `keras.layers.GRUCell`'s layout.

    Args:
        units: int, the size U of `h`.
        activation: activation of the candidate. Defaults to `"tanh"`.
        recurrent_activation: activation of the gates. Defaults to `"sigmoid"`.
        use_bias: bool, whether the gates have biases. Defaults to `True`.
        kernel_initializer: initializer of `kernel`. Defaults to `"glorot_uniform"`.
        recurrent_initializer: initializer of `recurrent_kernel`. Defaults to
            `"orthogonal"`.
        bias_initializer: initializer of `bias`. Defaults to `"zeros"`.
        dropout: float in [0, 1), dropout on the inputs. Defaults to `0.0`.
        recurrent_dropout: float in [0, 1), dropout on `h` before `U`.
            Defaults to `0.0`.
        reset_after: bool; apply the reset gate after the recurrent matmul
            (the cuDNN variant, Keras's default). Defaults to `True`.

    Call arguments:
        inputs: `(B, D)`, the input of one step.
        states: `[h]`, `(B, U)`.
        training: bool, whether dropout is active.

    Returns:
        `(h', [h'])`, each `(B, U)`.

    Example:
    >>> cell = GRUCell(8)
    >>> h, (h,) = cell(keras.ops.ones((2, 3)), cell.get_initial_state(2))

    Reference: Cho et al., "Learning Phrase Representations using RNN
    Encoder-Decoder for Statistical Machine Translation" (2014),
    https://arxiv.org/abs/1406.1078.
    """

    def __init__(
        self,
        units,
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        dropout=0.0,
        recurrent_dropout=0.0,
        reset_after=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_units(units)
        _check_rate("dropout", dropout)
        _check_rate("recurrent_dropout", recurrent_dropout)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.reset_after = reset_after
        self.seed_generator = keras.random.SeedGenerator()
        self.state_size = [units]
        self.output_size = units
        self.projection_size = 3 * units  # G, the width of x [W_z W_r W_h]

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(input_dim, 3 * self.units),
            name="kernel",
            initializer=self.kernel_initializer,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, 3 * self.units),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
        )
        self.bias = None
        if self.use_bias:
            # reset_after keeps a separate recurrent bias: it sits inside r * (...).
            shape = (2, 3 * self.units) if self.reset_after else (3 * self.units,)
            self.bias = self.add_weight(shape=shape, name="bias", initializer=self.bias_initializer)

    def _input_bias(self):
        return self.bias[0] if self.reset_after else self.bias

    def input_projection(self, inputs, dropout_mask=None):
        """`x [W_z W_r W_h] + b`: ([T,] B, D) -> ([T,] B, 3U)."""
        inputs = self._apply_input_dropout(inputs, dropout_mask)
        return _project(inputs, self.kernel, self._input_bias() if self.use_bias else None)

    def step(self, projected, states, recurrent_dropout_mask=None):
        """One step from the projected input `(B, 3U)` and `[h]`."""
        (h,) = states  # (B, U)
        h_in = h if recurrent_dropout_mask is None else h * recurrent_dropout_mask
        recurrent_kernel = ops.cast(self.recurrent_kernel, h.dtype)
        units = self.units
        x_z, x_r, x_h = ops.split(projected, 3, axis=-1)
        if self.reset_after:
            inner = ops.matmul(h_in, recurrent_kernel)  # (B, 3U): h U for all gates
            if self.use_bias:
                inner = inner + ops.cast(self.bias[1], h.dtype)
            h_z, h_r, h_h = ops.split(inner, 3, axis=-1)
        else:
            inner = ops.matmul(h_in, recurrent_kernel[:, : 2 * units])  # (B, 2U)
            h_z, h_r = ops.split(inner, 2, axis=-1)
        z = self.recurrent_activation(x_z + h_z)  # update gate
        r = self.recurrent_activation(x_r + h_r)  # reset gate
        if self.reset_after:
            h_candidate = self.activation(x_h + r * h_h)  # h̃
        else:
            h_candidate = self.activation(
                x_h + ops.matmul(r * h_in, recurrent_kernel[:, 2 * units :])
            )  # h̃
        h = z * h + (1.0 - z) * h_candidate
        return h, [h]

    def call(self, inputs, states, training=None):
        if not isinstance(states, (list, tuple)):
            states = [states]
        dropout_mask, recurrent_dropout_mask = self.dropout_masks(inputs, training)
        projected = self.input_projection(inputs, dropout_mask)  # (B, 3U)
        return self.step(projected, states, recurrent_dropout_mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": keras.activations.serialize(self.activation),
                "recurrent_activation": keras.activations.serialize(self.recurrent_activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "dropout": self.dropout,
                "recurrent_dropout": self.recurrent_dropout,
                "reset_after": self.reset_after,
            }
        )
        return config
