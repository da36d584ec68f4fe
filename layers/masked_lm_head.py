"""The masked-LM head of BERT: gather the masked positions, transform, tied logits + bias."""
import keras
from keras import ops

from layers.multi_head_attention import check_positive_int
from layers.transformer_encoder import clone_initializer


@keras.saving.register_keras_serializable(package="layers")
class MaskedLMHead(keras.layers.Layer):
    """Predicts the tokens at the masked positions of an encoded sequence.

    Gathers the hidden states at `mask_positions`, applies a dense layer (to the
    token embedding's width) with `intermediate_activation` and a layer norm,
    then projects to the vocabulary with the transposed token embedding (tied
    weights, `token_embedding(x, reverse=True)`) or with an own kernel, and adds a
    per-token bias (Devlin et al., 2019, as in the reference implementation).
    Weights are named and shaped as `keras_hub.layers.MaskedLMHead`'s, role by
    role.

    Tying in a model: pass the model's own `TokenAndPositionEmbedding(...)
    .token_embedding`, and build the head in the model's `__init__` from that
    embedding, so that a model loaded from its config is tied again (the
    `token_embedding` in this layer's config revives as a separate copy when the
    head is rebuilt on its own).

    Args:
        vocabulary_size: optional int V. Defaults to `token_embedding.input_dim`;
            required without `token_embedding`.
        token_embedding: optional `ReversibleEmbedding` (or any layer with
            `input_dim`, `output_dim` and `call(x, reverse=True)`) whose
            transpose gives the logits. Without it the head owns an
            `output_kernel` of shape `(D, V)`. Defaults to `None`.
        intermediate_activation: activation of the dense transform. Defaults to
            `"gelu"` (BERT).
        activation: activation of the outputs: `None` for logits or
            `"softmax"`. Defaults to `None`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        kernel_initializer: for the dense (and output) kernel. Defaults to
            `"glorot_uniform"`.
        bias_initializer: for the biases. Defaults to `"zeros"`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: float tensor `(B, T, D)`, the encoder's outputs.
        mask_positions: int tensor `(B, P)` of positions in `[0, T)` to predict
            (keras-hub's `MaskedLMMaskGenerator` pads unused slots with 0 and
            marks them with `mask_weights`, which the loss uses).

    Returns:
        Logits (or probabilities) `(B, P, V)` in the layer's compute dtype
        (float32 for `dtype="float32"` under a mixed policy); no Keras mask.

    Example:
    ```python
    embedding = TokenAndPositionEmbedding(1000, 128, 64, num_segments=2)
    hidden = encoder(embedding(ids, segment_ids=segments))  # (B, T, 64)
    head = MaskedLMHead(token_embedding=embedding.token_embedding)
    logits = head(hidden, mask_positions=positions)  # (B, P, 1000)
    ```

    Reference:
        [Devlin et al., 2019](https://arxiv.org/abs/1810.04805);
        [Press & Wolf, 2016](https://arxiv.org/abs/1608.05859).
    """

    def __init__(
        self,
        vocabulary_size=None,
        token_embedding=None,
        intermediate_activation="gelu",
        activation=None,
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("vocabulary_size", vocabulary_size, allow_none=True)
        if token_embedding is None and vocabulary_size is None:
            raise ValueError(
                "MaskedLMHead needs vocabulary_size or token_embedding; received "
                "vocabulary_size=None, token_embedding=None"
            )
        if token_embedding is not None:
            if not (hasattr(token_embedding, "input_dim") and hasattr(token_embedding, "output_dim")):
                raise ValueError(
                    "token_embedding must be a reversible embedding with input_dim and "
                    "output_dim (e.g. TokenAndPositionEmbedding(...).token_embedding); "
                    f"received {type(token_embedding).__name__}"
                )
            if vocabulary_size not in (None, token_embedding.input_dim):
                raise ValueError(
                    "vocabulary_size must equal token_embedding.input_dim; received "
                    f"vocabulary_size={vocabulary_size}, "
                    f"token_embedding.input_dim={token_embedding.input_dim}"
                )
            vocabulary_size = token_embedding.input_dim
        self.vocabulary_size = vocabulary_size
        self.token_embedding = token_embedding
        self.intermediate_activation = keras.activations.get(intermediate_activation)
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def build(self, inputs_shape, mask_positions_shape=None):
        if self.token_embedding is not None:
            features = self.token_embedding.output_dim
        else:
            features = inputs_shape[-1]
        self.intermediate_dense = keras.layers.Dense(
            features,
            activation=self.intermediate_activation,
            kernel_initializer=clone_initializer(self.kernel_initializer),
            bias_initializer=clone_initializer(self.bias_initializer),
            dtype=self.dtype_policy,
            name="intermediate_dense",
        )
        self.intermediate_dense.build((inputs_shape[0], None, inputs_shape[-1]))
        self.intermediate_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="intermediate_layer_norm"
        )
        self.intermediate_layer_norm.build((inputs_shape[0], None, features))
        if self.token_embedding is None:
            self.output_kernel = self.add_weight(
                name="output_kernel",
                shape=(features, self.vocabulary_size),
                initializer=clone_initializer(self.kernel_initializer),
            )
        self.output_bias = self.add_weight(
            name="output_bias",
            shape=(self.vocabulary_size,),
            initializer=clone_initializer(self.bias_initializer),
        )

    def call(self, inputs, mask_positions):
        positions = ops.cast(mask_positions, "int32")[:, :, None]  # (B, P, 1)
        x = ops.take_along_axis(inputs, positions, axis=1)  # (B, P, D)
        x = self.intermediate_dense(x)  # (B, P, F)
        x = self.intermediate_layer_norm(x)
        if self.token_embedding is not None:
            logits = self.token_embedding(x, reverse=True)  # (B, P, V)
        else:
            logits = ops.matmul(x, self.output_kernel)  # (B, P, V)
        logits = ops.cast(logits, self.compute_dtype) + self.output_bias
        return self.activation(logits)

    def compute_mask(self, inputs, mask=None):
        # A (B, T) mask of the inputs says nothing about the (B, P) predictions.
        return None

    def compute_output_shape(self, inputs_shape, mask_positions_shape):
        return tuple(mask_positions_shape) + (self.vocabulary_size,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "token_embedding": (
                    None
                    if self.token_embedding is None
                    else keras.layers.serialize(self.token_embedding)
                ),
                "intermediate_activation": keras.activations.serialize(
                    self.intermediate_activation
                ),
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("token_embedding") is not None:
            config["token_embedding"] = keras.layers.deserialize(config["token_embedding"])
        return cls(**config)
