"""The roles a backbone can play: documented interfaces that tasks build their networks from.

A model group's yaml lists the roles its factory plays (`roles: [sequence_encoder, ...]`),
a task's yaml the roles it needs (`needs: [...]`); a pair fits when the model plays every
role the task needs, which `pipelines.config.check` decides before TensorFlow is imported.
`tests/pipelines/test_backbones.py` checks that every backbone plays the roles it claims:
it satisfies the Protocol below and its networks have the documented shapes.

Every factory also carries `name` (the model group's option), `dropout` (before a head) and
`xla_on_cpu` (whether `benchmarks/jit_families` measured its training step faster under XLA on
the CPU: what `trainer.jit_compile=auto` reads); a `sequence_decoder` also `xla_decode_on_cpu`
(the same for its beam search, `jit_families --decode`: what `decode.jit_compile=auto` reads).
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import keras


@runtime_checkable
class SequenceEncoder(Protocol):
    """Token ids in, features out (sentiment, NER; the source side of translation)."""

    def text_encoder(self, vocabulary_size: int, sequence_length: int,
                     return_sequences: bool = False) -> keras.Model:
        """Ids (B, T), 0 = padding, any T <= sequence_length -> (B, T, H), or pooled (B, H);
        padding changes nothing."""

    def text_memory(self, vocabulary_size: int, sequence_length: int) -> keras.layers.Layer:
        """Ids (B, S) -> an `encoded` dict (`pipelines.models.seq2seq`): `memory` (B, S, D),
        `mask` (B, S), and `summary` (B, H) where a recurrent decoder needs one."""


@runtime_checkable
class SequenceDecoder(Protocol):
    """Token sequences out, with a cache for incremental decoding (translation, captioning)."""

    def decoder(self, vocabulary_size: int, length: int) -> keras.layers.Layer:
        """A decoder over an `encoded` dict: `decoder(target_in (B, T), encoded)` -> logits
        (B, T, V); `start(encoded)` -> state, `step(ids (N,), state, index)` -> (logits (N, V),
        state) equal to the full pass position by position; `attention(target_in, encoded)`
        -> (B, T, S)."""

    def image_memory(self, image_size: int, filters: Sequence[int], norm: str | None,
                     mean=None, variance=None) -> keras.layers.Layer:
        """Pixels (B, S, S, 3) in [0, 255] -> an `encoded` dict over a CNN grid that this
        backbone's decoder reads."""


@runtime_checkable
class LanguageModel(Protocol):
    """A decoder-only causal language model with a cache (language modeling)."""

    def causal_lm(self, vocabulary_size: int, length: int) -> keras.Model:
        """A `pipelines.models.causal_lm.CausalLM`: `model(ids (B, T))` -> float32 logits
        (B, T, V), T <= length, position t predicting token t + 1; `start(batch_size)` ->
        state, `step(ids (N,), state, index)` -> (logits (N, V), state) equal to the full
        pass position by position; `generate(prompt_ids, start_id, end_id, max_new_tokens,
        **search)` -> ids (B, P + max_new_tokens)."""


@runtime_checkable
class ImageEncoder(Protocol):
    """Images in, features out (image classification)."""

    def image_encoder(self, image_shape: tuple[int, int, int], pooled: bool = True) -> keras.Model:
        """Pixels (B, H, W, C) in [0, 255] -> (B, D), or a feature map / tokens unpooled."""


@runtime_checkable
class Segmenter(Protocol):
    """Images in, a class score per pixel out (segmentation)."""

    def segmenter(self, image_size: int, num_classes: int, channels: int = 3, mean=None,
                  variance=None) -> keras.Model:
        """Pixels (B, S, S, channels) in [0, 255] -> float32 logits (B, S, S, num_classes)."""


ROLES: dict[str, type] = {
    "sequence_encoder": SequenceEncoder,
    "sequence_decoder": SequenceDecoder,
    "language_model": LanguageModel,
    "image_encoder": ImageEncoder,
    "segmenter": Segmenter,
}
