"""Language-model sampling with the key/value cache vs recomputing the prefix at every step.

The GPT-style `TransformerLM` of `model=transformer task=language_modeling` (2 decoder-only
blocks, hidden 128, tied embeddings over 1,000 tokens) samples a batch of 8 continuations
of 64 tokens with top-k sampling (k = 40, `pipelines.decoding.sample_search`), from a
prompt of 8 forced tokens. The two step functions share the weights:

- cached: `model.step` feeds only the new token; the state holds the `(N, blocks, 2, L, H,
  D / H)` self-attention cache (O(L) work per step);
- uncached: the state holds the tokens so far `(N, L)` and the whole padded sequence runs
  through `model(...)` at every step, the causal mask hiding later positions (O(L^2)).

`end_id` is a token the model cannot produce, so every run samples all tokens. Each search
is compiled once in a `tf.function` (optionally with XLA) and timed in alternating rounds so
that a noisy, shared CPU slows both alike; a time is the median over rounds, the ratio the
median of the per-round ratios. The draws are
seeded alike, so both give the same tokens unless float rounding flips a draw.

    python -m benchmarks generation_cache [--length 64 --rounds 5 --jit]

Prints the milliseconds per search for each step function, whether their tokens agree, and
`RATIO uncached/cached sampling at 64 tokens = X.XX`.
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
from pipelines.decoding import sample_search  # noqa: E402
from pipelines.models.transformer import Transformer  # noqa: E402

START_ID = 2


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64, help="new tokens")
    parser.add_argument("--prompt", type=int, default=8, help="forced prompt tokens")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ff", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jit", action="store_true", help="compile with XLA")
    return parser.parse_args()


def uncached_step(model, length):
    def step_fn(token_ids, state, index):
        tokens = tf.where(tf.range(length) == index, token_ids[:, None], state["tokens"])
        logits = model(tokens, training=False)  # (N, L, V); causal: later positions unseen
        return tf.gather(logits, index, axis=1), {"tokens": tokens}  # (N, V)

    return step_fn


def main():
    args = parse_args()
    keras.utils.set_random_seed(0)
    total = args.prompt + args.length
    model = Transformer(args.hidden, args.heads, args.ff, num_layers=args.layers, dropout=0.0,
                        normalize_first=True).causal_lm(args.vocab, total)
    model(tf.zeros([1, total], tf.int32))  # build every weight before tracing
    prompt = np.random.default_rng(0).integers(4, args.vocab, (args.batch, args.prompt))
    forced = np.full((args.batch, total), -1, "int32")
    forced[:, : args.prompt] = prompt
    forced = tf.constant(forced)
    start_ids = tf.fill([args.batch], START_ID)
    runs = {
        "cached": (model.step, model.start(args.batch)),
        "uncached": (uncached_step(model, total),
                     {"tokens": tf.zeros([args.batch, total], tf.int32)}),
    }
    end_id = args.vocab  # never produced: every search samples all tokens

    def compile_search(name):
        step_fn, state = runs[name]

        @tf.function(jit_compile=args.jit)
        def search():
            return sample_search(step_fn, state, start_ids, total, end_id, "top_k",
                                 top_k=args.top_k, seed=7, forced_ids=forced)

        return search

    print(
        f"{tf.config.list_logical_devices()[0].device_type}, jit_compile={args.jit}, "
        f"batch {args.batch}, prompt {args.prompt} + {args.length} sampled tokens (top-k "
        f"{args.top_k}), {args.layers} blocks, hidden {args.hidden}, vocab {args.vocab}, "
        f"median of {args.rounds} rounds"
    )
    searches = {name: compile_search(name) for name in runs}
    tokens = {name: search().numpy() for name, search in searches.items()}  # trace, warm up
    times = {name: [] for name in searches}
    for _ in range(args.rounds):
        for name, search in searches.items():
            begin = time.perf_counter()
            search().numpy()
            times[name].append(time.perf_counter() - begin)
    median = {name: float(np.median(values)) for name, values in times.items()}
    ratios = np.array(times["uncached"]) / np.array(times["cached"])  # per round
    agree = float(np.mean(tokens["cached"] == tokens["uncached"]))
    print(f"top-k sampling: cached {1000 * median['cached']:8.1f} ms, uncached "
          f"{1000 * median['uncached']:8.1f} ms, tokens equal: {agree:.1%}")
    print_ratio(f"uncached/cached sampling at {args.length} tokens", float(np.median(ratios)))


if __name__ == "__main__":
    main()
