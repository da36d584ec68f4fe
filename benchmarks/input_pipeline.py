"""Input pipeline alone vs training: does `task.dataset()` keep the Trainer fed?

For each task, its default config on generated data (model: `common.TASK_MODELS`) is built
the way `pipelines/run.py` builds it: `task.load()`, `task.adapt(splits)`,
`task.dataset(splits.train, training=True, batch_size=trainer.batch_size)`,
`task.build_model()`, the configured optimizer and a `pipelines.trainer.Trainer`. Then, in
alternating rounds of `--seconds` each (so that the load of a shared machine hits both
alike), it measures:

- pipeline: batches/s drawn from an iterator over the training dataset, nothing else running;
- train: steps/s of the Trainer's own step (`Trainer._train_step`, what `fit` calls) on the
  distributed iterator of a second copy of the dataset, the step's stats read back as `fit`
  does.

The ratio per task is the median over rounds of pipeline/train. Goal: >= 5 for every task,
so that the input pipeline, which shares the CPU with the step, costs the step little.

    python -m benchmarks input_pipeline [--tasks sentiment ner] [--seconds 3 --rounds 3]

Prints a row per task, then
`RATIO pipeline/train batches per second (lowest, TASK/MODEL) = X.XX`.
"""
import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pipelines.tasks import build_task  # noqa: E402

from benchmarks.common import TASK_MODELS, compose_cfg, print_ratio  # noqa: E402
from pipelines.distribute import make_strategy  # noqa: E402
from pipelines.run import make_optimizer  # noqa: E402
from pipelines.trainer import Trainer  # noqa: E402


def per_second(fn, seconds, least=3):
    """Calls `fn` for about `seconds` (at least `least` times); returns calls per second."""
    count, began = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - began
        if elapsed >= seconds and count >= least:
            return count / elapsed


def measure(task_name, args):
    cfg = compose_cfg(task_name, TASK_MODELS[task_name], *args.overrides)
    strategy = make_strategy(cfg.distribute)
    task = build_task(cfg)
    began = time.perf_counter()
    splits = task.load()
    task.adapt(splits)
    setup = time.perf_counter() - began
    batch = cfg.trainer.batch_size
    with strategy.scope():
        model = task.build_model()
        optimizer = make_optimizer(cfg.trainer, total_steps=1000)
        optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, task.loss, task.stats, strategy, batch, verbose=False)

    batches = iter(task.dataset(splits.train, training=True, batch_size=batch))
    steps = iter(strategy.experimental_distribute_dataset(
        task.dataset(splits.train, training=True, batch_size=batch)))

    def train_step():
        stats = trainer._train_step(next(steps))
        float(stats["loss"][0])  # wait for the step, as fit's running means do

    for _ in range(3):  # trace the maps and the step, fill the shuffle buffers
        next(batches)
        train_step()
    rates = {"pipeline": [], "train": []}
    for _ in range(args.rounds):
        rates["pipeline"].append(per_second(lambda: next(batches), args.seconds))
        rates["train"].append(per_second(train_step, args.seconds))
    ratio = float(np.median(np.array(rates["pipeline"]) / np.array(rates["train"])))
    print(f"{task_name:>20} ({cfg.model.name:>11}, batch {batch}): pipeline "
          f"{np.median(rates['pipeline']):8.1f} batches/s, train {np.median(rates['train']):6.2f} "
          f"steps/s, ratio {ratio:7.1f}{'' if ratio >= 5 else '  < 5'}  "
          f"(load + adapt {setup:.0f} s, {len(splits.train[0])} train examples)", flush=True)
    return ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASK_MODELS), choices=list(TASK_MODELS))
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every task")
    args = parser.parse_args()
    print(f"median of {args.rounds} alternating rounds of {args.seconds:g} s each, "
          f"overrides: {args.overrides or 'none'}")
    ratios = {name: measure(name, args) for name in args.tasks}
    lowest = min(ratios, key=ratios.get)
    print_ratio(f"pipeline/train batches per second (lowest, {lowest}/{TASK_MODELS[lowest]})",
                ratios[lowest])


if __name__ == "__main__":
    main()
