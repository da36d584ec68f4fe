"""A token embedding whose transpose maps hidden states back to token logits."""
import keras
from keras import ops

from layers.transformer_encoder import clone_initializer


@keras.saving.register_keras_serializable(package="layers")
class ReversibleEmbedding(keras.layers.Layer):
    """Token embedding that, called with `reverse=True`, gives logits over the vocabulary.

    Forward, `call(ids)` looks up rows of the `(V, D)` table `E`, as
    `keras.layers.Embedding`. In reverse, `call(hidden, reverse=True)` projects
    `(B, T, D)` hidden states to `(B, T, V)` logits with `hidden @ E^T`: the output
    layer shares the input embedding (Press & Wolf, 2016), as in BERT and GPT-2.
    With `tie_weights=False` the reverse projection has its own `(D, V)` matrix.
    Neither direction has a bias; a head that wants one adds it (`MaskedLMHead`
    does). Weights are named and shaped as `keras_hub.layers.ReversibleEmbedding`'s
    (`embeddings`, then `reverse_embeddings` when untied), so `set_weights` copies
    across.

    Args:
        input_dim: int V, the vocabulary size.
        output_dim: int D, the size of the embedding vectors.
        tie_weights: bool, whether the reverse projection is `E^T`. Defaults to
            `True`.
        embeddings_initializer: initializer of `E` (and of the untied reverse
            matrix). Defaults to `"uniform"`, as `keras.layers.Embedding`.
        mask_zero: bool, whether id 0 is padding: the forward output then carries
            a `(B, T)` Keras mask that is `False` at id 0. Defaults to `False`.
        reverse_dtype: optional dtype of the reverse projection: the hidden
            states and the kernel are cast to it before the matmul. Defaults to
            `None`, the layer's compute dtype (float16 under `mixed_float16`);
            `"float32"` gives float32 logits under mixed precision, with the
            kernel at full precision.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: int tensor `(B, T)` of token ids; with `reverse=True`, a float
            tensor `(B, T, D)` of hidden states (any leading axes work).
        reverse: bool, project hidden states to logits instead of embedding ids.
            Defaults to `False`.

    Returns:
        Forward: a tensor `(B, T, D)` in the compute dtype, with the mask
        `ids != 0` when `mask_zero=True`. Reverse: logits `(B, T, V)` in
        `reverse_dtype` (the compute dtype by default); the implicit mask of the
        hidden states passes through.

    Example:
    ```python
    embedding = ReversibleEmbedding(input_dim=1000, output_dim=64)
    hidden = embedding(token_ids)  # (B, T, 64)
    logits = embedding(hidden, reverse=True)  # (B, T, 1000)
    ```

    Reference:
        [Press & Wolf, 2016](https://arxiv.org/abs/1608.05859);
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), section 3.4.
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        tie_weights=True,
        embeddings_initializer="uniform",
        mask_zero=False,
        reverse_dtype=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int; received {name}={value!r}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.tie_weights = tie_weights
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.mask_zero = mask_zero
        self.reverse_dtype = (
            None if reverse_dtype is None else keras.backend.standardize_dtype(reverse_dtype)
        )
        # Inputs and weights are cast explicitly in `call`: autocasting would
        # round them to float16 before a float32 `reverse_dtype` could see them.
        self.autocast = False
        self.supports_masking = True

    def build(self, inputs_shape=None):
        # `_embeddings` behind an `embeddings` property, as `keras.layers.Embedding`:
        # checkpoints written with a plain Embedding restore into this layer.
        self._embeddings = self.add_weight(
            name="embeddings",
            shape=(self.input_dim, self.output_dim),
            initializer=clone_initializer(self.embeddings_initializer),
            autocast=False,
        )
        if not self.tie_weights:
            self.reverse_embeddings = self.add_weight(
                name="reverse_embeddings",
                shape=(self.output_dim, self.input_dim),
                initializer=clone_initializer(self.embeddings_initializer),
                autocast=False,
            )

    @property
    def embeddings(self):
        """The `(V, D)` table, a float variable in the variable dtype."""
        return self._embeddings

    def call(self, inputs, reverse=False):
        if not reverse:
            ids = ops.cast(inputs, "int32")
            return ops.cast(ops.take(self.embeddings, ids, axis=0), self.compute_dtype)
        kernel = ops.transpose(self.embeddings) if self.tie_weights else self.reverse_embeddings
        dtype = self.reverse_dtype or self.compute_dtype
        return ops.matmul(ops.cast(inputs, dtype), ops.cast(kernel, dtype))  # (B, T, V)

    def compute_mask(self, inputs, mask=None):
        if keras.backend.is_float_dtype(inputs.dtype):  # reverse: hidden states
            return mask
        if not self.mask_zero:
            return None
        return ops.not_equal(inputs, 0)  # (B, T)

    def compute_output_shape(self, inputs_shape, reverse=False):
        if reverse:
            return tuple(inputs_shape[:-1]) + (self.input_dim,)
        return tuple(inputs_shape) + (self.output_dim,)

    def compute_output_spec(self, inputs, reverse=False):
        dtype = (self.reverse_dtype or self.compute_dtype) if reverse else self.compute_dtype
        shape = self.compute_output_shape(inputs.shape, reverse=reverse)
        return keras.KerasTensor(shape, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "tie_weights": self.tie_weights,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "mask_zero": self.mask_zero,
                "reverse_dtype": self.reverse_dtype,
            }
        )
        return config
