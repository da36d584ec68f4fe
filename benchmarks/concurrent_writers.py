"""Runs and metrics written vs expected when processes write one fresh SQLite MLflow store at once (goal: equal).

Every writer process does what a sweep job's tracker does: opens the store (the first one
creates it, under `pipelines.locks.store_lock`), finds or creates the sweep's one parent run
(`pipelines.tracking.sweep_parent_run`), then logs its child runs, each with metrics over
steps in batches, every call through `retry_locked`. All start at the same instant (a file
barrier after their imports). Afterwards the store is read back: one parent, every child under
it and FINISHED, every metric value at every step.

    python -m benchmarks concurrent_writers [--processes 4 --runs 10 --steps 20]

Prints the counts and `RATIO values written / expected = X.XX` (1.00: nothing lost).
"""
import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, print_ratio  # noqa: E402

METRICS = 3
EXPERIMENT = "concurrent_writers"


def _barrier(directory: pathlib.Path, count: int) -> None:
    (directory / str(os.getpid())).touch()
    while len(list(directory.iterdir())) < count:
        time.sleep(0.01)


def write(uri: str, sweep_dir: pathlib.Path, name: str, runs: int, steps: int) -> None:
    """One writer: a sweep job's tracker calls, `runs` child runs of `steps` steps each."""
    import mlflow
    from mlflow.entities import Metric

    from pipelines.locks import retry_locked, store_lock
    from pipelines.tracking import sweep_parent_run

    mlflow.set_tracking_uri(uri)
    _barrier(pathlib.Path(os.environ["BARRIER_DIR"]), int(os.environ["BARRIER_COUNT"]))
    with store_lock(uri):  # as Tracker.start: the first process creates the store
        experiment = retry_locked(mlflow.set_experiment, EXPERIMENT).experiment_id
    client = mlflow.MlflowClient()
    parent = sweep_parent_run(client, experiment, sweep_dir, "toy", study="toy.0123")
    for index in range(runs):
        run = retry_locked(client.create_run, experiment, run_name=f"{name}-{index}",
                           tags={"mlflow.parentRunId": parent, "writer": name})
        for step in range(steps):
            retry_locked(client.log_batch, run.info.run_id, metrics=[
                Metric(f"m{k}", step + k, int(time.time() * 1000), step)
                for k in range(METRICS)])
        retry_locked(client.set_terminated, run.info.run_id)


def count(uri: str, names: list[str], runs: int, steps: int) -> dict[str, tuple[int, int]]:
    """{what: (written, expected)} for parents, children and metric values read back."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                               max_results=10_000)
    parents = [r for r in found if r.data.tags.get("sweep_parent") == "true"]
    parent_ids = {p.info.run_id for p in parents}
    expected_names = {f"{name}-{index}" for name in names for index in range(runs)}
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") in parent_ids
                and r.info.run_name in expected_names and r.info.status == "FINISHED"]
    values = 0
    for child in children:
        for k in range(METRICS):
            history = client.get_metric_history(child.info.run_id, f"m{k}")
            values += len({(m.step, m.value) for m in history} & {(s, s + k) for s in range(steps)})
    return {"parent runs": (len(parents), 1),
            "child runs under it, FINISHED": (len(children) if len(parents) == 1 else 0,
                                              len(expected_names)),
            "metric values": (values, len(expected_names) * METRICS * steps),
            "runs in the experiment": (len(found), 1 + len(expected_names))}


def run_writers(directory: pathlib.Path, processes: int, runs: int, steps: int):
    """Starts the writers together on a fresh store in `directory`; returns (counts, seconds,
    how many calls found the database locked and were retried)."""
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    barrier = directory / "barrier"
    barrier.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), BARRIER_DIR=str(barrier),
               BARRIER_COUNT=str(processes))
    names = [chr(ord("a") + i) for i in range(processes)]
    began = time.perf_counter()
    children = [subprocess.Popen([sys.executable, __file__, "--worker", uri,
                                  str(directory / "sweep"), name, str(runs), str(steps)],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for name in names]
    outputs = [child.communicate(timeout=900)[0] for child in children]
    seconds = time.perf_counter() - began
    for child, output in zip(children, outputs):
        if child.returncode:
            raise RuntimeError(f"a writer failed (exit {child.returncode}):\n{output[-3000:]}")
    retried = sum(output.count("the database is locked") for output in outputs)
    return count(uri, names, runs, steps), seconds, retried


def main():
    if sys.argv[1:2] == ["--worker"]:
        import logging

        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("pipelines.locks").setLevel(logging.INFO)  # each retry, counted
        uri, sweep_dir, name, runs, steps = sys.argv[2:7]
        write(uri, pathlib.Path(sweep_dir), name, int(runs), int(steps))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--runs", type=int, default=10, help="child runs per process")
    parser.add_argument("--steps", type=int, default=20, help=f"steps of {METRICS} metrics a run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        counts, seconds, retried = run_writers(pathlib.Path(tmp), args.processes, args.runs,
                                               args.steps)
    print(f"{args.processes} processes x {args.runs} runs x {args.steps} steps x {METRICS} "
          f"metrics into one fresh SQLite store, started together: {seconds:.1f} s, "
          f"{retried} calls found the database locked and were retried")
    for what, (written, expected) in counts.items():
        print(f"{what:>32}: {written} of {expected}")
    written, expected = counts["metric values"]
    print_ratio("values written / expected", written / expected)


if __name__ == "__main__":
    main()
