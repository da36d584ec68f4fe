"""Fixed sine/cosine position encoding (Vaswani et al., 2017)."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="layers")
class SinusoidalPositionalEncoding(keras.layers.Layer):
    """Sinusoidal position encoding, the same shape as the embedded inputs.

    `PE[pos, 2i] = sin(pos / max_wavelength^(2i / D))` and
    `PE[pos, 2i + 1] = cos(pos / max_wavelength^(2i / D))`. The layer has no
    weights; add its output to the token embeddings.

    Args:
        max_wavelength: int, the longest wavelength of the sine/cosine curves.
            Defaults to `10000`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `(B, T, D)`; only its shape is used.
        start_index: int or scalar int tensor, the position of the first
            element of `inputs`. Cached decoding passes the current step so that
            a `(B, 1, D)` input gets the encoding of position `start_index`.
            Defaults to `0`.

    Returns:
        A tensor `(B, T, D)` with the encoding of positions
        `start_index ... start_index + T - 1`.

    Example:
    ```python
    tokens = keras.layers.Embedding(1000, 64)(np.ones((2, 10), "int32"))
    x = tokens + SinusoidalPositionalEncoding()(tokens)  # (2, 10, 64)
    ```

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), section 3.5.
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        super().__init__(**kwargs)
        if not max_wavelength or max_wavelength <= 0:
            raise ValueError(
                "max_wavelength must be a positive number; "
                f"received max_wavelength={max_wavelength}"
            )
        self.max_wavelength = max_wavelength

    def build(self, inputs_shape):
        self.built = True

    def call(self, inputs, start_index=0):
        seq_length, hidden_dim = inputs.shape[-2], inputs.shape[-1]
        # Computed in float32 whatever the policy: float16 angles lose the
        # position for pos > 2048 and the fast frequencies for much less.
        positions = ops.cast(ops.arange(seq_length), "float32")
        positions = positions + ops.cast(start_index, "float32")  # (T,)
        two_i = ops.cast(2 * (ops.arange(hidden_dim) // 2), "float32")  # (D,)
        inverse_frequency = ops.power(
            ops.cast(self.max_wavelength, "float32"), -two_i / float(hidden_dim)
        )  # (D,)
        angles = positions[:, None] * inverse_frequency[None, :]  # (T, D)
        is_odd = ops.arange(hidden_dim) % 2 == 1  # (D,)
        encoding = ops.where(is_odd[None, :], ops.cos(angles), ops.sin(angles))
        encoding = ops.cast(encoding, self.compute_dtype)  # (T, D)
        return ops.broadcast_to(encoding[None], ops.shape(inputs))  # (B, T, D)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config
