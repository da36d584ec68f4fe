"""How LinearAttention and softmax MultiHeadAttention scale with sequence length.

For each length T, both layers (batch 1, same heads and key_dim, self-attention on
random inputs) run a forward pass in one `tf.function`. Their passes are timed in
alternating rounds so that a noisy, shared CPU slows both alike; each time is the
median round, and the ratio is the median of the paired per-round ratios.

Memory is the size of the largest intermediate tensor, computed ANALYTICALLY from
the shapes in float32 (TensorFlow reports allocator peaks only on GPU/TPU):
- softmax attention: the score matrix (B, H, T, S);
- linear attention: the larger of phi(Q) (B, T, H, K) and the key-value summary
  (B, H, K, V); with --causal also the per-chunk similarities (B, T/C, H, C, C)
  and the chunk states (B, T/C, H, K, V), C = 64.
On a GPU the measured allocator peak (`tf.config.experimental.get_memory_info`) is
printed as well.

    python -m benchmarks linear_attention_scaling [--lengths 256 1024 4096 --heads 1
        --key-dim 32 --rounds 5 --causal --jit]

Prints one row per T, then the growth of time and memory per 4x longer sequence:
about 4x for linear attention (linear), about 16x for softmax attention (quadratic),
once T is large enough that the T x T work dominates fixed per-call costs. The last line
is `RATIO softmax/linear time at T=<longest> = X.XX`.
"""
import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import print_ratio  # noqa: E402
from layers import LinearAttention, MultiHeadAttention  # noqa: E402

FLOAT_BYTES = 4
CHUNK_SIZE = 64  # LinearAttention's default chunk for the causal computation


def largest_intermediate_bytes(kind, length, heads, key_dim, causal):
    """Bytes of the largest tensor a forward pass materialises (batch 1, float32)."""
    if kind == "softmax":
        return heads * length * length * FLOAT_BYTES  # scores (B, H, T, S)
    features = length * heads * key_dim  # phi(Q) (B, T, H, K)
    if causal:
        chunk = min(CHUNK_SIZE, length)
        within = length * heads * chunk  # (B, T/C, H, C, C)
        states = -(-length // chunk) * heads * key_dim * key_dim  # (B, T/C, H, K, V)
        return max(features, within, states) * FLOAT_BYTES
    return max(features, heads * key_dim * key_dim) * FLOAT_BYTES  # or (B, H, K, V)


def measured_peak_bytes(fn, x):
    """Allocator peak of one call on a GPU, or None on CPU (not reported there)."""
    if not tf.config.list_logical_devices("GPU"):
        return None
    tf.config.experimental.reset_memory_stats("GPU:0")
    fn(x).numpy()
    return tf.config.experimental.get_memory_info("GPU:0")["peak"]


def time_call(fn, x):
    start = time.perf_counter()
    fn(x).numpy()  # .numpy() waits for the result
    return time.perf_counter() - start


def _mib(n):
    return "n/a" if n is None else f"{n / 2**20:.2f}"


def run(args):
    rows = []
    for length in args.lengths:
        x = tf.constant(np.random.default_rng(0).normal(size=(1, length, args.key_dim)), "float32")
        linear = LinearAttention(num_heads=args.heads, key_dim=args.key_dim, causal=args.causal)
        softmax = MultiHeadAttention(num_heads=args.heads, key_dim=args.key_dim)
        fns = {
            "linear": tf.function(lambda x: linear(x, x), jit_compile=args.jit),
            "softmax": tf.function(
                lambda x: softmax(x, x, use_causal_mask=args.causal), jit_compile=args.jit
            ),
        }
        for fn in fns.values():  # trace, compile, warm up
            time_call(fn, x)
            time_call(fn, x)
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(time_call(fn, x))
        ratio = np.median(np.array(times["softmax"]) / np.array(times["linear"]))
        row = {"T": length, "ratio": ratio}
        for name, fn in fns.items():
            row[f"{name}_ms"] = 1e3 * np.median(times[name])
            row[f"{name}_bytes"] = largest_intermediate_bytes(
                name, length, args.heads, args.key_dim, args.causal
            )
            row[f"{name}_peak"] = measured_peak_bytes(fn, x)
        rows.append(row)
        print_row(row)
    print_growth(rows)
    return rows


def print_row(row):
    print(
        f"T={row['T']:>6}  linear {row['linear_ms']:9.2f} ms  softmax {row['softmax_ms']:9.2f} ms  "
        f"softmax/linear {row['ratio']:6.2f}x  |  largest intermediate (analytic): "
        f"linear {_mib(row['linear_bytes'])} MiB, softmax {_mib(row['softmax_bytes'])} MiB"
        + (
            f"  |  GPU peak (measured): linear {_mib(row['linear_peak'])} MiB, "
            f"softmax {_mib(row['softmax_peak'])} MiB"
            if row["linear_peak"] is not None
            else ""
        ),
        flush=True,
    )


def print_growth(rows):
    print("growth from one length to the next (time x, memory x):")
    for before, after in zip(rows, rows[1:]):
        factor = after["T"] / before["T"]
        parts = [
            f"{name} {after[f'{name}_ms'] / before[f'{name}_ms']:5.1f}x time, "
            f"{after[f'{name}_bytes'] / before[f'{name}_bytes']:5.1f}x memory"
            for name in ("linear", "softmax")
        ]
        print(f"  T {before['T']} -> {after['T']} ({factor:g}x):  " + ";  ".join(parts))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--key-dim", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--causal", action="store_true", help="causal masks in both layers")
    parser.add_argument("--jit", action="store_true", help="compile both with XLA")
    return parser.parse_args(argv)


def main():
    args = parse_args()
    print(
        f"batch 1, heads {args.heads}, key_dim {args.key_dim}, model dim {args.key_dim}, "
        f"causal={args.causal}, jit={args.jit}, float32, device "
        f"{'GPU' if tf.config.list_logical_devices('GPU') else 'CPU'}"
    )
    rows = run(args)
    print_ratio(f"softmax/linear time at T={rows[-1]['T']}", rows[-1]["ratio"])


if __name__ == "__main__":
    main()
