"""`model=lstm` / `model=gru`: recurrent backbones assembled from `layers/`.

The factory is what the model group's `_target_` instantiates; a task asks it for the
network that fits its shapes (`text_encoder(...)`), so the backbone knows nothing of tasks.
"""
from __future__ import annotations

import keras

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
        so padded steps neither update the state nor reach the output.
        """
        token_ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
        x = keras.layers.Embedding(vocabulary_size, self.embedding_dim, mask_zero=True,
                                   name="embedding")(token_ids)  # (B, T, E)
        x = keras.layers.Dropout(self.dropout)(x)
        for index in range(self.num_layers):
            last = index == self.num_layers - 1
            x = self._recurrent(return_sequences or not last, name=f"{self.cell}_{index}")(x)
            if not last:
                x = keras.layers.Dropout(self.dropout)(x)  # (B, T, H)
        return keras.Model(token_ids, x, name=f"{self.cell}_encoder")
