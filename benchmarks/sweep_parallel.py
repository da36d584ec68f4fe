"""Wall time of an 8-trial sentiment smoke sweep, joblib with n_jobs=2 vs sequential (goal: >= 1.6x).

Both run the same command a user types, `--rounds` times each in ABBA order (so that a drift
in the machine's speed hits both alike), each in its own fresh sweep directory (own
Optuna study and SQLite MLflow store, so the same seed draws the same 8 trials):

    python -m pipelines hparams_search=optuna task=sentiment model=lstm debug=smoke
        hydra.sweeper.n_trials=8 hydra.sweep.dir=TMP logger.tracking_uri=sqlite:///TMP/mlflow.db
    ... hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweeper.n_jobs=2

The sequential sweep runs its trials in the sweeper's process (TensorFlow imported once); the
parallel one in two joblib (loky) worker processes, each of which imports TensorFlow once and
then runs its share. The TensorFlow import alone is timed too, so that the report can say how
much of a trial the per-process start costs. Run it on an otherwise idle machine:

    flock /tmp/pipelines-train.lock python -m benchmarks sweep_parallel [--trials 8 --jobs 2]

Prints the wall times and `RATIO sequential / parallel (n_jobs=2) = X.XX` (summed over rounds).
"""
import argparse
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import print_ratio, run_measured  # noqa: E402

GOAL = 1.6


def sweep_command(sweep_dir: pathlib.Path, trials: int, jobs: int) -> list[str]:
    command = [sys.executable, "-m", "pipelines", "hparams_search=optuna", "task=sentiment",
               "model=lstm", "debug=smoke", f"hydra.sweeper.n_trials={trials}",
               f"hydra.sweep.dir={sweep_dir}",
               f"logger.tracking_uri=sqlite:///{sweep_dir / 'mlflow.db'}",
               "logger.experiment_name=sweep_parallel"]
    if jobs > 1:
        command += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}",
                    f"hydra.sweeper.n_jobs={jobs}"]
    return command


def timed(command: list[str], what: str) -> float:
    wall, _, code, tail = run_measured(command)
    if code:
        sys.exit(f"{what} failed (exit {code}):\n{tail}")
    print(f"{what:>34}: {wall:6.1f} s", flush=True)
    return wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2,
                        help="sequential/parallel pairs, run in ABBA order")
    args = parser.parse_args()
    importing = timed([sys.executable, "-c", "import tensorflow, keras"],
                      "TensorFlow + Keras import")
    walls = {1: [], args.jobs: []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for round_ in range(args.rounds):
            order = (1, args.jobs) if round_ % 2 == 0 else (args.jobs, 1)  # ABBA: drift hits both
            for jobs in order:
                what = "sequential" if jobs == 1 else f"joblib n_jobs={jobs}"
                walls[jobs].append(timed(sweep_command(tmp / f"{round_}-{jobs}", args.trials, jobs),
                                         f"{args.trials} trials, {what}"))
    sequential, parallel = sum(walls[1]), sum(walls[args.jobs])
    per_trial = sequential / args.rounds / args.trials
    print(f"sequential: {per_trial:.1f} s per trial; the parallel sweep pays the import "
          f"({importing:.1f} s) once per worker, {args.jobs} workers; per round: "
          + ", ".join(f"{s:.1f}/{p:.1f}" for s, p in zip(walls[1], walls[args.jobs])), flush=True)
    print_ratio(f"sequential / parallel (n_jobs={args.jobs}, goal >= {GOAL})",
                sequential / parallel)


if __name__ == "__main__":
    main()
