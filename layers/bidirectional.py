"""`Bidirectional`: a forward and a backward copy of one of our RNN layers."""
import copy

import keras
from keras import ops

from layers.rnn import RNN

MERGE_MODES = ("concat", "sum", "ave", "mul")


@keras.saving.register_keras_serializable(package="layers")
class Bidirectional(keras.layers.Layer):
    """Runs an RNN layer over the sequence in both directions and merges the two.

    The forward and backward layers are both rebuilt from `layer`'s config; the
    backward one gets `go_backwards` flipped. Its sequence output, which comes
    in reversed order, is flipped back so that position t of both directions
    refers to input step t.

    With padding, the backward direction starts at the last valid step of each
    row: it reads the reversed tensor, whose leading pads are masked (they keep
    the zero state), which is the same as reversing each row within its valid
    length. This holds for right and for left padding.

    Args:
        layer: a `layers.RNN` (`RNN`, `LSTM`, `GRU`), or its serialized config.
            Only its config is used: the layer itself is not called or tracked.
        merge_mode: how the two outputs combine: `"concat"` (last axis, 2U),
            `"sum"`, `"ave"` or `"mul"` (U). Defaults to `"concat"`.

    Call arguments:
        inputs: `(B, T, D)`.
        padding_mask: `(B, T)` bool, True at valid steps; the implicit Keras
            mask is used when it is None.
        initial_state: list of the forward states followed by the backward
            states, each `(B, S)`; zeros when None.
        training: bool, whether dropout is active.

    Returns:
        The merged output, `(B, [T,] 2U)` for concat else `(B, [T,] U)`; with
        `return_state`, a list `[output, *forward_states, *backward_states]`.
        With `return_sequences`, padded positions are zeros.

    Example:
    >>> bi = Bidirectional(LSTM(16, return_sequences=True))
    >>> y = bi(keras.ops.ones((2, 5, 3)))  # (2, 5, 32)

    Reference: Schuster & Paliwal, "Bidirectional Recurrent Neural Networks" (1997).
    """

    def __init__(self, layer, merge_mode="concat", **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, RNN):
            raise ValueError(
                f"layer must be a layers.RNN (RNN, LSTM or GRU); received layer={layer!r}"
            )
        if merge_mode not in MERGE_MODES:
            raise ValueError(
                f"merge_mode must be one of {MERGE_MODES}; received merge_mode={merge_mode!r}"
            )
        # Keep the config, not the layer: a tracked layer would add its weights to ours.
        self._layer_serialized = keras.saving.serialize_keras_object(layer)
        self.merge_mode = merge_mode
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.supports_masking = True

    def _copy_layer(self, prefix, flip_direction):
        serialized = copy.deepcopy(dict(self._layer_serialized))
        config = dict(serialized["config"])
        config["name"] = f"{prefix}_{config['name']}"
        # The copies compute in our dtype, so mixed_float16 reaches them.
        config["dtype"] = keras.dtype_policies.serialize(self.dtype_policy)
        if flip_direction:
            config["go_backwards"] = not config["go_backwards"]
        serialized["config"] = config
        return keras.saving.deserialize_keras_object(serialized)

    def build(self, inputs_shape):
        self.forward_layer = self._copy_layer("forward", flip_direction=False)
        self.backward_layer = self._copy_layer("backward", flip_direction=True)
        self.forward_layer.build(inputs_shape)
        self.backward_layer.build(inputs_shape)

    def call(self, inputs, padding_mask=None, initial_state=None, training=None, mask=None):
        padding_mask = padding_mask if padding_mask is not None else mask
        forward_state = backward_state = None
        if initial_state is not None:
            half = len(initial_state) // 2
            forward_state, backward_state = initial_state[:half], initial_state[half:]

        forward = self.forward_layer(
            inputs, padding_mask=padding_mask, initial_state=forward_state, training=training
        )
        backward = self.backward_layer(
            inputs, padding_mask=padding_mask, initial_state=backward_state, training=training
        )
        forward_states = backward_states = []
        if self.return_state:
            forward, *forward_states = forward
            backward, *backward_states = backward
        if self.return_sequences:
            backward = ops.flip(backward, axis=1)  # (B, T, U), back in input order

        if self.merge_mode == "concat":
            output = ops.concatenate([forward, backward], axis=-1)
        elif self.merge_mode == "sum":
            output = forward + backward
        elif self.merge_mode == "ave":
            output = (forward + backward) / 2
        else:
            output = forward * backward
        if self.return_state:
            return [output, *forward_states, *backward_states]
        return output

    def compute_mask(self, inputs, mask=None):
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            num_states = 2 * len(self.forward_layer.state_size)
            return [output_mask] + [None] * num_states
        return output_mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layer": copy.deepcopy(dict(self._layer_serialized)),
                "merge_mode": self.merge_mode,
            }
        )
        return config
