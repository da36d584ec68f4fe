"""Decoder-only language models: the `language_model` role's networks.

`CausalLM` is the model every backbone's `causal_lm(vocabulary_size, length)` returns:

- `model(ids (B, T))` -> float32 logits (B, T, V), position t predicting token t + 1
  (ids 0 = padding, only at the end of a sequence: causality keeps it from earlier positions);
- `state = model.start(batch_size)`, `logits, state = model.step(ids (N,), state, index)`:
  the cached step (key/value cache or recurrent state), equal to the full pass position by
  position, that `pipelines.decoding` drives;
- `model.generate(prompt_ids, start_id, end_id, max_new_tokens, **search)`: the prompt is
  fed through the step as forced tokens (it fills the cache), then up to `max_new_tokens`
  tokens follow by the `decode.*` search (greedy, beam, random / top-k / top-p sampling);
  padding and the start token are never generated.

`TransformerLM`: GPT-style pre- or post-norm blocks without cross-attention
(`layers.TransformerDecoderBlock(cross_attention=False)`, causal mask) over token + position
embeddings, logits from the transposed token embedding (tied, Press & Wolf 2016).
`RecurrentLM`: a stack of unidirectional LSTM/GRU layers, projected to the embedding width
and tied the same way (Inan et al., 2017).
"""
from __future__ import annotations

import keras
from keras import ops

import layers
from pipelines.decoding import decode

_CELLS = {"lstm": layers.LSTM, "gru": layers.GRU}


class CausalLM(keras.Model):
    """Base of the decoder-only LMs: `generate` over `start`/`step` (module docstring)."""

    length: int  # the positions a sequence may use (the context)
    vocabulary_size: int

    def start(self, batch_size):
        raise NotImplementedError

    def step(self, token_ids, state, index):
        raise NotImplementedError

    def generate(self, prompt_ids, start_id: int, end_id: int, max_new_tokens: int, **search):
        """prompt_ids (B, P), 0-padded on the right, P + max_new_tokens <= length -> int32
        (B, P + max_new_tokens): every row's prompt, then its continuation up to `end_id`
        (at most `max_new_tokens` tokens), then 0. `search`: `pipelines.decoding.decode`'s
        strategy arguments."""
        prompt_ids = ops.cast(prompt_ids, "int32")
        prompt = prompt_ids.shape[1]
        total = prompt + max_new_tokens
        if total > self.length:
            raise ValueError(f"the prompt ({prompt} tokens) and max_new_tokens={max_new_tokens} "
                             f"must fit in the context of {self.length} positions")
        lengths = ops.sum(ops.cast(ops.not_equal(prompt_ids, 0), "int32"), axis=1)  # (B,)
        positions = ops.arange(total)[None]  # (1, L): output position j is sequence j + 1
        padded = ops.pad(prompt_ids, [[0, 0], [0, max_new_tokens]])  # (B, L)
        forced = ops.where(positions < lengths[:, None], padded, -1)
        # end_id right after the row's last free token caps its continuation.
        forced = ops.where(positions == (lengths + max_new_tokens)[:, None], end_id, forced)
        batch_size = ops.shape(prompt_ids)[0]
        start = ops.full((batch_size,), start_id, dtype="int32")
        # Padding and the start token are never generated (training never scores them).
        vocabulary = ops.arange(self.vocabulary_size)
        banned = ops.where((vocabulary == 0) | (vocabulary == start_id), -1e9, 0.0)  # (V,)

        def step(token_ids, state, index):
            logits, state = self.step(token_ids, state, index)
            return logits + banned, state

        return decode(step, self.start(batch_size), start, total, end_id,
                      forced_ids=forced, **search)


class TransformerLM(CausalLM):
    """GPT-style: token + position embeddings, `num_layers` causal decoder-only blocks,
    a final norm with pre-norm blocks, tied output logits.

    Args:
        vocabulary_size: V, ids 0 = padding.
        length: T, the context (the position table and the cache's size).
        hidden_dim, num_heads, intermediate_dim, dropout, normalize_first: block sizes.
        num_layers: decoder-only blocks.
        positional: "learned" or "sinusoidal" positions.
    """

    def __init__(self, vocabulary_size, length, hidden_dim, num_heads, intermediate_dim,
                 num_layers, dropout=0.1, normalize_first=True, positional="learned", **kwargs):
        super().__init__(**kwargs)
        self.length, self.num_heads, self.head_dim = length, num_heads, hidden_dim // num_heads
        self.vocabulary_size = vocabulary_size
        self.embedding = layers.TokenAndPositionEmbedding(
            vocabulary_size, length, hidden_dim, positional=positional, name="embedding")
        self.dropout = layers.Dropout(dropout)
        self.blocks = [layers.TransformerDecoderBlock(
            hidden_dim, num_heads, intermediate_dim, dropout=dropout,
            normalize_first=normalize_first, cross_attention=False, name=f"block_{i}")
            for i in range(num_layers)]
        self.norm = (keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
                     if normalize_first else None)

    def _logits(self, x):
        if self.norm is not None:
            x = self.norm(x)
        return ops.cast(self.embedding.token_embedding(x, reverse=True), "float32")  # (B, T, V)

    def call(self, ids, training=None):
        x = self.dropout(self.embedding(ids), training=training)  # (B, T, D)
        for block in self.blocks:
            x = block(x, decoder_padding_mask=ops.not_equal(ids, 0), training=training)
        return self._logits(x)

    def start(self, batch_size):
        dtype = self.embedding.compute_dtype
        return {"cache": ops.zeros((batch_size, len(self.blocks), 2, self.length, self.num_heads,
                                    self.head_dim), dtype=dtype)}

    def step(self, token_ids, state, index):
        x = self.embedding(token_ids[:, None], start_index=index)  # (N, 1, D)
        caches = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, self_attention_cache=state["cache"][:, i],
                             self_attention_cache_index=index, training=False)
            caches.append(cache)  # (N, 2, T, H, D / H)
        return self._logits(x)[:, 0], {"cache": ops.stack(caches, axis=1)}  # (N, V)


class RecurrentLM(CausalLM):
    """Embedding -> `num_layers` unidirectional LSTM/GRU layers -> (a projection to the
    embedding width when `units != embedding_dim`) -> tied output logits.

    Args:
        vocabulary_size: V, ids 0 = padding.
        length: the context generation may use (a recurrent model has no position table;
            the task keeps prompts and continuations within it, as for the Transformer).
        cell: "lstm" or "gru".
        embedding_dim: E.
        units: U per layer.
        num_layers: stacked layers.
        dropout: on the embeddings and after every layer.
    """

    def __init__(self, vocabulary_size, length, cell="lstm", embedding_dim=128, units=128,
                 num_layers=1, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if cell not in _CELLS:
            raise ValueError(f"model.cell must be one of {sorted(_CELLS)}; received {cell!r}")
        self.length, self.vocabulary_size = length, vocabulary_size
        self.embedding = layers.ReversibleEmbedding(vocabulary_size, embedding_dim,
                                                    name="embedding")
        self.dropout = layers.Dropout(dropout)
        self.rnns = [_CELLS[cell](units, return_sequences=True, name=f"{cell}_{i}")
                     for i in range(num_layers)]
        self.projection = (keras.layers.Dense(embedding_dim, name="projection")
                           if units != embedding_dim else None)

    def _logits(self, h):
        if self.projection is not None:
            h = self.projection(h)
        return ops.cast(self.embedding(h, reverse=True), "float32")  # (B, T, V)

    def call(self, ids, training=None):
        x = self.dropout(self.embedding(ids), training=training)  # (B, T, E)
        for rnn in self.rnns:
            x = self.dropout(rnn(x, training=training), training=training)  # (B, T, U)
        return self._logits(x)

    def start(self, batch_size):
        return {"states": [rnn.cell.get_initial_state(batch_size, self.embedding.compute_dtype)
                           for rnn in self.rnns]}

    def step(self, token_ids, state, index):
        x = self.embedding(token_ids)  # (N, E)
        states = []
        for rnn, layer_states in zip(self.rnns, state["states"]):
            x, layer_states = rnn.cell.step(rnn.cell.input_projection(x), list(layer_states))
            states.append(layer_states)  # x: (N, U)
        return self._logits(x), {"states": states}  # (N, V)
