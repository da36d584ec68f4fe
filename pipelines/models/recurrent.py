"""`model=lstm` / `model=gru`: recurrent backbones assembled from `layers/`.

The factory is what the model group's `_target_` instantiates; a task asks it for the
network that fits its shapes (`text_encoder(...)`), so the backbone knows nothing of tasks.
"""
from __future__ import annotations

import keras
from keras import ops

import layers

_CELLS = {"lstm": layers.LSTM, "gru": layers.GRU}


class Recurrent:
    """Embedding -> a stack of (bidirectional) LSTM/GRU layers of our own.

    Args:
        cell: "lstm" or "gru".
        embedding_dim: token embedding width.
        units: hidden units per direction.
        num_layers: stacked recurrent layers.
        bidirectional: run each layer both ways (`merge_mode` combines them).
        merge_mode: "concat" or "sum".
        dropout: dropout on the embeddings and between layers.
        attention: the decoder's attention in encoder-decoder tasks.
    """

    def __init__(self, cell: str = "lstm", embedding_dim: int = 128, units: int = 128,
                 num_layers: int = 1, bidirectional: bool = True, merge_mode: str = "concat",
                 dropout: float = 0.0, attention: str = "additive"):
        if cell not in _CELLS:
            raise ValueError(f"model.cell must be one of {sorted(_CELLS)}; received {cell!r}")
        if num_layers < 1:
            raise ValueError(f"model.num_layers must be >= 1; received {num_layers}")
        self.cell, self.embedding_dim, self.units = cell, embedding_dim, units
        self.num_layers, self.bidirectional, self.merge_mode = num_layers, bidirectional, merge_mode
        self.dropout, self.attention = dropout, attention

    def _recurrent(self, return_sequences: bool, name: str) -> keras.layers.Layer:
        layer = _CELLS[self.cell](self.units, return_sequences=return_sequences, name=name)
        if self.bidirectional:
            layer = layers.Bidirectional(layer, merge_mode=self.merge_mode, name=f"bi_{name}")
        return layer

    def text_encoder(self, vocabulary_size: int, sequence_length: int,
                     return_sequences: bool = False) -> keras.Model:
        """Token ids (B, T), 0 = padding -> (B, T, H) if return_sequences else (B, H).

        The padding mask flows from `Embedding(mask_zero=True)` into every recurrent layer,
        so padded steps neither update the state nor reach the output. T is free (a time
        dimension of None): length-bucketed batches are shorter than `sequence_length`.
        """
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        x = keras.layers.Embedding(vocabulary_size, self.embedding_dim, mask_zero=True,
                                   name="embedding")(token_ids)  # (B, T, E)
        x = keras.layers.Dropout(self.dropout)(x)
        for index in range(self.num_layers):
            last = index == self.num_layers - 1
            x = self._recurrent(return_sequences or not last, name=f"{self.cell}_{index}")(x)
            if not last:
                x = keras.layers.Dropout(self.dropout)(x)  # (B, T, H)
        return keras.Model(token_ids, x, name=f"{self.cell}_encoder")

    def seq2seq(self, source_vocabulary_size: int, target_vocabulary_size: int,
                source_length: int, target_length: int) -> "RecurrentSeq2Seq":
        return RecurrentSeq2Seq(
            source_vocabulary_size, target_vocabulary_size, cell=self.cell,
            embedding_dim=self.embedding_dim, units=self.units, attention=self.attention,
            dropout=self.dropout,
        )

    def captioner(self, vocabulary_size: int, caption_length: int, image_size: int,
                  encoder_filters, encoder_norm: str | None = "batch", mean=None,
                  variance=None) -> keras.Model:
        """Show-attend-tell captioner: a CNN grid encoder, this cell with additive attention
        over the grid (`pipelines.models.captioning.RecurrentCaptioner`)."""
        from pipelines.models.captioning import RecurrentCaptioner

        return RecurrentCaptioner(
            vocabulary_size, image_size, encoder_filters, cell=self.cell,
            embedding_dim=self.embedding_dim, units=self.units, dropout=self.dropout,
            encoder_norm=encoder_norm, pixel_mean=mean, pixel_variance=variance,
            name=f"{self.cell}_captioner",
        )


_ATTENTION = ("additive", "dot", "general")


class RecurrentSeq2Seq(keras.Model):
    """Encoder-decoder RNN with attention (Bahdanau 2015 / Luong 2015).

    The encoder is a bidirectional LSTM/GRU over the source; its final states, through a
    dense layer, start the decoder. At every target step the decoder state attends over
    the encoder outputs (`attention`: "additive" = Bahdanau, "dot"/"general" = Luong) and
    `tanh(W [h; context])` predicts the next token (Luong's attentional hidden state).

    Call: `model({"source": (B, S), "target_in": (B, T)})` -> logits (B, T, V), teacher
    forcing. Decoding: `state = model.encode(source)`, `logits, state = model.step(ids,
    state, index)`: the recurrent state is the cache.
    """

    def __init__(self, source_vocabulary_size, target_vocabulary_size, cell="lstm",
                 embedding_dim=128, units=128, attention="additive", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if attention not in _ATTENTION:
            raise ValueError(f"model.attention must be one of {_ATTENTION}; received {attention!r}")
        self.cell_name, self.units = cell, units
        rnn = _CELLS[cell]
        self.source_embedding = keras.layers.Embedding(source_vocabulary_size, embedding_dim,
                                                       mask_zero=True, name="source_embedding")
        self.target_embedding = keras.layers.Embedding(target_vocabulary_size, embedding_dim,
                                                       mask_zero=True, name="target_embedding")
        self.dropout = keras.layers.Dropout(dropout)
        self.encoder = layers.Bidirectional(
            rnn(units, return_sequences=True, return_state=True), name="encoder")
        self.bridge = keras.layers.Dense(units, activation="tanh", name="bridge")
        self.memory_projection = keras.layers.Dense(units, use_bias=False, name="memory_projection")
        self.decoder = rnn(units, return_sequences=True, name="decoder")
        if attention == "additive":
            self.attention = layers.AdditiveAttention(units=units, name="attention")
        else:
            self.attention = layers.DotAttention(score_mode=attention, name="attention")
        self.combine = keras.layers.Dense(units, activation="tanh", name="combine")
        self.head = keras.layers.Dense(target_vocabulary_size, dtype="float32", name="head")

    @property
    def num_states(self) -> int:
        return 2 if self.cell_name == "lstm" else 1

    def _encode(self, source, training=None):
        source_mask = ops.not_equal(source, 0)  # (B, S)
        x = self.dropout(self.source_embedding(source), training=training)
        outputs = self.encoder(x, padding_mask=source_mask, training=training)
        sequence, states = outputs[0], outputs[1:]  # (B, S, 2U); fwd states then bwd states
        n = self.num_states
        initial = [self.bridge(ops.concatenate([f, b], axis=-1))
                   for f, b in zip(states[:n], states[n:])]  # each (B, U)
        return self.memory_projection(sequence), source_mask, initial

    def _attend(self, h, memory, source_mask, return_scores=False):
        context, scores = self.attention(h, memory, padding_mask=source_mask,
                                         return_scores=True)  # (B, T, U), (B, T, S)
        logits = self.head(self.combine(ops.concatenate([h, context], axis=-1)))
        return (logits, scores) if return_scores else logits

    def _decode(self, inputs, training=None, return_scores=False):
        memory, source_mask, initial = self._encode(inputs["source"], training)
        target_in = inputs["target_in"]
        x = self.dropout(self.target_embedding(target_in), training=training)
        h = self.decoder(x, padding_mask=ops.not_equal(target_in, 0), initial_state=initial,
                         training=training)  # (B, T, U)
        return self._attend(self.dropout(h, training=training), memory, source_mask,
                            return_scores)

    def call(self, inputs, training=None):
        return self._decode(inputs, training)

    def attention_maps(self, source, target_in):
        """(B, T, S): the decoder's attention over the source, teacher forced."""
        return self._decode({"source": source, "target_in": target_in}, return_scores=True)[1]

    def encode(self, source):
        memory, source_mask, initial = self._encode(source, training=False)
        return {"memory": memory, "source_mask": source_mask, "states": initial}

    def step(self, token_ids, state, index):
        """token_ids (N,) -> logits (N, V); the decoder cell advances one step."""
        x = self.target_embedding(token_ids)  # (N, E)
        cell = self.decoder.cell
        h, states = cell.step(cell.input_projection(x), list(state["states"]))  # (N, U)
        logits = self._attend(h[:, None, :], state["memory"], state["source_mask"])[:, 0]
        return logits, {**state, "states": states}
