"""A GPT-style causal LM step from our layers: decoder-only TransformerDecoderBlocks
(`cross_attention=False`) with the self-attention cache, under a tied
TokenAndPositionEmbedding. Incremental equals full (eager, prefill, XLA), and the
cached block equals keras-hub's cached TransformerDecoder with copied weights."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from layers.token_and_position_embedding import TokenAndPositionEmbedding
from layers.transformer_decoder import TransformerDecoderBlock
from tests.layers.test_transformer import D, FF, H, X, decoder_pair

V, S_MAX, BLOCKS = 13, 7, 2
rng = np.random.default_rng(0)
# Row 1 ends in padding (id 0): its valid logits must not depend on it.
IDS = np.array([[3, 7, 1, 12, 5, 9, 2], [4, 4, 8, 11, 6, 0, 0]], dtype="int32")  # (B, S_MAX)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


class DecoderOnlyLM:
    """Embedding -> 2 pre-norm decoder-only blocks -> norm -> tied logits."""

    def __init__(self, merge="add"):
        position_dim = {"add": None, "concat": 4}[merge]
        width = D if merge == "add" else D + position_dim
        self.embedding = TokenAndPositionEmbedding(
            V, S_MAX, D, merge=merge, position_dim=position_dim, mask_zero=True
        )
        self.blocks = [
            TransformerDecoderBlock(width, H, FF, normalize_first=True, cross_attention=False)
            for _ in range(BLOCKS)
        ]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5)
        # With concat the hidden width D + 4 is projected back to the token width D.
        self.projection = keras.layers.Dense(D) if merge == "concat" else None
        self.width = width
        self.full(IDS)  # build
        for layer in [self.embedding, self.norm, *self.blocks] + [self.projection] * (merge == "concat"):
            for w in layer.weights:  # random, so that a mix-up of roles would show
                w.assign(rng.normal(scale=0.5, size=w.shape).astype("float32"))

    def logits(self, x):
        x = self.norm(x)
        if self.projection is not None:
            x = self.projection(x)
        return self.embedding.token_embedding(x, reverse=True)  # (B, T, V)

    def full(self, ids):
        x = self.embedding(ids)  # (B, T, width), mask ids != 0
        for block in self.blocks:
            x = block(x)  # causal self-attention only
        return self.logits(x)

    def empty_caches(self, batch):
        return [tf.zeros((batch, 2, S_MAX, H, self.width // H)) for _ in self.blocks]

    def step(self, ids, caches, index):
        """`ids` (B, T) at positions index ... index + T - 1 -> logits (B, T, V)."""
        x = self.embedding(ids, start_index=index)
        updated = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block(x, self_attention_cache=cache, self_attention_cache_index=index)
            updated.append(cache)
        return self.logits(x), updated


def assert_valid_logits_close(stepwise, full):
    valid = IDS != 0
    assert np.abs(full[valid]).max() > 1.0  # logits of a real size, not ~0
    np.testing.assert_allclose(stepwise[valid], full[valid], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("merge", ["add", "concat"])
def test_token_by_token_equals_full_pass(merge):
    lm = DecoderOnlyLM(merge)
    full = to_numpy(lm.full(IDS))
    caches, steps = lm.empty_caches(2), []
    for t in range(S_MAX):
        logits, caches = lm.step(IDS[:, t : t + 1], caches, tf.constant(t))
        steps.append(to_numpy(logits)[:, 0])
    assert_valid_logits_close(np.stack(steps, axis=1), full)
    # The padding of row 1 changes none of its valid logits (causality).
    np.testing.assert_allclose(
        to_numpy(lm.full(IDS[1:, :5]))[0], full[1, :5], atol=1e-5, rtol=1e-5
    )


def test_prefill_then_steps_equals_full_pass():
    lm = DecoderOnlyLM()
    full = to_numpy(lm.full(IDS))
    prompt = 3
    logits, caches = lm.step(IDS[:, :prompt], lm.empty_caches(2), tf.constant(0))
    steps = [to_numpy(logits)]
    for t in range(prompt, S_MAX):
        logits, caches = lm.step(IDS[:, t : t + 1], caches, tf.constant(t))
        steps.append(to_numpy(logits))
    assert_valid_logits_close(np.concatenate(steps, axis=1), full)


def test_xla_compiled_cached_step_equals_full_pass():
    lm = DecoderOnlyLM()
    full = to_numpy(lm.full(IDS))
    step = tf.function(lm.step, jit_compile=True)
    caches, steps = lm.empty_caches(2), []
    for t in range(S_MAX):
        logits, caches = step(IDS[:, t : t + 1], caches, tf.constant(t))
        steps.append(to_numpy(logits)[:, 0])
    assert_valid_logits_close(np.stack(steps, axis=1), full)
    # One trace serves every step: the index is a tensor, the shapes are static.
    assert len(step._list_all_concrete_functions()) == 1


@pytest.mark.parametrize("normalize_first", [False, True])
def test_cached_decoder_only_block_equals_keras_hub(normalize_first):
    ours, hub = decoder_pair(normalize_first, cross_attention=False)
    batch, length = X.shape[:2]
    our_cache = hub_cache = np.zeros((batch, 2, length, H, D // H), "float32")
    for t in range(length):
        index = tf.constant(t)
        our_out, our_cache = ours(
            X[:, t : t + 1], self_attention_cache=our_cache, self_attention_cache_index=index
        )
        hub_out, hub_cache = hub(
            X[:, t : t + 1], self_attention_cache=hub_cache, self_attention_cache_update_index=index
        )
        np.testing.assert_allclose(to_numpy(our_out), to_numpy(hub_out), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(to_numpy(our_cache), to_numpy(hub_cache), atol=1e-5, rtol=1e-5)
    # And the last cached step equals the full causal pass of both.
    np.testing.assert_allclose(to_numpy(our_out)[:, 0], to_numpy(hub(X))[:, -1], atol=1e-5, rtol=1e-5)
