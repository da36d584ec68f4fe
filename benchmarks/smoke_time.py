"""Wall time of `python -m pipelines ... debug=smoke` for every task x model pair (goal: < 60 s).

Each pair runs as its own process, one after another, exactly as a user types it:
`python -m pipelines task=T model=M debug=smoke logger=none hydra.run.dir=TMP` (TensorFlow
import, generated data, adapt, 2 train steps, evaluation, pictures, SavedModel export).
This is where the "smoke run under a minute" goal is checked; the tests do not time it.

    python -m benchmarks smoke_time [--pairs translation/transformer ner/gru]

Prints seconds per pair and `RATIO slowest smoke run / 60 s (TASK/MODEL) = X.XX` (below
1.00: every pair meets the goal).
"""
import argparse
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import print_ratio, run_measured, smoke_command  # noqa: E402

GOAL_SECONDS = 60.0
PAIRS = [f"{task}/{model}" for task in ("sentiment", "translation", "ner")
         for model in ("lstm", "gru", "transformer")]
PAIRS += ["image_classification/cnn", "image_classification/vit", "segmentation/unet"]
PAIRS += [f"captioning/{model}" for model in ("lstm", "gru", "transformer")]
PAIRS += [f"language_modeling/{model}" for model in ("lstm", "gru", "transformer")]
PAIRS += ["masked_lm/transformer"]
PAIRS += [f"{task}/{model}" for task in ("image_text", "visual_qa", "multitask")
          for model in ("cnn", "vit")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", default=PAIRS, choices=PAIRS, metavar="TASK/MODEL")
    args = parser.parse_args()
    seconds = {}
    for pair in args.pairs:
        task, model = pair.split("/")
        with tempfile.TemporaryDirectory() as run_dir:
            wall, _, code, tail = run_measured(smoke_command(task, model, run_dir))
        if code:
            sys.exit(f"{pair} failed (exit {code}):\n{tail}")
        seconds[pair] = wall
        print(f"{pair:>32}: {wall:6.1f} s  ({wall / GOAL_SECONDS:.2f} of the goal)", flush=True)
    slowest = max(seconds, key=seconds.get)
    print_ratio(f"slowest smoke run / {GOAL_SECONDS:.0f} s ({slowest})",
                seconds[slowest] / GOAL_SECONDS)


if __name__ == "__main__":
    main()
