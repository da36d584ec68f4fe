"""`model=transformer`: encoders and encoder-decoders assembled from `layers/`.

`Transformer(...)` is what the model group's `_target_` instantiates. It plays the roles
`sequence_encoder` (`text_encoder`, `text_memory`), `sequence_decoder` (`decoder`,
`image_memory`) and `language_model` (`causal_lm`) of `pipelines.models.roles`.
"""
from __future__ import annotations

import keras
from keras import ops

import layers
from pipelines.models.recurrent import check_char_features
from pipelines.models.causal_lm import TransformerLM
from pipelines.models.seq2seq import GridEncoder, TransformerDecoder, TransformerTextEncoder


class Transformer:
    """Sizes of a Transformer (Vaswani et al., 2017) built from our blocks.

    Args:
        hidden_dim: model width D.
        num_heads: attention heads (must divide hidden_dim).
        intermediate_dim: feed-forward width.
        num_layers: encoder blocks.
        num_decoder_layers: decoder blocks (encoder-decoder tasks).
        dropout: dropout in every block and on the embeddings.
        normalize_first: pre-norm blocks (more stable for deep stacks).
        positional: "learned" or "sinusoidal" position information.
        attention: "softmax", or "linear" (encoder only, cost linear in length).
        char_features, char_dim, char_filters, crf: NER only (`pipelines.tasks.ner` builds
            the character encoder and the CRF from them; other tasks refuse them).
    """

    # trainer.jit_compile=auto: XLA/graph train steps per second measured by
    # `python -m benchmarks jit_families` on this project's 2-core CPU: 0.81; 0.77 on
    # 2026-12-04 with layers.Dropout.
    xla_on_cpu = False
    # decode.jit_compile=auto: XLA/graph beam-4 search sentences per second measured by
    # `python -m benchmarks jit_families --decode` on the same CPU: 1.22.
    xla_decode_on_cpu = True

    def __init__(self, hidden_dim: int = 128, num_heads: int = 4, intermediate_dim: int = 256,
                 num_layers: int = 2, num_decoder_layers: int = 2, dropout: float = 0.1,
                 normalize_first: bool = False, positional: str = "learned",
                 attention: str = "softmax", char_features: str = "none", char_dim: int = 30,
                 char_filters: int = 50, crf: bool = False):
        if hidden_dim % num_heads:
            raise ValueError(f"model.num_heads must divide model.hidden_dim; received "
                             f"hidden_dim={hidden_dim}, num_heads={num_heads}")
        self.hidden_dim, self.num_heads, self.intermediate_dim = hidden_dim, num_heads, intermediate_dim
        self.num_layers, self.num_decoder_layers = num_layers, num_decoder_layers
        self.dropout, self.normalize_first = dropout, normalize_first
        self.positional, self.attention = positional, attention
        self.char_features = check_char_features(char_features, char_dim, char_filters)
        self.char_dim, self.char_filters, self.crf = char_dim, char_filters, bool(crf)

    def _block_kwargs(self) -> dict:
        return dict(hidden_dim=self.hidden_dim, num_heads=self.num_heads,
                    intermediate_dim=self.intermediate_dim, dropout=self.dropout,
                    normalize_first=self.normalize_first)

    def text_encoder(self, vocabulary_size: int, sequence_length: int,
                     return_sequences: bool = False, feature_dim: int = 0,
                     num_segments: int | None = None) -> keras.Model:
        """Token ids (B, T) -> (B, T, D), or the masked mean over valid tokens (B, D).

        With `num_segments` (masked_lm) it takes `[token_ids, segment_ids]`, both (B, T).
        With `feature_dim` F > 0 the model takes `{"token_ids": (B, T), "features": (B, T, F)}`:
        the per-token features (e.g. character vectors) are concatenated to the embeddings
        and projected back to D.

        Any static T <= `sequence_length` (the size of the position table): length-bucketed
        batches are shorter. Positions 0..T-1 are the same whatever the padding, and padded
        keys are masked in attention and pooling, so a sentence's output does not depend on T.
        """
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        padding_mask = ops.not_equal(token_ids, 0)  # (B, T)
        embedding = layers.TokenAndPositionEmbedding(
            vocabulary_size, sequence_length, self.hidden_dim, positional=self.positional,
            num_segments=num_segments, name="embedding")
        inputs = token_ids
        if num_segments:  # BERT's segment (sentence A/B) embedding: inputs [token_ids, segment_ids]
            segment_ids = keras.Input((None,), dtype="int32", name="segment_ids")
            inputs = [token_ids, segment_ids]
            x = embedding(token_ids, segment_ids=segment_ids)
        else:
            x = embedding(token_ids)
        if feature_dim:
            features = keras.Input((None, feature_dim), name="features")
            inputs = {"token_ids": token_ids, "features": features}
            x = keras.layers.Concatenate(name="with_features")([x, features])  # (B, T, D + F)
            x = keras.layers.Dense(self.hidden_dim, name="feature_projection")(x)  # (B, T, D)
        x = layers.Dropout(self.dropout)(x)
        for index in range(self.num_layers):
            x = layers.TransformerEncoderBlock(**self._block_kwargs(), attention=self.attention,
                                               name=f"encoder_{index}")(x, padding_mask=padding_mask)
        if self.normalize_first:
            x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(x)
        if not return_sequences:
            x = MaskedMeanPooling(name="pooling")(x, padding_mask=padding_mask)  # (B, D)
        return keras.Model(inputs, x, name="transformer_encoder")

    def text_memory(self, vocabulary_size: int, sequence_length: int):
        """Ids (B, S) -> {"memory", "mask"}: embedding and `num_layers` encoder blocks
        (`model.attention`: softmax or linear)."""
        return TransformerTextEncoder(vocabulary_size, sequence_length, num_layers=self.num_layers,
                                      positional=self.positional, attention=self.attention,
                                      name="source_encoder", **self._block_kwargs())

    def image_memory(self, image_size: int, filters, norm, mean=None, variance=None):
        """A CNN grid at width `hidden_dim`, then `num_layers` encoder blocks over its cells."""
        return GridEncoder(image_size, filters, self.hidden_dim, norm, mean, variance,
                           num_layers=self.num_layers, attention=self.attention,
                           name="grid_encoder", **{k: v for k, v in self._block_kwargs().items()
                                                   if k != "hidden_dim"})

    def decoder(self, vocabulary_size: int, length: int):
        """`num_decoder_layers` causal blocks with cross-attention and a key/value cache."""
        return TransformerDecoder(vocabulary_size, length, num_layers=self.num_decoder_layers,
                                  positional=self.positional, name="decoder",
                                  **self._block_kwargs())

    def causal_lm(self, vocabulary_size: int, length: int):
        """GPT-style: `num_layers` decoder-only causal blocks (no cross-attention), tied
        output embedding, a key/value cache (`num_decoder_layers` and `attention` unused)."""
        return TransformerLM(vocabulary_size, length, num_layers=self.num_layers,
                             positional=self.positional, name="transformer_lm",
                             **self._block_kwargs())


@keras.saving.register_keras_serializable(package="pipelines")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean over the valid time steps: (B, T, D), padding_mask (B, T) -> (B, D)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, x, mask=None, padding_mask=None):
        return None  # the time axis is gone

    def call(self, x, padding_mask):
        weights = ops.cast(ops.expand_dims(padding_mask, -1), x.dtype)  # (B, T, 1)
        total = ops.sum(x * weights, axis=1)
        return total / ops.maximum(ops.sum(weights, axis=1), ops.cast(1.0, x.dtype))
