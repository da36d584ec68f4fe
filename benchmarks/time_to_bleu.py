"""time_to_bleu: wall time of `experiment=multi30k_transformer` to its validation BLEU, against the 15-minute goal.

The whole documented command is timed (reading the data, learning both vocabularies,
training, the final beam-search BLEU on the 1,014 validation sentences and the export), as a
user runs it, plus `logger=none` and a run directory. It prints the BLEU it reached beside the
BLEU of the first-release run (31.9 with WordPiece and every batch padded to 40 tokens), and
`RATIO wall minutes / 15 = X.XX` (goal <= 1). `--reference` also runs the first-release
settings (`task.tokenizer=wordpiece task.length_buckets=null`) in the same session and prints
`RATIO reference wall / ours wall`. It needs ../shared/data (or `data_root=`) and takes 15-30
minutes per run on a 2-core CPU: run it alone.

    python -m benchmarks time_to_bleu
    python -m benchmarks time_to_bleu --reference
    python -m benchmarks time_to_bleu --set trainer.epochs=6   # any override, repeatable
"""
import argparse
import json
import pathlib
import sys
import tempfile

from benchmarks.common import cpu_model, print_ratio, run_checked

GOAL_MINUTES = 15.0
FIRST_RELEASE_BLEU = 31.9  # docs/results.md: multi30k_transformer, WordPiece, no buckets
REFERENCE = ["task.tokenizer=wordpiece", "task.length_buckets=null"]


def timed_run(run_dir: pathlib.Path, overrides: list[str]) -> tuple[float, dict]:
    command = [sys.executable, "-m", "pipelines", "experiment=multi30k_transformer", "logger=none",
               f"hydra.run.dir={run_dir}", "trainer.verbose=false", *overrides]
    wall, _ = run_checked(command, f"multi30k_transformer {' '.join(overrides)}")
    return wall, json.loads((run_dir / "metrics.json").read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", action="store_true",
                        help="also run the first-release settings and print their ratio")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for both runs (repeatable)")
    parser.add_argument("--run-dir", type=pathlib.Path, default=None,
                        help="where the run writes (default: a temporary folder)")
    args = parser.parse_args(argv)
    print(f"cpu: {cpu_model()}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.run_dir or pathlib.Path(scratch)
        wall, metrics = timed_run(root / "ours", args.set)
        print(f"ours: {wall / 60:.1f} min, BLEU {metrics['bleu']:.1f} (chrF {metrics['chrf']:.1f}); "
              f"first release: BLEU {FIRST_RELEASE_BLEU}", flush=True)
        if args.reference:
            reference_wall, reference = timed_run(root / "reference", REFERENCE + args.set)
            print(f"reference ({' '.join(REFERENCE)}): {reference_wall / 60:.1f} min, "
                  f"BLEU {reference['bleu']:.1f}", flush=True)
            print_ratio("reference wall / ours wall", reference_wall / wall)
    print_ratio(f"wall minutes / {GOAL_MINUTES:.0f}", wall / 60 / GOAL_MINUTES)


if __name__ == "__main__":
    main()
