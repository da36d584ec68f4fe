"""Dropout under XLA: keras.layers.Dropout vs layers.Dropout (the same masks, Philox named).

One training call and its gradient on a (64, 64, 128) float32 tensor (the sentiment LSTM's
embeddings at batch 64, T=64), in a `tf.function` with and without `jit_compile`, median of
`--repeats` timed calls after warm-up, all in one process. Both layers draw bit-identical masks
(tests/layers/test_dropout.py); Keras' `rng_alg="auto_select"` is what XLA compiles slowly.

    python -m benchmarks dropout_xla [--repeats 30]

Prints ms per call for each layer and mode and `RATIO keras / ours time under XLA = X.XX`.
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import cpu_model, print_ratio  # noqa: E402


def time_call(layer, x, jit: bool, repeats: int) -> float:
    import tensorflow as tf

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) ** 2)
        return tape.gradient(loss, x)

    for _ in range(3):
        step()
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        step().numpy()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    import keras
    import tensorflow as tf

    import layers

    print(cpu_model(), flush=True)
    x = tf.random.stateless_normal((64, 64, 128), (1, 2))
    ms = {}
    for name, cls in (("keras", keras.layers.Dropout), ("ours", layers.Dropout)):
        for jit in (False, True):
            ms[name, jit] = time_call(cls(0.2, seed=1), x, jit, args.repeats)
            print(f"{name:>5} {'XLA' if jit else 'graph':>5}: {ms[name, jit]:7.2f} ms", flush=True)
    print_ratio("keras / ours time under XLA", ms["keras", True] / ms["ours", True])
    print_ratio("keras / ours time in graph mode", ms["keras", False] / ms["ours", False])


if __name__ == "__main__":
    main()
