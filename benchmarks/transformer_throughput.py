"""Training throughput of a small Transformer encoder-decoder: our blocks vs keras-hub's.

Both models have the same sizes, initial weights drawn the same way, the same data
and the same `tf.function` train step (Adam, masked-by-padding inputs, token
cross-entropy). Their steps are timed in alternating rounds so that a noisy,
shared CPU slows both alike. Each model's throughput is its median round; the
ratio is the median over rounds of the paired ratio (same round, same load).

    python -m benchmarks transformer_throughput [--steps 10 --rounds 5 --jit]

Prints examples/s and tokens/s for each model and `RATIO ours/keras_hub = X.XX`
(above 1.0: ours trains faster).
"""
import argparse
import os
import pathlib
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# keras-hub's PositionEmbedding and CachedMultiHeadAttention projections drop the
# implicit mask by design (the blocks read it themselves); keep the output readable.
warnings.filterwarnings("ignore", message=".*does not support masking.*")

from benchmarks.common import print_ratio  # noqa: E402
from layers import (  # noqa: E402
    TokenAndPositionEmbedding,
    TransformerDecoderBlock,
    TransformerEncoderBlock,
)


def build_ours(args):
    source = keras.Input((args.length,), dtype="int32", name="source")
    target = keras.Input((args.length,), dtype="int32", name="target")
    sizes = dict(hidden_dim=args.hidden, num_heads=args.heads, intermediate_dim=args.ff, dropout=0.1)
    x = TokenAndPositionEmbedding(args.vocab, args.length, args.hidden)(source)
    for _ in range(args.layers):
        x = TransformerEncoderBlock(**sizes)(x)
    y = TokenAndPositionEmbedding(args.vocab, args.length, args.hidden)(target)
    for _ in range(args.layers):
        y = TransformerDecoderBlock(**sizes)(y, encoder_outputs=x)
    logits = keras.layers.Dense(args.vocab)(y)
    return keras.Model([source, target], logits, name="ours")


def build_keras_hub(args):
    source = keras.Input((args.length,), dtype="int32", name="source")
    target = keras.Input((args.length,), dtype="int32", name="target")
    sizes = dict(intermediate_dim=args.ff, num_heads=args.heads, dropout=0.1)
    embed = dict(vocabulary_size=args.vocab, sequence_length=args.length, embedding_dim=args.hidden)
    x = keras_hub.layers.TokenAndPositionEmbedding(**embed, mask_zero=True)(source)
    for _ in range(args.layers):
        x = keras_hub.layers.TransformerEncoder(**sizes)(x)
    y = keras_hub.layers.TokenAndPositionEmbedding(**embed, mask_zero=True)(target)
    for _ in range(args.layers):
        y = keras_hub.layers.TransformerDecoder(**sizes)(y, x)
    logits = keras.layers.Dense(args.vocab)(y)
    return keras.Model([source, target], logits, name="keras_hub")


def make_data(args):
    """Random ids in [1, vocab) with a random amount of trailing padding (id 0)."""
    rng = np.random.default_rng(0)
    shape = (args.batch, args.length)

    def ids():
        values = rng.integers(1, args.vocab, size=shape)
        lengths = rng.integers(args.length // 2, args.length + 1, size=(args.batch, 1))
        return np.where(np.arange(args.length)[None] < lengths, values, 0).astype("int32")

    source, target = ids(), ids()
    labels = np.roll(target, -1, axis=1)  # next-token targets
    return tf.constant(source), tf.constant(target), tf.constant(labels)


def make_train_step(model, jit_compile):
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit_compile)
    def train_step(source, target, labels):
        with tf.GradientTape() as tape:
            logits = model([source, target], training=True)
            weights = tf.cast(labels != 0, logits.dtype)
            loss = loss_fn(labels, logits, sample_weight=weights)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return train_step


def time_steps(step, data, steps):
    """Returns (wall seconds, process CPU seconds) per step."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step(*data)
    float(loss)  # wait for the last step
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ff", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder blocks each")
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--jit", action="store_true", help="jit_compile the train step (XLA)")
    parser.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: TF's choice)")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    keras.utils.set_random_seed(0)
    data = make_data(args)
    models = {"ours": build_ours(args), "keras_hub": build_keras_hub(args)}
    steps = {name: make_train_step(model, args.jit) for name, model in models.items()}
    for name, model in models.items():
        print(f"{name:>9}: {model.count_params():,} parameters")
    for step in steps.values():  # trace and warm up
        time_steps(step, data, args.warmup)

    seconds = {name: [] for name in models}
    cpu_seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, step in steps.items():
            wall, cpu = time_steps(step, data, args.steps)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)

    throughput = {}
    print(
        f"config: {args.layers}+{args.layers} layers, hidden {args.hidden}, {args.heads} heads, "
        f"ff {args.ff}, T={args.length}, batch {args.batch}, vocab {args.vocab}, "
        f"jit_compile={args.jit}, {args.rounds} rounds x {args.steps} steps on "
        f"{tf.config.list_logical_devices()[0].device_type}"
    )
    for name, values in seconds.items():
        median = float(np.median(values))
        throughput[name] = args.batch / median
        print(
            f"{name:>9}: {median * 1e3:8.1f} ms/step  {throughput[name]:8.1f} examples/s  "
            f"{throughput[name] * args.length:10.0f} tokens/s  "
            f"CPU {np.median(cpu_seconds[name]) * 1e3:.0f} ms/step  "
            f"(rounds {', '.join(f'{v * 1e3:.0f}' for v in values)} ms)"
        )
    cpu_ratio = np.median(np.array(cpu_seconds["keras_hub"]) / np.array(cpu_seconds["ours"]))
    print(f"CPU-time ratio ours/keras_hub (less sensitive to other load): {cpu_ratio:.2f}")
    paired = np.median(np.array(seconds["keras_hub"]) / np.array(seconds["ours"]))
    print_ratio("ours/keras_hub", paired)


if __name__ == "__main__":
    main()
