"""Translation serving latency per sentence: batch 1 vs batch 32, SavedModel and in-process.

A translation Transformer (the default `task=translation model=transformer` config, its
WordPiece vocabularies learned on the generated training split) is built, optionally
trained for `--train-steps` steps with the Trainer, exported with `task.export` (raw strings
in, beam search in the graph) and loaded back with `tf.saved_model.load`. Its
`serving_default` and, for reference, the same translate function as an in-process
`tf.function` over the Keras model translate the same 32 validation sentences one per call
(batch 1) and in one call (batch 32), in alternating rounds so that the load of a shared
machine hits both alike; a latency is the median over rounds and the ratio the median of
the per-round ratios. An untrained model rarely emits [END], so its beams run to
`decode.max_length`: the worst case per sentence.

    python -m benchmarks export_latency [--rounds 5 --train-steps 0] [hydra overrides]

With the override `decode.jit_compile=true` the exported search (and the in-process one) is
XLA-compiled; the first call of each batch size, which compiles, is timed apart.

Prints ms per sentence for each and
`RATIO SavedModel per-sentence latency batch 1 / batch 32 = X.XX`.
"""
import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (the export's WordPiece ops)
from pipelines.tasks import build_task  # noqa: E402

from benchmarks.common import compose_cfg, print_ratio  # noqa: E402
from pipelines.run import make_optimizer  # noqa: E402
from pipelines.trainer import Trainer  # noqa: E402

BATCH = 32


def build(args):
    cfg = compose_cfg("translation", "transformer", *args.overrides)
    task = build_task(cfg)
    splits = task.load()
    task.adapt(splits)
    batch = cfg.trainer.batch_size
    train_ds = task.dataset(splits.train, True, batch)  # as run() does: calls the tokenizers
    model = task.build_model()
    if args.train_steps:
        optimizer = make_optimizer(cfg.trainer, total_steps=args.train_steps)
        trainer = Trainer(model, optimizer, task.loss, task.stats, tf.distribute.get_strategy(),
                          batch, verbose=False)
        trainer.fit(train_ds, None, 1, args.train_steps)
    return cfg, task, model, splits


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. decode.beam_size=1")
    args = parser.parse_args()
    cfg, task, model, splits = build(args)
    sentences = list(splits.validation[0])

    with tempfile.TemporaryDirectory() as directory:
        task.export(model, directory)
        serve = tf.saved_model.load(directory).signatures["serving_default"]
        in_process = tf.function(task.serving_fn(model),
                                 input_signature=[tf.TensorSpec([None], tf.string)])
        fns = {"SavedModel": lambda text: serve(text=text)["translation"].numpy(),
               "in-process": lambda text: in_process(text)["translation"].numpy()}
        texts = sentences[:BATCH]
        calls = {1: [tf.constant([t]) for t in texts], BATCH: [tf.constant(texts)]}
        first = {}
        for name, fn in fns.items():  # trace (and compile), warm up
            for size, inputs in calls.items():
                began = time.perf_counter()
                fn(inputs[0])
                first[name, size] = time.perf_counter() - began
        # Per round and per function: the same BATCH sentences one per call, then in one call.
        seconds = {(name, size): [] for name in fns for size in calls}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                for size, inputs in calls.items():
                    began = time.perf_counter()
                    out = [fn(x) for x in inputs]
                    seconds[name, size].append((time.perf_counter() - began) / BATCH)
        words = np.mean([len(t.split()) for t in out[0]])

    print(f"{tf.config.list_logical_devices()[0].device_type}, beam {cfg.decode.beam_size}, "
          f"decode.jit_compile={cfg.decode.jit_compile}, "
          f"max {task.max_decode} tokens, {model.count_params():,} parameters, "
          f"{args.train_steps} train steps, {words:.1f} words per translation, "
          f"{BATCH} sentences per round, median of {args.rounds} rounds")
    ratios = {}
    for name in fns:
        for size in calls:
            print(f"{name:>10} batch {size:>2}: {1e3 * np.median(seconds[name, size]):7.1f} "
                  f"ms per sentence (first call {first[name, size]:.1f} s)")
        ratios[name] = np.median(np.array(seconds[name, 1]) / np.array(seconds[name, BATCH]))
    print(f"in-process per-sentence ratio batch 1 / batch {BATCH}: {ratios['in-process']:.2f}")
    print_ratio(f"SavedModel per-sentence latency batch 1 / batch {BATCH}", ratios["SavedModel"])


if __name__ == "__main__":
    main()
