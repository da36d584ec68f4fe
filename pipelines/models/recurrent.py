"""`model=lstm` / `model=gru`: recurrent backbones assembled from `layers/`.

The factory is what the model group's `_target_` instantiates. It plays the roles
`sequence_encoder` (`text_encoder`, `text_memory`), `sequence_decoder` (`decoder`,
`image_memory`) and `language_model` (`causal_lm`) of `pipelines.models.roles`, so the
backbone knows nothing of tasks.
"""
from __future__ import annotations

import keras

import layers
from pipelines.models.causal_lm import RecurrentLM
from pipelines.models.seq2seq import GridEncoder, RecurrentDecoder, RecurrentTextEncoder

_CELLS = {"lstm": layers.LSTM, "gru": layers.GRU}
CHAR_FEATURES = ("none", "cnn", "lstm")


def check_char_features(char_features, char_dim: int, char_filters: int) -> str:
    """`model.char_features` as a string, checked with its sizes (shared by the backbones)."""
    value = str(getattr(char_features, "value", char_features))
    if value not in CHAR_FEATURES:
        raise ValueError(f"model.char_features must be one of {', '.join(CHAR_FEATURES)}; "
                         f"received {char_features!r}")
    for name, size in (("char_dim", char_dim), ("char_filters", char_filters)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"model.{name} must be a positive int; received {size!r}")
    return value


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
        attention: the decoder's attention in encoder-decoder tasks: "additive" (Bahdanau
            scores), "dot" or "general" (Luong scores).
        char_features, char_dim, char_filters, crf: NER only (`pipelines.tasks.ner` builds
            the character encoder and the CRF from them; other tasks refuse them).
    """

    # trainer.jit_compile=auto: XLA/graph train steps per second measured by
    # `python -m benchmarks jit_families` on this project's 2-core CPU: 0.94 (lstm) / 0.80 (gru)
    # on 2026-12-04 with layers.Dropout (0.28 / 0.29 with keras.layers.Dropout, whose mask XLA
    # compiled 30x slower: benchmarks/dropout_xla).
    xla_on_cpu = False
    # decode.jit_compile=auto: XLA/graph beam-4 search sentences per second measured by
    # `python -m benchmarks jit_families --decode` on the same CPU: 1.38 (lstm) / 1.50 (gru).
    xla_decode_on_cpu = True

    def __init__(self, cell: str = "lstm", embedding_dim: int = 128, units: int = 128,
                 num_layers: int = 1, bidirectional: bool = True, merge_mode: str = "concat",
                 dropout: float = 0.0, attention: str = "additive", char_features: str = "none",
                 char_dim: int = 30, char_filters: int = 50, crf: bool = False):
        if cell not in _CELLS:
            raise ValueError(f"model.cell must be one of {sorted(_CELLS)}; received {cell!r}")
        if num_layers < 1:
            raise ValueError(f"model.num_layers must be >= 1; received {num_layers}")
        self.cell, self.embedding_dim, self.units = cell, embedding_dim, units
        self.num_layers, self.bidirectional, self.merge_mode = num_layers, bidirectional, merge_mode
        if attention not in ("additive", "dot", "general"):
            raise ValueError(f"model.attention must be one of additive, dot, general; "
                             f"received {attention!r}")
        if merge_mode not in ("concat", "sum"):
            raise ValueError(f"model.merge_mode must be concat or sum; received {merge_mode!r}")
        self.dropout, self.attention = dropout, attention
        self.char_features = check_char_features(char_features, char_dim, char_filters)
        self.char_dim, self.char_filters, self.crf = char_dim, char_filters, bool(crf)

    def _recurrent(self, return_sequences: bool, name: str) -> keras.layers.Layer:
        layer = _CELLS[self.cell](self.units, return_sequences=return_sequences, name=name)
        if self.bidirectional:
            layer = layers.Bidirectional(layer, merge_mode=self.merge_mode, name=f"bi_{name}")
        return layer

    def text_encoder(self, vocabulary_size: int, sequence_length: int,
                     return_sequences: bool = False, feature_dim: int = 0) -> keras.Model:
        """Token ids (B, T), 0 = padding -> (B, T, H) if return_sequences else (B, H).

        With `feature_dim` F > 0 the model takes `{"token_ids": (B, T), "features": (B, T, F)}`
        and concatenates the per-token features (e.g. character vectors) to the embeddings.

        The padding mask flows from `Embedding(mask_zero=True)` into every recurrent layer,
        so padded steps neither update the state nor reach the output. T is free (a time
        dimension of None): length-bucketed batches are shorter than `sequence_length`.
        """
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        x = keras.layers.Embedding(vocabulary_size, self.embedding_dim, mask_zero=True,
                                   name="embedding")(token_ids)  # (B, T, E)
        inputs, padding_mask = token_ids, None
        if feature_dim:
            features = keras.Input((None, feature_dim), name="features")
            inputs = {"token_ids": token_ids, "features": features}
            x = keras.layers.Concatenate(name="with_features")([x, features])  # (B, T, E + F)
            # Explicit: Concatenate's mask is the OR over its inputs' masks, and the features
            # have none, so the implicit mask would mark every step valid.
            padding_mask = keras.ops.not_equal(token_ids, 0)  # (B, T)
        x = layers.Dropout(self.dropout)(x)
        for index in range(self.num_layers):
            last = index == self.num_layers - 1
            x = self._recurrent(return_sequences or not last,
                                name=f"{self.cell}_{index}")(x, padding_mask=padding_mask)
            if not last:
                x = layers.Dropout(self.dropout)(x)  # (B, T, H)
        return keras.Model(inputs, x, name=f"{self.cell}_encoder")

    def text_memory(self, vocabulary_size: int, sequence_length: int):
        """Ids (B, S) -> {"memory", "mask", "summary"}: the same (bi)directional stack of
        `num_layers` layers (`merge_mode`), its final states as the summary."""
        return RecurrentTextEncoder(vocabulary_size, cell=self.cell,
                                    embedding_dim=self.embedding_dim, units=self.units,
                                    num_layers=self.num_layers, bidirectional=self.bidirectional,
                                    merge_mode=self.merge_mode, dropout=self.dropout,
                                    name="source_encoder")

    def image_memory(self, image_size: int, filters, norm, mean=None, variance=None):
        """A CNN grid at width `units` (no recurrent encoder: `num_layers`, `bidirectional`
        and `merge_mode` do not apply, and the task refuses them)."""
        return GridEncoder(image_size, filters, self.units, norm, mean, variance,
                           name="grid_encoder")

    def decoder(self, vocabulary_size: int, length: int):
        """One LSTM/GRU layer whose outputs attend over the memory (`model.attention`)."""
        return RecurrentDecoder(vocabulary_size, cell=self.cell, embedding_dim=self.embedding_dim,
                                units=self.units, attention=self.attention, dropout=self.dropout,
                                name="decoder")

    def causal_lm(self, vocabulary_size: int, length: int):
        """`num_layers` unidirectional LSTM/GRU layers with tied output embeddings
        (`bidirectional`, `merge_mode` and `attention` do not apply to a causal LM)."""
        return RecurrentLM(vocabulary_size, length, cell=self.cell,
                           embedding_dim=self.embedding_dim, units=self.units,
                           num_layers=self.num_layers, dropout=self.dropout,
                           name=f"{self.cell}_lm")
