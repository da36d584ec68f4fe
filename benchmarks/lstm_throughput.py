"""Training throughput of our LSTM against keras.layers.LSTM.

Both models are Embedding -> LSTM(128) -> Dense, trained with the same
`tf.function(jit_compile=False)` step on batches of 64 sequences of length 64,
in the same process, with the timed rounds interleaved (ABBA) so that load on
the machine hits both alike. Prints sequences/s for each (median over rounds)
and `RATIO ours/keras sequences per second = X.XX`, the median of the per-round ratios.

    python -m benchmarks lstm_throughput [--steps 20] [--rounds 5] [--profile DIR]

`--profile DIR` also traces 3 steps of each with tf.profiler (TensorBoard reads DIR/NAME)
and prints each model's op time per step by op type, and its share in matmuls.
"""
import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import is_matmul, print_ratio, traced_op_times  # noqa: E402
from layers.rnn import LSTM  # noqa: E402

BATCH, LENGTH, VOCAB, EMBED, UNITS, CLASSES = 64, 64, 1000, 64, 128, 10


def build_model(recurrent):
    inputs = keras.Input((LENGTH,), batch_size=BATCH, dtype="int32")
    x = keras.layers.Embedding(VOCAB, EMBED)(inputs)
    x = recurrent(x)
    outputs = keras.layers.Dense(CLASSES)(x)
    return keras.Model(inputs, outputs)


def make_train_step(model):
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=False)
    def train_step(tokens, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(tokens, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return train_step


def time_steps(step, tokens, labels, steps):
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(tokens, labels)
    float(loss)  # wait for the last step
    return steps * BATCH / (time.perf_counter() - start)


def print_profile(step, tokens, labels, logdir, name, steps=3):
    """Traces `steps` steps into `logdir` and prints the op time per step by op type."""
    kinds = {}
    traced = traced_op_times(lambda count: time_steps(step, tokens, labels, count), logdir, steps)
    for (_, kind), micros in traced.items():
        kinds[kind] = kinds.get(kind, 0.0) + micros
    total = sum(kinds.values())
    matmul = sum(micros for kind, micros in kinds.items() if is_matmul(kind))
    print(f"profile {name}: {total / steps / 1e3:.1f} ms of op time per step (summed over "
          f"threads), {100 * matmul / total:.0f}% in matmuls; top op types:")
    for kind, micros in sorted(kinds.items(), key=lambda item: -item[1])[:10]:
        print(f"  {kind:<32} {micros / steps / 1e3:7.2f} ms  {100 * micros / total:5.1f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="train steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model")
    parser.add_argument("--profile", metavar="DIR", help="also trace 3 steps of each model")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    tokens = tf.constant(rng.integers(0, VOCAB, size=(BATCH, LENGTH)), dtype="int32")
    labels = tf.constant(rng.integers(0, CLASSES, size=(BATCH,)), dtype="int32")

    steps = {
        "ours": make_train_step(build_model(LSTM(UNITS))),
        "keras": make_train_step(build_model(keras.layers.LSTM(UNITS))),
    }
    for step in steps.values():  # trace and warm up
        time_steps(step, tokens, labels, 3)
    # ABBA order, and the ratio taken within each round, so that the load of a
    # shared machine (which drifts) hits both models alike.
    rates = {name: [] for name in steps}
    ratios = []
    for round_index in range(args.rounds):
        order = list(steps) if round_index % 2 == 0 else list(steps)[::-1]
        for name in order:
            rates[name].append(time_steps(steps[name], tokens, labels, args.steps))
        ratios.append(rates["ours"][-1] / rates["keras"][-1])

    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"batch {BATCH}, T={LENGTH}, LSTM({UNITS}), {device}, median of {args.rounds} rounds")
    for name, values in rates.items():
        print(f"{name:>5}: {np.median(values):8.1f} sequences/s  (rounds: "
              + ", ".join(f"{v:.0f}" for v in values) + ")")
    if args.profile:
        for name, step in steps.items():
            print_profile(step, tokens, labels, f"{args.profile}/{name}", name)
    print_ratio("ours/keras sequences per second", np.median(ratios))


if __name__ == "__main__":
    main()
