"""Peak resident memory of a smoke training run per task vs a process that only imports TF.

Each run is its own process: first the baseline, `python -c "import tensorflow as tf;
tf.constant(1)"`, then per task `python -m pipelines task=T model=M debug=smoke logger=none
hydra.run.dir=TMP` (model: `common.TASK_MODELS`). The peak is the kernel's high-water mark of
the process's resident set (VmHWM in /proc/PID/status, read while it runs, and the child's
ru_maxrss at exit): it counts TensorFlow's native allocations, which tracemalloc misses.

    python -m benchmarks peak_memory [--tasks sentiment segmentation]

Prints MiB per run and its ratio to the baseline, then
`RATIO peak RSS smoke run / TF import (highest, TASK/MODEL) = X.XX`.
"""
import argparse
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import TASK_MODELS, print_ratio, run_measured, smoke_command  # noqa: E402

BASELINE = [sys.executable, "-c", "import tensorflow as tf; tf.constant(1).numpy()"]


def peak(command, label):
    _, rss, code, tail = run_measured(command)
    if code:
        sys.exit(f"{label} failed (exit {code}):\n{tail}")
    return rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASK_MODELS), choices=list(TASK_MODELS))
    args = parser.parse_args()
    baseline = peak(BASELINE, "the TF import")
    print(f"{'TF import only':>32}: {baseline / 2**20:7.0f} MiB", flush=True)
    ratios = {}
    for task in args.tasks:
        with tempfile.TemporaryDirectory() as run_dir:
            rss = peak(smoke_command(task, TASK_MODELS[task], run_dir), task)
        ratios[task] = rss / baseline
        print(f"{task + '/' + TASK_MODELS[task]:>32}: {rss / 2**20:7.0f} MiB  "
              f"({ratios[task]:.2f}x the TF import)", flush=True)
    highest = max(ratios, key=ratios.get)
    print_ratio(f"peak RSS smoke run / TF import (highest, {highest}/{TASK_MODELS[highest]})",
                ratios[highest])


if __name__ == "__main__":
    main()
