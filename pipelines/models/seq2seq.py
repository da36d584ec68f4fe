"""One encoder-decoder for every task whose output is a token sequence (translation,
captioning; a decoder-only LM reuses the decoders).

`EncoderDecoder(encoder, decoder)` is the model: the encoder turns the source into an
`encoded` dict (`memory` (B, S, D), optional `mask` (B, S) of valid memory positions, optional
`summary` (B, H) that starts a recurrent decoder), the decoder turns `target_in` (B, T) and
`encoded` into logits (B, T, V). It implements, once for all of them:

- `model({source_key: ..., "target_in": (B, T)})` -> logits (B, T, V), teacher forcing;
- `state = model.encode(source)`, `logits, state = model.step(token_ids, state, index)`: the
  cached step that `pipelines.decoding.decode` drives (greedy or beam search, in the graph);
- `model.generate(source, ...)` -> token ids (B, L);
- `model.attention_maps(source, target_in)` -> (B, T, S) for pictures.

Encoders: `TransformerTextEncoder`, `RecurrentTextEncoder` (token ids) and `GridEncoder`
(pixels, a CNN grid with optional Transformer blocks over it). Decoders:
`TransformerDecoder` (causal blocks with cross-attention, key/value cache) and
`RecurrentDecoder` (an LSTM/GRU whose output attends over the memory, Luong et al. 2015 /
the "spatial attention" of Lu et al. 2017; the recurrent state is the cache). Backbones build
them (`Transformer.encoder_decoder`, `Recurrent.encoder_decoder`); tasks never do.
"""
from __future__ import annotations

from typing import Sequence

import keras
from keras import ops

import layers
from pipelines.decoding import decode
from pipelines.models.unet import input_scaling

_CELLS = {"lstm": layers.LSTM, "gru": layers.GRU}
_ATTENTION = ("additive", "dot", "general")


def _rnn_embedding(vocabulary_size, embedding_dim, name):
    """The recurrent encoder's and decoder's token table, initialised N(0, 1) as PyTorch's
    `nn.Embedding` (the recipes these models reproduce) rather than keras's uniform(+-0.05):
    with the small table the encoder memory starts ~100x smaller, attention starts uniform and
    learns nothing for hundreds of steps (a plateau at the target-LM loss, measured on one
    batch: 350 steps at loss 1.2 vs under 0.08 after 50 steps with N(0, 1))."""
    return keras.layers.Embedding(vocabulary_size, embedding_dim, mask_zero=True, name=name,
                                  embeddings_initializer=keras.initializers.RandomNormal(0.0, 1.0))


class EncoderDecoder(keras.Model):
    """An encoder over the source and a decoder over the target (see the module docstring).

    Args:
        encoder: a layer, source -> `encoded` dict.
        decoder: a `TransformerDecoder` or `RecurrentDecoder`.
        source_key: the name of the source in the model's input dict ("source" for text,
            "image" for pixels).
    """

    def __init__(self, encoder, decoder, source_key: str = "source", **kwargs):
        super().__init__(**kwargs)
        self.encoder, self.decoder, self.source_key = encoder, decoder, source_key

    def call(self, inputs, training=None):
        encoded = self.encoder(inputs[self.source_key], training=training)
        return self.decoder(inputs["target_in"], encoded, training=training)  # (B, T, V)

    def encode(self, source):
        """The decoding state that `step` advances: the memory and an empty cache."""
        return self.decoder.start(self.encoder(source, training=False))

    def step(self, token_ids, state, index):
        """token_ids (N,) at position `index` -> logits (N, V) and the next state."""
        return self.decoder.step(token_ids, state, index)

    def generate(self, source, start_id: int, end_id: int, max_length: int, beam_size: int = 1,
                 length_penalty: float = 0.0):
        """source -> token ids (B, max_length): greedy (`beam_size=1`) or beam search."""
        start = ops.full(ops.shape(source)[:1], start_id, dtype="int32")
        return decode(self.step, self.encode(source), start, max_length, end_id,
                      beam_size=beam_size, length_penalty=length_penalty)

    def attention_maps(self, source, target_in):
        """(B, T, S): where each target position attended in the memory, teacher forced."""
        return self.decoder.attention(target_in, self.encoder(source, training=False))


# ----------------------------------------------------------------------------- encoders
class TransformerTextEncoder(keras.layers.Layer):
    """Token ids (B, S), 0 = padding -> {"memory": (B, S, D), "mask": (B, S)}."""

    def __init__(self, vocabulary_size, sequence_length, hidden_dim, num_heads, intermediate_dim,
                 num_layers, dropout=0.1, normalize_first=False, positional="learned",
                 attention="softmax", **kwargs):
        super().__init__(**kwargs)
        self.embedding = layers.TokenAndPositionEmbedding(
            vocabulary_size, sequence_length, hidden_dim, positional=positional, name="embedding")
        self.dropout = layers.Dropout(dropout)
        self.blocks = [layers.TransformerEncoderBlock(
            hidden_dim, num_heads, intermediate_dim, dropout=dropout,
            normalize_first=normalize_first, attention=attention, name=f"block_{i}")
            for i in range(num_layers)]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5) if normalize_first else None

    def call(self, source, training=None):
        mask = ops.not_equal(source, 0)  # (B, S)
        x = self.dropout(self.embedding(source), training=training)
        for block in self.blocks:
            x = block(x, padding_mask=mask, training=training)
        if self.norm is not None:
            x = self.norm(x)
        return {"memory": x, "mask": mask}


class RecurrentTextEncoder(keras.layers.Layer):
    """Token ids (B, S) -> {"memory": (B, S, H), "mask": (B, S), "summary": (B, H')}: a stack
    of `num_layers` (bidirectional) LSTM/GRU layers; the summary joins the last layer's final
    states (both directions, h and c for an LSTM)."""

    def __init__(self, vocabulary_size, cell="lstm", embedding_dim=128, units=128, num_layers=1,
                 bidirectional=True, merge_mode="concat", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.embedding = _rnn_embedding(vocabulary_size, embedding_dim, "embedding")
        self.dropout = layers.Dropout(dropout)
        self.rnns = []
        for index in range(num_layers):
            last = index == num_layers - 1
            rnn = _CELLS[cell](units, return_sequences=True, return_state=last,
                               name=f"{cell}_{index}")
            if bidirectional:
                rnn = layers.Bidirectional(rnn, merge_mode=merge_mode, name=f"bi_{cell}_{index}")
            self.rnns.append(rnn)

    def call(self, source, training=None):
        mask = ops.not_equal(source, 0)  # (B, S)
        x = self.dropout(self.embedding(source), training=training)
        for rnn in self.rnns[:-1]:
            x = self.dropout(rnn(x, padding_mask=mask, training=training), training=training)
        outputs = self.rnns[-1](x, padding_mask=mask, training=training)
        memory, states = outputs[0], outputs[1:]  # (B, S, H); then every final state
        return {"memory": memory, "mask": mask, "summary": ops.concatenate(states, axis=-1)}


class GridEncoder(keras.layers.Layer):
    """Pixels (B, S, S, 3) in [0, 255] -> {"memory": (B, N, D), "summary": (B, D)}.

    Each entry of `filters` is one stride-2 `layers.ConvBlock`, so the grid side is
    S / 2^len(filters); a dense layer maps the channels to `dim` and a learned embedding adds
    each cell's position (so "left of" can be read off the grid); `num_layers` Transformer
    encoder blocks may follow. `mean`/`variance` are per-channel statistics of the training
    pixels that standardise the input (`pipelines.models.unet.input_scaling`).
    """

    def __init__(self, image_size: int, filters: Sequence[int], dim: int, norm="batch",
                 mean=None, variance=None, num_layers: int = 0, num_heads: int = 1,
                 intermediate_dim: int = 0, dropout: float = 0.0, normalize_first=False,
                 attention="softmax", **kwargs):
        super().__init__(**kwargs)
        step = 2 ** len(filters)
        if not filters or image_size % step:
            raise ValueError(
                f"task.image_size must be divisible by 2 ** len(task.encoder_filters) = {step}; "
                f"received image_size={image_size}, encoder_filters={list(filters)}")
        side = image_size // step
        # A functional model, built here: its Normalization holds the pixel statistics.
        pixels = keras.Input((image_size, image_size, 3), name="pixels")
        x = input_scaling(mean, variance)(pixels)
        for index, width in enumerate(filters):
            # Not residual: the 1x1 stride-2 projection's input gradient (Conv2DBackpropInput)
            # corrupts the heap under oneDNN in TF 2.21 (segfaults within ~60 steps here).
            x = layers.ConvBlock(int(width), strides=2, norm=norm,
                                 name=f"conv_{index}")(x)  # (B, S / 2^(i+1), S / 2^(i+1), F_i)
        x = keras.layers.Reshape((side * side, int(filters[-1])), name="to_grid")(x)  # (B, N, F)
        x = keras.layers.Dense(dim, activation="relu", name="grid_projection")(x)  # (B, N, D)
        x = x + layers.LearnedPositionalEmbedding(side * side, name="grid_position")(x)
        self.grid = keras.Model(pixels, x, name="grid")
        self.blocks = [layers.TransformerEncoderBlock(
            dim, num_heads, intermediate_dim, dropout=dropout, normalize_first=normalize_first,
            attention=attention, name=f"block_{i}") for i in range(num_layers)]
        self.norm = (keras.layers.LayerNormalization(epsilon=1e-5)
                     if normalize_first and num_layers else None)

    def call(self, pixels, training=None):
        x = self.grid(pixels, training=training)  # (B, N, D)
        for block in self.blocks:
            x = block(x, training=training)
        if self.norm is not None:
            x = self.norm(x)
        return {"memory": x, "summary": ops.mean(x, axis=1)}


# ----------------------------------------------------------------------------- decoders
class TransformerDecoder(keras.layers.Layer):
    """Causal decoder blocks with cross-attention over the memory; a key/value cache per
    block for incremental decoding (`start`/`step`).

    Args:
        vocabulary_size: V, ids 0 = padding.
        length: T, the longest decoder input (positions up to T; the cache's size).
        hidden_dim, num_heads, intermediate_dim, dropout, normalize_first: block sizes.
        num_layers: decoder blocks.
        positional: "learned" or "sinusoidal" positions.
    """

    def __init__(self, vocabulary_size, length, hidden_dim, num_heads, intermediate_dim,
                 num_layers, dropout=0.1, normalize_first=False, positional="learned", **kwargs):
        super().__init__(**kwargs)
        self.length, self.num_heads, self.head_dim = length, num_heads, hidden_dim // num_heads
        self.embedding = layers.TokenAndPositionEmbedding(
            vocabulary_size, length, hidden_dim, positional=positional, name="target_embedding")
        self.dropout = layers.Dropout(dropout)
        self.blocks = [layers.TransformerDecoderBlock(
            hidden_dim, num_heads, intermediate_dim, dropout=dropout,
            normalize_first=normalize_first, name=f"decoder_{i}") for i in range(num_layers)]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5) if normalize_first else None
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="head")

    def _logits(self, x):
        return self.head(self.norm(x) if self.norm is not None else x)

    def _blocks(self, target_in, encoded, training=None, scores=False):
        x = self.dropout(self.embedding(target_in), training=training)
        for index, block in enumerate(self.blocks):
            last = index == len(self.blocks) - 1
            x = block(x, encoder_outputs=encoded["memory"],
                      decoder_padding_mask=ops.not_equal(target_in, 0),
                      encoder_padding_mask=encoded.get("mask"), training=training,
                      return_cross_attention_scores=scores and last)
        return x  # (B, T, D), or with scores the last block's (x, (B, H, T, S))

    def call(self, target_in, encoded, training=None):
        return self._logits(self._blocks(target_in, encoded, training))  # (B, T, V)

    def attention(self, target_in, encoded):
        """(B, T, S): the last block's cross-attention, mean over heads."""
        return ops.mean(self._blocks(target_in, encoded, scores=True)[1], axis=1)

    def start(self, encoded):
        memory = encoded["memory"]
        cache = ops.zeros((ops.shape(memory)[0], len(self.blocks), 2, self.length,
                           self.num_heads, self.head_dim), dtype=memory.dtype)
        return {**{k: v for k, v in encoded.items() if k != "summary"}, "cache": cache}

    def step(self, token_ids, state, index):
        x = self.embedding(token_ids[:, None], start_index=index)  # (N, 1, D)
        caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, encoder_outputs=state["memory"],
                             encoder_padding_mask=state.get("mask"),
                             self_attention_cache=state["cache"][:, i],
                             self_attention_cache_index=index, training=False)
            caches.append(cache)
        return self._logits(x)[:, 0], {**state, "cache": ops.stack(caches, axis=1)}  # (N, V)


class RecurrentDecoder(keras.layers.Layer):
    """An LSTM/GRU over the target whose output attends over the memory (Luong et al., 2015;
    Lu et al., 2017's spatial attention for images): `tanh(W [h; context])` predicts the next
    token. Its initial states are `tanh` dense maps of the encoder's `summary`.

    Args:
        vocabulary_size: V, ids 0 = padding.
        cell: "lstm" or "gru".
        embedding_dim: E.
        units: U, the cell's units (the memory is projected to U).
        attention: "additive" (Bahdanau scores), "dot" or "general" (Luong scores).
        dropout: on the embeddings and the cell outputs.
    """

    def __init__(self, vocabulary_size, cell="lstm", embedding_dim=128, units=128,
                 attention="additive", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if cell not in _CELLS:
            raise ValueError(f"model.cell must be one of {sorted(_CELLS)}; received {cell!r}")
        if attention not in _ATTENTION:
            raise ValueError(f"model.attention must be one of {_ATTENTION}; received {attention!r}")
        self.num_states = 2 if cell == "lstm" else 1
        self.embedding = _rnn_embedding(vocabulary_size, embedding_dim, "target_embedding")
        self.dropout = layers.Dropout(dropout)
        self.bridges = [keras.layers.Dense(units, activation="tanh", name=f"bridge_{i}")
                        for i in range(self.num_states)]
        self.memory_projection = keras.layers.Dense(units, use_bias=False, name="memory_projection")
        self.rnn = _CELLS[cell](units, return_sequences=True, name="decoder")
        self.attention_layer = (layers.AdditiveAttention(units=units, name="attention")
                                if attention == "additive"
                                else layers.DotAttention(score_mode=attention, name="attention"))
        self.combine = keras.layers.Dense(units, activation="tanh", name="combine")
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="head")

    def start(self, encoded):
        """{"memory": projected (B, S, U), "mask"?, "states": initial states}."""
        state = {"memory": self.memory_projection(encoded["memory"]),
                 "states": [bridge(encoded["summary"]) for bridge in self.bridges]}
        if encoded.get("mask") is not None:
            state["mask"] = encoded["mask"]
        return state

    def _attend(self, h, state, return_scores=False):
        context, scores = self.attention_layer(h, state["memory"], padding_mask=state.get("mask"),
                                               return_scores=True)  # (B, T, U), (B, T, S)
        logits = self.head(self.combine(ops.concatenate([h, context], axis=-1)))
        return (logits, scores) if return_scores else logits

    def _decode(self, target_in, encoded, training=None, return_scores=False):
        state = self.start(encoded)
        x = self.dropout(self.embedding(target_in), training=training)
        h = self.rnn(x, padding_mask=ops.not_equal(target_in, 0), initial_state=state["states"],
                     training=training)  # (B, T, U)
        return self._attend(self.dropout(h, training=training), state, return_scores)

    def call(self, target_in, encoded, training=None):
        return self._decode(target_in, encoded, training)

    def attention(self, target_in, encoded):
        return self._decode(target_in, encoded, return_scores=True)[1]

    def step(self, token_ids, state, index):
        cell = self.rnn.cell
        x = self.embedding(token_ids)  # (N, E)
        h, states = cell.step(cell.input_projection(x), list(state["states"]))  # (N, U)
        return self._attend(h[:, None, :], state)[:, 0], {**state, "states": states}
