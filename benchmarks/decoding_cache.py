"""Decoding speed with a key/value cache vs recomputing the prefix at every step.

A small Transformer decoder from our layers (2 blocks with cross-attention to a
random 16-token memory, hidden 128) decodes a batch of 8 for 64 output tokens,
greedy and with beam search (4 beams), through `pipelines.decoding`. The two step
functions share the weights:

- cached: feeds only the new token; the state holds one `(N, 2, L, H, D / H)`
  self-attention cache per block (O(L) work per step);
- uncached: the state holds the tokens so far `(N, L)` and the whole padded
  prefix runs through the decoder at every step (O(L^2) work per step).

`end_id` is a token the model cannot produce, so every run decodes all 64 tokens.
Each search is compiled once in a `tf.function` (optionally with XLA) and timed in
alternating rounds (cached, uncached, ...) so that a noisy, shared CPU slows both
alike; a time is the median over rounds.

    python -m benchmarks decoding_cache [--length 64 --rounds 5 --jit]

Prints the milliseconds per search for each step function, whether their tokens
agree, and `RATIO uncached/cached at 64 tokens = X.XX` (greedy and beam times added).
"""
import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import print_ratio  # noqa: E402
from layers import TokenAndPositionEmbedding, TransformerDecoderBlock  # noqa: E402
from pipelines.decoding import beam_search, greedy_search  # noqa: E402

START_ID = 1


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64, help="output tokens")
    parser.add_argument("--source", type=int, default=16, help="memory length")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ff", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jit", action="store_true", help="compile with XLA")
    return parser.parse_args()


def build_decoder(args):
    keras.utils.set_random_seed(0)
    embedding = TokenAndPositionEmbedding(args.vocab, args.length, args.hidden, mask_zero=False)
    blocks = [
        TransformerDecoderBlock(args.hidden, args.heads, args.ff, name=f"block_{i}")
        for i in range(args.layers)
    ]
    head = keras.layers.Dense(args.vocab)
    # Build every weight eagerly, before tf.function traces the searches.
    x = embedding(tf.zeros([1, args.length], tf.int32))
    memory = tf.zeros([1, args.source, args.hidden])
    for block in blocks:
        x = block(x, encoder_outputs=memory)
    head(x)
    return embedding, blocks, head


def cached_step(embedding, blocks, head):
    def step_fn(token_ids, state, index):
        x = embedding(token_ids[:, None], start_index=index)  # (N, 1, D)
        caches = []
        for block, cache in zip(blocks, state["caches"]):
            x, cache = block(
                x,
                encoder_outputs=state["memory"],
                self_attention_cache=cache,
                self_attention_cache_index=index,
            )  # (N, 1, D), (N, 2, L, H, D / H)
            caches.append(cache)
        return head(x[:, 0]), dict(state, caches=caches)  # (N, V)

    return step_fn


def uncached_step(embedding, blocks, head, length):
    def step_fn(token_ids, state, index):
        tokens = tf.where(tf.range(length) == index, token_ids[:, None], state["tokens"])
        x = embedding(tokens)  # (N, L, D); the causal mask hides later positions
        for block in blocks:
            x = block(x, encoder_outputs=state["memory"])
        return head(tf.gather(x, index, axis=1)), dict(state, tokens=tokens)  # (N, V)

    return step_fn


def main():
    args = parse_args()
    embedding, blocks, head = build_decoder(args)
    memory = tf.random.stateless_normal([args.batch, args.source, args.hidden], seed=(1, 2))
    start_ids = tf.fill([args.batch], START_ID)
    cache = tf.zeros([args.batch, 2, args.length, args.heads, args.hidden // args.heads])
    states = {
        "cached": {"memory": memory, "caches": [cache] * args.layers},
        "uncached": {"memory": memory, "tokens": tf.zeros([args.batch, args.length], tf.int32)},
    }
    step_fns = {
        "cached": cached_step(embedding, blocks, head),
        "uncached": uncached_step(embedding, blocks, head, args.length),
    }
    end_id = args.vocab  # never produced: every search decodes all `length` tokens

    def compile_search(name, beam_size):
        step_fn, state = step_fns[name], states[name]

        @tf.function(jit_compile=args.jit)
        def search():
            if beam_size == 1:
                return greedy_search(step_fn, state, start_ids, args.length, end_id)
            return beam_search(step_fn, state, start_ids, args.length, end_id, beam_size)[0]

        return search

    print(
        f"{tf.config.list_logical_devices()[0].device_type}, jit_compile={args.jit}, "
        f"batch {args.batch}, {args.length} output tokens, {args.layers} blocks, hidden "
        f"{args.hidden}, vocab {args.vocab}, memory {args.source}, median of {args.rounds} rounds"
    )
    totals = {"cached": 0.0, "uncached": 0.0}
    for label, beam_size in (("greedy", 1), (f"beam {args.beam}", args.beam)):
        searches = {name: compile_search(name, beam_size) for name in step_fns}
        tokens = {name: search().numpy() for name, search in searches.items()}  # trace, warm up
        times = {name: [] for name in searches}
        for _ in range(args.rounds):
            for name, search in searches.items():
                begin = time.perf_counter()
                search().numpy()
                times[name].append(time.perf_counter() - begin)
        median = {name: float(np.median(values)) for name, values in times.items()}
        for name in totals:
            totals[name] += median[name]
        print(
            f"{label:>8}: cached {1000 * median['cached']:8.1f} ms, uncached "
            f"{1000 * median['uncached']:8.1f} ms, ratio "
            f"{median['uncached'] / median['cached']:.2f}, tokens equal: "
            f"{np.array_equal(tokens['cached'], tokens['uncached'])}"
        )
    print_ratio(f"uncached/cached at {args.length} tokens", totals["uncached"] / totals["cached"])


if __name__ == "__main__":
    main()
