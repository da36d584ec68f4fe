"""`model=transformer`: encoders and encoder-decoders assembled from `layers/`.

`Transformer(...)` is what the model group's `_target_` instantiates; tasks ask it for
`text_encoder(...)` (sentiment, NER) or `seq2seq(...)` (translation).
"""
from __future__ import annotations

import keras
from keras import ops

import layers


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
    """

    def __init__(self, hidden_dim: int = 128, num_heads: int = 4, intermediate_dim: int = 256,
                 num_layers: int = 2, num_decoder_layers: int = 2, dropout: float = 0.1,
                 normalize_first: bool = False, positional: str = "learned",
                 attention: str = "softmax"):
        if hidden_dim % num_heads:
            raise ValueError(f"model.num_heads must divide model.hidden_dim; received "
                             f"hidden_dim={hidden_dim}, num_heads={num_heads}")
        self.hidden_dim, self.num_heads, self.intermediate_dim = hidden_dim, num_heads, intermediate_dim
        self.num_layers, self.num_decoder_layers = num_layers, num_decoder_layers
        self.dropout, self.normalize_first = dropout, normalize_first
        self.positional, self.attention = positional, attention

    def _block_kwargs(self) -> dict:
        return dict(hidden_dim=self.hidden_dim, num_heads=self.num_heads,
                    intermediate_dim=self.intermediate_dim, dropout=self.dropout,
                    normalize_first=self.normalize_first)

    def text_encoder(self, vocabulary_size: int, sequence_length: int,
                     return_sequences: bool = False) -> keras.Model:
        """Token ids (B, T) -> (B, T, D), or the masked mean over valid tokens (B, D).

        Any static T <= `sequence_length` (the size of the position table): length-bucketed
        batches are shorter. Positions 0..T-1 are the same whatever the padding, and padded
        keys are masked in attention and pooling, so a sentence's output does not depend on T.
        """
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        padding_mask = ops.not_equal(token_ids, 0)  # (B, T)
        x = layers.TokenAndPositionEmbedding(vocabulary_size, sequence_length, self.hidden_dim,
                                             positional=self.positional, name="embedding")(token_ids)
        x = keras.layers.Dropout(self.dropout)(x)
        for index in range(self.num_layers):
            x = layers.TransformerEncoderBlock(**self._block_kwargs(), attention=self.attention,
                                               name=f"encoder_{index}")(x, padding_mask=padding_mask)
        if self.normalize_first:
            x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(x)
        if not return_sequences:
            x = MaskedMeanPooling(name="pooling")(x, padding_mask=padding_mask)  # (B, D)
        return keras.Model(token_ids, x, name="transformer_encoder")

    def seq2seq(self, source_vocabulary_size: int, target_vocabulary_size: int,
                source_length: int, target_length: int) -> "TransformerSeq2Seq":
        return TransformerSeq2Seq(
            source_vocabulary_size, target_vocabulary_size, source_length, target_length,
            num_encoder_layers=self.num_layers, num_decoder_layers=self.num_decoder_layers,
            positional=self.positional, **self._block_kwargs(),
        )

    def captioner(self, vocabulary_size: int, caption_length: int, image_size: int,
                  encoder_filters, encoder_norm: str | None = "batch", mean=None,
                  variance=None) -> keras.Model:
        """A CNN grid encoder, `num_layers` encoder blocks over the grid, and decoder blocks
        with cross-attention (`pipelines.models.captioning.TransformerCaptioner`)."""
        from pipelines.models.captioning import TransformerCaptioner

        return TransformerCaptioner(
            vocabulary_size, caption_length, image_size, encoder_filters,
            num_encoder_layers=self.num_layers, num_decoder_layers=self.num_decoder_layers,
            positional=self.positional, encoder_norm=encoder_norm, pixel_mean=mean,
            pixel_variance=variance, name="transformer_captioner", **self._block_kwargs(),
        )


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


class TransformerSeq2Seq(keras.Model):
    """Encoder-decoder Transformer with a key/value cache for incremental decoding.

    Call: `model({"source": (B, S) ids, "target_in": (B, T) ids})` -> logits (B, T, V),
    teacher forcing with a causal mask. Decoding: `state = model.encode(source)`, then
    `logits, state = model.step(token_ids, state, index)` one token at a time; `step` runs
    only the new position against the cached keys and values of the earlier ones.
    """

    def __init__(self, source_vocabulary_size, target_vocabulary_size, source_length,
                 target_length, hidden_dim, num_heads, intermediate_dim, num_encoder_layers,
                 num_decoder_layers, dropout=0.1, normalize_first=False, positional="learned",
                 **kwargs):
        super().__init__(**kwargs)
        self.target_length = target_length
        self.head_dim = hidden_dim // num_heads
        self.num_heads = num_heads
        block = dict(hidden_dim=hidden_dim, num_heads=num_heads, intermediate_dim=intermediate_dim,
                     dropout=dropout, normalize_first=normalize_first)
        self.source_embedding = layers.TokenAndPositionEmbedding(
            source_vocabulary_size, source_length, hidden_dim, positional=positional,
            name="source_embedding")
        self.target_embedding = layers.TokenAndPositionEmbedding(
            target_vocabulary_size, target_length, hidden_dim, positional=positional,
            name="target_embedding")
        self.embedding_dropout = keras.layers.Dropout(dropout)
        self.encoder_blocks = [layers.TransformerEncoderBlock(**block, name=f"encoder_{i}")
                               for i in range(num_encoder_layers)]
        self.decoder_blocks = [layers.TransformerDecoderBlock(**block, name=f"decoder_{i}")
                               for i in range(num_decoder_layers)]
        self.encoder_norm = keras.layers.LayerNormalization(epsilon=1e-5) if normalize_first else None
        self.decoder_norm = keras.layers.LayerNormalization(epsilon=1e-5) if normalize_first else None
        self.head = keras.layers.Dense(target_vocabulary_size, dtype="float32", name="head")

    def _encode(self, source, training=None):
        source_mask = ops.not_equal(source, 0)  # (B, S)
        x = self.embedding_dropout(self.source_embedding(source), training=training)
        for block in self.encoder_blocks:
            x = block(x, padding_mask=source_mask, training=training)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return x, source_mask  # (B, S, D), (B, S)

    def _logits(self, x):
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return self.head(x)

    def call(self, inputs, training=None):
        memory, source_mask = self._encode(inputs["source"], training)
        target_in = inputs["target_in"]
        x = self.embedding_dropout(self.target_embedding(target_in), training=training)
        for block in self.decoder_blocks:
            x = block(x, encoder_outputs=memory, decoder_padding_mask=ops.not_equal(target_in, 0),
                      encoder_padding_mask=source_mask, training=training)
        return self._logits(x)  # (B, T, V)

    def attention_maps(self, source, target_in):
        """(B, T, S): the last decoder block's cross-attention, mean over heads."""
        memory, source_mask = self._encode(source)
        x = self.target_embedding(target_in)
        target_mask = ops.not_equal(target_in, 0)
        for block in self.decoder_blocks[:-1]:
            x = block(x, encoder_outputs=memory, decoder_padding_mask=target_mask,
                      encoder_padding_mask=source_mask)
        _, scores = self.decoder_blocks[-1](
            x, encoder_outputs=memory, decoder_padding_mask=target_mask,
            encoder_padding_mask=source_mask, return_cross_attention_scores=True)
        return ops.mean(scores, axis=1)

    def encode(self, source):
        """Decoding state for `step`: memory, its mask and an empty cache per layer."""
        memory, source_mask = self._encode(source, training=False)
        batch = ops.shape(source)[0]
        cache = ops.zeros((batch, len(self.decoder_blocks), 2, self.target_length,
                           self.num_heads, self.head_dim), dtype=memory.dtype)
        return {"memory": memory, "source_mask": source_mask, "cache": cache}

    def step(self, token_ids, state, index):
        """token_ids (N,) at position `index` -> logits (N, V) and the updated state."""
        x = self.target_embedding(token_ids[:, None], start_index=index)  # (N, 1, D)
        caches = []
        for i, block in enumerate(self.decoder_blocks):
            x, cache = block(x, encoder_outputs=state["memory"],
                             encoder_padding_mask=state["source_mask"],
                             self_attention_cache=state["cache"][:, i],
                             self_attention_cache_index=index, training=False)
            caches.append(cache)
        logits = self._logits(x)[:, 0]  # (N, V)
        return logits, {**state, "cache": ops.stack(caches, axis=1)}
