"""SIGTERM at random points of real CLI runs, and broken checkpoints: what resumes, what is refused.

    python -m benchmarks robustness [--runs 6] [--trials 20] [--seed 0]

Signals: one uninterrupted reference run of
`python -m pipelines task=sentiment model=lstm debug=smoke trainer.deterministic=true
trainer.epochs=3 trainer.steps_per_epoch=10 trainer.checkpoint_every_steps=5 ...` (an SQLite
MLflow store), then `--runs` runs of the same command that get SIGTERM at a uniformly random
moment of the reference's training time (every other run a second SIGTERM as soon as the
first is acknowledged in the log: it must end the process at once), each followed by the same command in the same `hydra.run.dir`. Counted: the exit statuses, the
re-runs whose `metrics.json` and per-epoch history equal the reference's, and the MLflow runs
per experiment (goal: one, FINISHED).

Checkpoints: a small in-process model trains 2 epochs (save points at steps 4 and 8); each
trial copies them and breaks the latest one (`--trials` per kind: truncation at a random
offset, one flipped byte at a random offset, a deleted file; of the data file, the index or
the record), or both, then restores. Counted per kind: fallbacks to step 4 with a warning
naming the file, clear `CheckpointError`s, and anything else (a crash; goal: 0).

Prints `RATIO resumed identical / SIGTERM runs = X` and
`RATIO recovered or clearly refused / corruptions = X` (1.00 is the goal).
"""
import argparse
import collections
import json
import logging
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, print_ratio  # noqa: E402

COMMAND = ["task=sentiment", "model=lstm", "debug=smoke", "export.enabled=false",
           "trainer.deterministic=true", "trainer.epochs=3", "trainer.steps_per_epoch=10",
           "trainer.checkpoint_every_steps=5", "trainer.early_stopping_patience=null"]
STARTED = "parameters"  # the log line just before training starts
ACKNOWLEDGED = "SIGTERM received"


def _outcome(run_dir: pathlib.Path):
    state = json.loads((run_dir / "checkpoints" / "trainer_state.json").read_text())
    history = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in state["history"]]
    return (run_dir / "metrics.json").read_bytes(), history


def _launch(run_dir: pathlib.Path, db: pathlib.Path, experiment: str, log: pathlib.Path):
    args = [sys.executable, "-m", "pipelines", *COMMAND, f"hydra.run.dir={run_dir}",
            f"logger.tracking_uri=sqlite:///{db}", f"logger.experiment_name={experiment}"]
    with open(log, "a") as output:
        return subprocess.Popen(args, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)


def _wait_for(log: pathlib.Path, text: str, process, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{text!r} never appeared in {log}")
        time.sleep(0.01)


def _logged_at(log: pathlib.Path, text: str) -> float:
    """The time stamp of the last log line holding `text` (`[2026-12-02 06:47:08,321]...`)."""
    line = [line for line in log.read_text().splitlines() if text in line][-1]
    stamp = line[1:24]
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1000


def signals(runs: int, rng: random.Random, work: pathlib.Path) -> bool:
    from mlflow import MlflowClient

    db = work / "mlflow.db"
    reference_dir, log = work / "reference", work / "reference.log"
    process = _launch(reference_dir, db, "reference", log)
    if process.wait():
        raise RuntimeError(f"the reference run failed: {log.read_text()[-3000:]}")
    # From the model's log line to the last epoch's: the signals land in this window.
    training = _logged_at(log, "epoch 3/3") - _logged_at(log, STARTED)
    reference = _outcome(reference_dir)
    print(f"reference run: training took {training:.1f} s after the model was built")
    statuses, identical, single_runs = collections.Counter(), 0, 0
    for run in range(runs):
        run_dir, log = work / f"run{run}", work / f"run{run}.log"
        double = run % 2 == 1
        process = _launch(run_dir, db, f"run{run}", log)
        _wait_for(log, STARTED, process)
        delay = rng.uniform(0, training)
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        if double:  # once the first is acknowledged (signals that arrive together merge)
            deadline = time.time() + 10
            while process.poll() is None and time.time() < deadline:
                if ACKNOWLEDGED in log.read_text(errors="replace"):
                    process.send_signal(signal.SIGTERM)
                    break
                time.sleep(0.005)
        status = process.wait()
        text = log.read_text(errors="replace")
        where = next((line.split("stopped by SIGTERM ", 1)[1].split(";")[0]
                      for line in text.splitlines() if "stopped by SIGTERM" in line), "")
        if not where:
            where = ("(killed by the second signal)" if ACKNOWLEDGED in text else
                     "(before training: the default action)")
        statuses[status] += 1
        rerun = _launch(run_dir, db, f"run{run}", log)
        if rerun.wait():
            print(f"run {run}: the re-run failed; see {log}")
            continue
        same = _outcome(run_dir) == reference
        identical += same
        client = MlflowClient(f"sqlite:///{db}")
        found = client.search_runs([client.get_experiment_by_name(f"run{run}").experiment_id])
        one = len(found) == 1 and found[0].info.status == "FINISHED"
        single_runs += one
        print(f"run {run}: {'two SIGTERMs' if double else 'SIGTERM'} {delay:4.1f} s into "
              f"training -> exit {status} {where}; re-run "
              f"{'identical' if same else 'DIFFERENT'}, {len(found)} MLflow run(s) "
              f"{found[0].info.status if found else ''}")
    print(f"SIGTERM runs: {runs}; exit statuses {dict(statuses)}; re-runs identical to the "
          f"uninterrupted run: {identical}/{runs}; one FINISHED MLflow run: {single_runs}/{runs}")
    print_ratio("resumed identical / SIGTERM runs", identical / max(runs, 1))
    return identical == runs == single_runs


def _small_trainer():
    import keras
    import numpy as np
    import tensorflow as tf

    from pipelines.trainer import Trainer

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(2)])
    optimizer = keras.optimizers.Adam(0.05)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(32, drop_remainder=True)

    def loss(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    trainer = Trainer(model, optimizer, loss, lambda y_true, y_pred: {},
                      tf.distribute.get_strategy(), 32, verbose=False)
    return trainer, data


def _truncate(path: pathlib.Path, rng: random.Random) -> str:
    data = path.read_bytes()
    at = rng.randrange(len(data))
    path.write_bytes(data[:at])
    return f"truncated at byte {at} of {len(data)}"


def _flip(path: pathlib.Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return f"one bit flipped at byte {at}"


def _delete(path: pathlib.Path, rng: random.Random) -> str:
    path.unlink()
    return "deleted"


def corruptions(trials: int, rng: random.Random, work: pathlib.Path) -> bool:
    from pipelines.checkpoints import CheckpointError, CheckpointHook

    logging.getLogger("pipelines.checkpoints").setLevel(logging.ERROR)
    source = work / "checkpoints"
    trainer, data = _small_trainer()
    trainer.hooks.append(CheckpointHook(source, trainer.model, trainer.optimizer))
    trainer.fit(data, None, epochs=2, steps_per_epoch=4)
    files = {"data": "ckpt-8.data-00000-of-00001", "index": "ckpt-8.index", "record": "ckpt-8.json"}
    kinds = [(f"{how} {what}", how_fn, name) for what, name in files.items()
             for how, how_fn in (("truncated", _truncate), ("flipped", _flip), ("deleted", _delete))]
    kinds.append(("both save points truncated", _truncate, None))
    table, ok = [], True
    for kind, corrupt, name in kinds:
        outcomes = collections.Counter()
        for _ in range(1 if corrupt is _delete else trials):
            trial = work / "trial"
            shutil.rmtree(trial, ignore_errors=True)
            shutil.copytree(source, trial)
            if name is None:
                for broken in ("ckpt-8.data-00000-of-00001", "ckpt-4.data-00000-of-00001"):
                    corrupt(trial / broken, rng)
            else:
                corrupt(trial / name, rng)
            fresh, _ = _small_trainer()
            hook = CheckpointHook(trial, fresh.model, fresh.optimizer)
            try:
                restored = hook.restore(fresh)
                outcome = f"fell back to step {fresh.state.step}" if restored else "not restored"
            except CheckpointError:
                outcome = "clear error"
            except Exception as error:  # noqa: BLE001 - what the figure counts as a crash
                outcome = f"CRASH {type(error).__name__}"
            outcomes[outcome] += 1
        expected = "clear error" if name is None else "fell back to step 4"
        ok &= set(outcomes) == {expected}
        table.append((kind, sum(outcomes.values()), dict(outcomes)))
    print("| corruption of the latest save point | trials | outcome |\n|---|---|---|")
    for kind, count, outcomes in table:
        print(f"| {kind} | {count} | " + ", ".join(f"{k}: {v}" for k, v in outcomes.items()) + " |")
    tried = sum(count for _, count, _ in table)
    good = sum(v for _, _, outcomes in table for k, v in outcomes.items() if not k.startswith(
        ("CRASH", "not restored")))
    print_ratio("recovered or clearly refused / corruptions", good / tried)
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=6, help="SIGTERM'd CLI runs (0: skip)")
    parser.add_argument("--trials", type=int, default=20, help="trials per corruption kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="robustness-") as work:
        work = pathlib.Path(work)
        ok = corruptions(args.trials, rng, work)
        if args.runs:
            ok &= signals(args.runs, rng, work)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
