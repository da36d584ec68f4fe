"""Image captioning networks: a CNN grid encoder and two decoders over its grid.

- `grid_encoder`: pixels (B, S, S, 3) -> a grid of features (B, N, D), N = (S / 2^L)^2,
  from strided `layers.ConvBlock`s, with a learned position per cell (so that
  "left of" and "in the top right" can be read off the grid).
- `RecurrentCaptioner` (`model=lstm|gru`): Show, Attend and Tell (Xu et al., 2015). At every
  step the previous hidden state attends over the grid (`layers.AdditiveAttention`), the
  context joins the word embedding as the cell input, and a deep output layer
  `tanh(W [h; context; embedding])` predicts the next word.
- `TransformerCaptioner` (`model=transformer`): optional encoder blocks over the grid, then
  `layers.TransformerDecoderBlock`s with causal self-attention (key/value cache) and
  cross-attention over the grid.

Both share the interface of the translation seq2seq models: `model({"image", "target_in"})`
-> logits (B, T, V) under teacher forcing; `state = model.encode(images)` and
`logits, state = model.step(token_ids, state, index)` for `pipelines.decoding.decode`; and
`model.attention_maps(images, target_in)` -> (B, T, N) attention weights for pictures.
The factories `Recurrent.captioner(...)` / `Transformer.captioner(...)` build them.
"""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf
from keras import ops

import layers
from pipelines.models.unet import input_scaling


def grid_encoder(image_size: int, filters: Sequence[int], dim: int,
                 norm: str | None = "batch", name: str = "grid_encoder", mean=None,
                 variance=None) -> keras.Model:
    """Pixels (B, S, S, 3) in [0, 255] -> grid features (B, N, dim).

    `mean`/`variance`: per-channel statistics of the training pixels, to standardise the
    input (`pipelines.models.unet.input_scaling`); without them pixels are scaled to [0, 1].

    Each entry of `filters` is one ConvBlock with stride 2, so the grid side is
    S / 2^len(filters); a dense layer maps the channels to `dim`, and a learned embedding
    adds each cell's position.
    """
    step = 2 ** len(filters)
    if not filters or image_size % step:
        raise ValueError(
            f"task.image_size must be divisible by 2 ** len(task.encoder_filters) = {step}; "
            f"received image_size={image_size}, encoder_filters={list(filters)}"
        )
    side = image_size // step
    pixels = keras.Input((image_size, image_size, 3), name="pixels")
    x = input_scaling(mean, variance)(pixels)
    for index, width in enumerate(filters):
        # Not residual: the 1x1 stride-2 projection's input gradient (Conv2DBackpropInput)
        # corrupts the heap under oneDNN in TF 2.21 (segfaults within ~60 steps here).
        x = layers.ConvBlock(int(width), strides=2, norm=norm,
                             name=f"conv_{index}")(x)  # (B, S / 2^(i+1), S / 2^(i+1), F_i)
    x = keras.layers.Reshape((side * side, int(filters[-1])), name="to_grid")(x)  # (B, N, F)
    x = keras.layers.Dense(dim, activation="relu", name="grid_projection")(x)  # (B, N, D)
    positions = layers.LearnedPositionalEmbedding(side * side, name="grid_position")(x)
    return keras.Model(pixels, x + positions, name=name)


class RecurrentCaptioner(keras.Model):
    """Show, Attend and Tell: an LSTM/GRU decoder with additive attention over the grid.

    Args:
        vocabulary_size: V, ids 0 = padding.
        image_size: S, the square input side.
        encoder_filters: channels of the grid encoder's stride-2 blocks.
        cell: "lstm" or "gru".
        embedding_dim: word embedding width E.
        units: hidden units U (also the grid feature width and attention size).
        dropout: on embeddings and before the output layer.
        encoder_norm: norm of the encoder's ConvBlocks.
        pixel_mean, pixel_variance: per-channel training pixel statistics (see
            `grid_encoder`).

    Call: `model({"image": (B, S, S, 3), "target_in": (B, T)})` -> logits (B, T, V).
    """

    def __init__(self, vocabulary_size, image_size, encoder_filters, cell="lstm",
                 embedding_dim=128, units=128, dropout=0.0, encoder_norm="batch",
                 pixel_mean=None, pixel_variance=None, **kwargs):
        super().__init__(**kwargs)
        cells = {"lstm": layers.LSTMCell, "gru": layers.GRUCell}
        if cell not in cells:
            raise ValueError(f"model.cell must be one of {sorted(cells)}; received {cell!r}")
        self.cell_name, self.units = cell, units
        self.encoder = grid_encoder(image_size, encoder_filters, units, encoder_norm,
                                    mean=pixel_mean, variance=pixel_variance)
        grid_shape = self.encoder.output_shape  # (None, N, U)
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        self.initial = [keras.layers.Dense(units, activation="tanh", name=f"initial_{i}")
                        for i in range(self.num_states)]
        # units=None: score = v . tanh(query + key); the W1/W2 projections are `query` (per
        # step) and the grid encoder's output (once per image), which is cheaper.
        self.query = keras.layers.Dense(units, use_bias=False, name="query")
        self.attention = layers.AdditiveAttention(units=None, name="attention")
        self.cell = cells[cell](units, name=f"{cell}_cell")
        # The recurrent part runs inside a tf.while_loop, where no variable may be created.
        self.query.build((None, units))
        self.attention.build((None, 1, units), grid_shape)
        self.cell.build((None, embedding_dim + units))
        self.dropout = keras.layers.Dropout(dropout)
        self.combine = keras.layers.Dense(embedding_dim, activation="tanh", name="combine")
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="head")

    @property
    def num_states(self) -> int:
        return 2 if self.cell_name == "lstm" else 1

    def _start(self, images, training=None):
        memory = self.encoder(images, training=training)  # (B, N, U)
        mean = ops.mean(memory, axis=1)  # (B, U)
        return memory, [dense(mean) for dense in self.initial]

    def _recur(self, embedded, states, memory):
        """One step: the last hidden state attends over the grid, the context and the word
        enter the cell. embedded (B, E) -> h (B, U), context (B, U), weights (B, N), states."""
        query = self.query(states[0])[:, None, :]  # (B, 1, U)
        context, weights = self.attention(query, memory, return_scores=True)  # (B, 1, U), (B, 1, N)
        context = context[:, 0]
        x = ops.concatenate([embedded, context], axis=-1)  # (B, E + U)
        h, states = self.cell.step(self.cell.input_projection(x), list(states))  # (B, U)
        return h, context, weights[:, 0], states

    def _output(self, h, context, embedded, training=None):
        """Deep output layer: tanh(W [h; context; embedding]) -> logits, (B, [T,] V)."""
        out = self.combine(ops.concatenate([h, context, embedded], axis=-1))
        return self.head(self.dropout(out, training=training))

    def _teacher_forced(self, images, target_in, training=None):
        """Logits (B, T, V) and attention weights (B, T, N) for the given decoder inputs.

        Outputs at a position never depend on later positions, so padding after [END]
        changes nothing before it; the loss masks the padded positions themselves."""
        memory, states = self._start(images, training)
        embedded = self.dropout(self.embedding(target_in), training=training)  # (B, T, E)
        steps = target_in.shape[1]
        time_major = ops.transpose(embedded, (1, 0, 2))  # (T, B, E)
        inputs_ta = tf.TensorArray(embedded.dtype, size=steps,
                                   element_shape=time_major.shape[1:]).unstack(time_major)

        def body(t, states, h_ta, context_ta, weights_ta):
            h, context, weights, states = self._recur(inputs_ta.read(t), list(states), memory)
            return (t + 1, tuple(states), h_ta.write(t, h), context_ta.write(t, context),
                    weights_ta.write(t, weights))

        batch = memory.shape[0]
        arrays = [tf.TensorArray(memory.dtype, size=steps, element_shape=(batch, width))
                  for width in (self.units, self.units, memory.shape[1])]
        _, _, *arrays = tf.while_loop(lambda t, *_: t < steps, body,
                                      (tf.constant(0), tuple(states), *arrays),
                                      maximum_iterations=steps)
        h, context, weights = (ops.transpose(a.stack(), (1, 0, 2)) for a in arrays)  # (B, T, .)
        return self._output(h, context, embedded, training), weights

    def call(self, inputs, training=None):
        return self._teacher_forced(inputs["image"], inputs["target_in"], training)[0]

    def attention_maps(self, images, target_in):
        """(B, T, N): where each position looked on the grid, teacher forced."""
        return self._teacher_forced(images, target_in, training=False)[1]

    def encode(self, images):
        memory, states = self._start(images, training=False)
        return {"memory": memory, "states": states}

    def step(self, token_ids, state, index):
        """token_ids (N,) -> logits (N, V); the recurrent state is the cache."""
        embedded = self.embedding(token_ids)  # (N, E)
        h, context, _, states = self._recur(embedded, state["states"], state["memory"])
        return self._output(h, context, embedded), {**state, "states": states}


class TransformerCaptioner(keras.Model):
    """Transformer decoder blocks with cross-attention over the image grid, KV-cached.

    Args:
        vocabulary_size: V, ids 0 = padding.
        caption_length: T, the longest decoder input (positions are learned up to T).
        image_size: S.
        encoder_filters: channels of the grid encoder's stride-2 blocks.
        hidden_dim, num_heads, intermediate_dim, dropout, normalize_first: block sizes.
        num_encoder_layers: Transformer encoder blocks over the grid (0 = none).
        num_decoder_layers: decoder blocks.
        positional: "learned" or "sinusoidal" positions of the words.
        encoder_norm: norm of the encoder's ConvBlocks.
        pixel_mean, pixel_variance: per-channel training pixel statistics (see
            `grid_encoder`).
    """

    def __init__(self, vocabulary_size, caption_length, image_size, encoder_filters, hidden_dim,
                 num_heads, intermediate_dim, num_encoder_layers, num_decoder_layers, dropout=0.1,
                 normalize_first=False, positional="learned", encoder_norm="batch",
                 pixel_mean=None, pixel_variance=None, **kwargs):
        super().__init__(**kwargs)
        self.caption_length = caption_length
        self.num_heads, self.head_dim = num_heads, hidden_dim // num_heads
        self.normalize_first = normalize_first
        block = dict(hidden_dim=hidden_dim, num_heads=num_heads, intermediate_dim=intermediate_dim,
                     dropout=dropout, normalize_first=normalize_first)
        self.encoder = grid_encoder(image_size, encoder_filters, hidden_dim, encoder_norm,
                                    mean=pixel_mean, variance=pixel_variance)
        self.encoder_blocks = [layers.TransformerEncoderBlock(**block, name=f"encoder_{i}")
                               for i in range(num_encoder_layers)]
        self.target_embedding = layers.TokenAndPositionEmbedding(
            vocabulary_size, caption_length, hidden_dim, positional=positional,
            name="target_embedding")
        self.embedding_dropout = keras.layers.Dropout(dropout)
        self.decoder_blocks = [layers.TransformerDecoderBlock(**block, name=f"decoder_{i}")
                               for i in range(num_decoder_layers)]
        self.encoder_norm = keras.layers.LayerNormalization(epsilon=1e-5) if normalize_first else None
        self.decoder_norm = keras.layers.LayerNormalization(epsilon=1e-5) if normalize_first else None
        self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="head")

    def _memory(self, images, training=None):
        x = self.encoder(images, training=training)  # (B, N, D)
        for block in self.encoder_blocks:
            x = block(x, training=training)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return x

    def _logits(self, x):
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return self.head(x)

    def call(self, inputs, training=None):
        memory = self._memory(inputs["image"], training)
        target_in = inputs["target_in"]
        x = self.embedding_dropout(self.target_embedding(target_in), training=training)
        for block in self.decoder_blocks:
            x = block(x, encoder_outputs=memory, decoder_padding_mask=ops.not_equal(target_in, 0),
                      training=training)
        return self._logits(x)  # (B, T, V)

    def encode(self, images):
        """Decoding state for `step`: the grid memory and an empty cache per block."""
        memory = self._memory(images, training=False)
        batch = ops.shape(images)[0]
        cache = ops.zeros((batch, len(self.decoder_blocks), 2, self.caption_length,
                           self.num_heads, self.head_dim), dtype=memory.dtype)
        return {"memory": memory, "cache": cache}

    def step(self, token_ids, state, index):
        """token_ids (N,) at position `index` -> logits (N, V) and the updated state."""
        x = self.target_embedding(token_ids[:, None], start_index=index)  # (N, 1, D)
        caches = []
        for i, block in enumerate(self.decoder_blocks):
            x, cache = block(x, encoder_outputs=state["memory"],
                             self_attention_cache=state["cache"][:, i],
                             self_attention_cache_index=index, training=False)
            caches.append(cache)
        return self._logits(x)[:, 0], {**state, "cache": ops.stack(caches, axis=1)}

    def attention_maps(self, images, target_in):
        """(B, T, N): the last decoder block's cross-attention, mean over heads."""
        memory = self._memory(images, training=False)
        padding_mask = ops.not_equal(target_in, 0)
        x = self.target_embedding(target_in)
        for block in self.decoder_blocks:
            x, weights = block(x, encoder_outputs=memory, decoder_padding_mask=padding_mask,
                               return_cross_attention_scores=True)  # (B, T, D), (B, H, T, N)
        return ops.mean(weights, axis=1)
