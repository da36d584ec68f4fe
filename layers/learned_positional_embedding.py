"""A trainable embedding per position (BERT / GPT-2 / ViT style)."""
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="layers")
class LearnedPositionalEmbedding(keras.layers.Layer):
    """Learned position embedding, the same shape as the embedded inputs.

    Holds a `(sequence_length, D)` table and returns its rows
    `start_index ... start_index + T - 1`, broadcast over the batch.

    Args:
        sequence_length: int, the largest number of positions.
        initializer: initializer of the table. Defaults to `"glorot_uniform"`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `(B, T, D)`; only its shape is used. `T` must not
            exceed `sequence_length`.
        start_index: int or scalar int tensor, the position of the first
            element of `inputs` (the current step in cached decoding).
            Defaults to `0`.

    Returns:
        A tensor `(B, T, D)`.

    Example:
    ```python
    tokens = keras.layers.Embedding(1000, 64)(np.ones((2, 10), "int32"))
    x = tokens + LearnedPositionalEmbedding(sequence_length=16)(tokens)
    ```

    Reference:
        [Devlin et al., 2019](https://arxiv.org/abs/1810.04805);
        [Gehring et al., 2017](https://arxiv.org/abs/1705.03122).
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(sequence_length, int) or sequence_length <= 0:
            raise ValueError(
                "sequence_length must be a positive int; "
                f"received sequence_length={sequence_length}"
            )
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)

    def build(self, inputs_shape):
        seq_length, hidden_dim = inputs_shape[-2], inputs_shape[-1]
        if seq_length is not None and seq_length > self.sequence_length:
            raise ValueError(
                "the input length must not exceed sequence_length; received "
                f"input length={seq_length}, sequence_length={self.sequence_length}"
            )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, hidden_dim),
            initializer=self.initializer,
        )

    def call(self, inputs, start_index=0):
        seq_length, hidden_dim = inputs.shape[-2], inputs.shape[-1]
        if seq_length is None:  # traced with an open length: read it at run time
            seq_length = ops.shape(inputs)[-2]
        embeddings = ops.convert_to_tensor(self.embeddings, self.compute_dtype)
        embeddings = ops.slice(
            embeddings, (start_index, 0), (seq_length, hidden_dim)
        )  # (T, D)
        return ops.broadcast_to(embeddings[None], ops.shape(inputs))  # (B, T, D)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
