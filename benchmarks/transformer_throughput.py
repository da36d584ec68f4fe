"""Training throughput of a small Transformer encoder-decoder: our blocks vs keras-hub's.

Both models have the same sizes, initial weights drawn the same way, the same data
and the same `tf.function` train step (Adam, masked-by-padding inputs, token
cross-entropy). Their steps are timed in alternating rounds so that a noisy,
shared CPU slows both alike. Each model's throughput is its median round; the
ratio is the median over rounds of the paired ratio (same round, same load).

    python -m benchmarks transformer_throughput [--steps 10 --rounds 5 --jit] [--profile DIR]

The default size is issue 18's: 2+2 layers, hidden 256, 8 heads, FFN 1024, T=32,
batch 64, vocabulary 8,000. Prints examples/s and tokens/s for each model, the model
FLOP utilisation (6 x (non-embedding parameters, output projection included) x tokens/s
over the fp32 GFLOP/s of a 2048^3 matmul timed in each round), and
`RATIO ours/keras_hub = X.XX` (above 1.0: ours trains faster). `--profile DIR` also
traces 3 steps of each with tf.profiler (TensorBoard reads DIR/NAME) and prints where the
op time goes: the matmuls by role, Adam, dropout, softmax, layer norm, ...
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

from benchmarks.common import is_matmul, print_ratio, traced_op_times  # noqa: E402
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


def embedding_parameters(model):
    """Parameters of the token and position embedding tables (lookups, not matmuls)."""
    embeddings = (TokenAndPositionEmbedding, keras_hub.layers.TokenAndPositionEmbedding)
    return sum(
        int(np.prod(v.shape))
        for layer in model.layers if isinstance(layer, embeddings)
        for v in layer.trainable_weights
    )


def matmul_gflops(size=2048, repeats=3):
    """fp32 GFLOP/s of a timed (size, size) @ (size, size) matmul in this process:
    the median of `repeats` calls of a compiled matmul (2 * size^3 FLOPs each)."""
    a = tf.random.stateless_normal((size, size), seed=(1, 2))
    b = tf.random.stateless_normal((size, size), seed=(3, 4))
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)[:1, :1]))
    float(matmul())  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(matmul())
        times.append(time.perf_counter() - start)
    return 2 * size**3 / float(np.median(times)) / 1e9


def time_steps(step, data, steps):
    """Returns (wall seconds, process CPU seconds) per step."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step(*data)
    float(loss)  # wait for the last step
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


# (category, test on the lower-cased op name and the op type), first match wins.
CATEGORIES = (
    ("Adam updates", lambda name, kind: "adam" in name or kind.startswith("ResourceApply")),
    ("vocabulary softmax + cross-entropy",
     lambda name, kind: "crossentropy" in name or "SoftmaxCrossEntropy" in kind),
    ("output projection matmul (D x 8000)",
     lambda name, kind: "/dense" in name and is_matmul(kind)),
    ("feed-forward matmuls", lambda name, kind: "feedforward" in name and is_matmul(kind)),
    ("attention matmuls (q, k, v, out, scores)",
     lambda name, kind: "attention" in name and is_matmul(kind)),
    ("dropout RNG and masks", lambda name, kind: "dropout" in name),
    ("attention softmax", lambda name, kind: "attention" in name and "Softmax" in kind),
    ("layer norm", lambda name, kind: "_norm" in name or "normalization" in name),
    ("attention masks", lambda name, kind: "attention" in name and kind in (
        "SelectV2", "Select", "LogicalAnd", "LessEqual", "Less", "BroadcastTo", "Range",
        "NotEqual", "Cast", "ExpandDims", "Tile")),
    ("embeddings (lookup and its gradient)", lambda name, kind: "embedding" in name),
    ("bias adds, relu, residual adds",
     lambda name, kind: kind in ("BiasAdd", "BiasAddGrad", "Relu", "ReluGrad", "AddV2", "_MklAdd")),
    ("transposes, reshapes, copies",
     lambda name, kind: kind in ("Transpose", "Reshape", "ConcatV2", "Split", "Unpack", "Pack",
                                 "StridedSlice", "StridedSliceGrad", "Identity", "_MklTranspose")),
)


def print_breakdown(totals, steps, label):
    shares = {}
    for (name, kind), micros in totals.items():
        category = next(
            (title for title, test in CATEGORIES if test(name.lower(), kind)), "other"
        )
        shares[category] = shares.get(category, 0.0) + micros
    total = sum(shares.values())
    print(f"profile {label}: {total / steps / 1e3:.1f} ms of op time per step (summed over threads)")
    for category, micros in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {category:<42} {micros / steps / 1e3:7.1f} ms  {100 * micros / total:5.1f}%")
    top = sorted(totals.items(), key=lambda item: -item[1])[:12]
    print("  top ops:")
    for (name, kind), micros in top:
        print(f"    {micros / steps / 1e3:7.1f} ms  {kind:<24} {name[-90:]}")


def profile_steps(step, data, logdir, label, steps=3):
    """Traces `steps` train steps with tf.profiler into `logdir` and prints the op-time
    breakdown by category (matmuls by role, softmax over the vocabulary, Adam, ...)."""
    hlo_dir = os.path.join(os.path.dirname(logdir), "hlo")
    totals = traced_op_times(lambda count: time_steps(step, data, count), logdir, steps,
                             hlo_dir if os.path.isdir(hlo_dir) else None)
    print_breakdown(totals, steps, label)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ff", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder blocks each")
    parser.add_argument("--steps", type=int, default=10, help="train steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--jit", action="store_true", help="jit_compile the train step (XLA)")
    parser.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: TF's choice)")
    parser.add_argument("--matmul", type=int, default=2048, help="size of the timed fp32 matmul")
    parser.add_argument(
        "--profile", metavar="DIR", help="also write a tf.profiler trace of 3 steps of each "
        "model to DIR/NAME and print its op-time breakdown"
    )
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    if args.profile and args.jit:
        # Read by XLA at its first compile: HLO-level trace events, and the optimised
        # HLO text whose metadata names the TF op behind each instruction.
        os.environ["XLA_FLAGS"] = " ".join([
            os.environ.get("XLA_FLAGS", ""), "--xla_cpu_enable_xprof_traceme=true",
            f"--xla_dump_to={os.path.join(args.profile, 'hlo')}", "--xla_dump_hlo_as_text",
        ])
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
    gflops = []  # one matmul measurement per round, under the round's load
    for _ in range(args.rounds):
        for name, step in steps.items():
            wall, cpu = time_steps(step, data, args.steps)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
        gflops.append(matmul_gflops(args.matmul))

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
    # Model FLOPs per step: 6 (forward 2, backward 4) per parameter per token, over the
    # parameters that multiply (all but the embedding tables; the output projection
    # included). Tokens: the B*T target tokens. The encoder's parameters see the B*T
    # source tokens instead, as many (S = T), so source tokens are not counted again.
    # Attention's q.k and weights.v products (~2% here) are not in the count.
    peak = float(np.median(gflops))
    print(
        f"fp32 matmul {args.matmul}x{args.matmul}: {peak:.1f} GFLOP/s (median of "
        f"{args.rounds} rounds; {min(gflops):.1f} to {max(gflops):.1f})"
    )
    for name, model in models.items():
        params = model.count_params() - embedding_parameters(model)
        flops = 6 * params * args.batch * args.length  # per step
        # Each round's model GFLOP/s over the matmul's in the same round (same load).
        mfu = np.median(flops / np.array(seconds[name]) / 1e9 / np.array(gflops))
        print(
            f"MFU {name} = {100 * mfu:.0f}%  (6 x {params:,} non-embedding parameters x "
            f"{args.batch * args.length} target tokens = {flops / 1e9:.1f} GFLOP per step; "
            f"median over rounds of model GFLOP/s / matmul GFLOP/s)"
        )
    cpu_ratio = np.median(np.array(cpu_seconds["keras_hub"]) / np.array(cpu_seconds["ours"]))
    print(f"CPU-time ratio ours/keras_hub (less sensitive to other load): {cpu_ratio:.2f}")
    paired = np.median(np.array(seconds["keras_hub"]) / np.array(seconds["ours"]))
    if args.profile:
        for name, step in steps.items():
            profile_steps(step, data, os.path.join(args.profile, name), name)
    print_ratio("ours/keras_hub", paired)


if __name__ == "__main__":
    main()
