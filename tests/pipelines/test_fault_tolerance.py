"""Fault tolerance: deterministic runs, mid-epoch checkpoints, SIGKILL-and-resume, SIGTERM/SIGINT
stops, NaN recovery (broken checkpoints: test_checkpoints.py).

The in-process tests pin the mechanics exactly (same floats as an uninterrupted run); the CLI
tests prove the whole path: a fresh process, a real SIGKILL, the same `hydra.run.dir`.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.checkpoints import CheckpointHook
from pipelines.optimizers import ScaledSchedule
from pipelines.trainer import Hook, Trainer, TrainingInterrupted
from tests.conftest import REPO
from tests.e2e.test_cli import _cli
from tests.pipelines.test_trainer import _data, _loss, _stats


def _trainer(lr=0.05, **kwargs):
    """Dropout in the model, so that a resume must also restore the RNG state."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(2)])
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        kwargs["lr_scale"] = tf.Variable(1.0, trainable=False)  # as make_optimizer builds it
        lr = ScaledSchedule(lr, kwargs["lr_scale"])
    optimizer = keras.optimizers.Adam(lr)
    optimizer.build(model.trainable_variables)
    return Trainer(model, optimizer, _loss, _stats, tf.distribute.get_strategy(), 32,
                   verbose=False, **kwargs)


def _datasets():
    """A seeded, reshuffled stream whose epochs (4 steps) do not align with its passes.

    Fresh for every fit: iterating one shuffled dataset object again continues its seed
    sequence, whereas each CLI run (one fit per process) starts it anew."""
    train = (tf.data.Dataset.from_tensor_slices(_data(200))
             .shuffle(200, seed=3, reshuffle_each_iteration=True).repeat()
             .batch(32, drop_remainder=True))
    return train, tf.data.Dataset.from_tensor_slices(_data(64, seed=1)).batch(32)


def _without_seconds(history):
    return [{k: v for k, v in logs.items() if k != "epoch_seconds"} for logs in history]


class _Killed(Exception):
    pass


class _KillAt(Hook):
    def __init__(self, step):
        self.step = step

    def on_save_point(self, trainer):
        if trainer.state.step == self.step:
            raise _Killed


def test_resume_from_a_mid_epoch_checkpoint_equals_the_uninterrupted_run(tmp_path):
    expected = _trainer(checkpoint_every_steps=3)
    expected.fit(*_datasets(), epochs=3, steps_per_epoch=4)

    killed = _trainer(checkpoint_every_steps=3)
    hook = CheckpointHook(tmp_path, killed.model, killed.optimizer)
    killed.hooks += [hook, _KillAt(step=6)]  # epoch 2, after its step 2
    with pytest.raises(_Killed):
        killed.fit(*_datasets(), epochs=3, steps_per_epoch=4)
    # A kill between the next checkpoint and its state file: the state still says step 6.
    for variable in killed.model.trainable_variables:
        variable.assign(tf.zeros_like(variable))
    hook.checkpoint.write(str(tmp_path / "ckpt-7"))

    resumed = _trainer(checkpoint_every_steps=3)
    hook = CheckpointHook(tmp_path, resumed.model, resumed.optimizer)
    resumed.hooks.append(hook)
    assert hook.restore(resumed)
    assert resumed.state.epoch == 1 and resumed.state.partial.steps == 2
    history = resumed.fit(*_datasets(), epochs=3, steps_per_epoch=4)
    # Same data position, dropout RNG, optimizer state and partial epoch sums: same floats.
    assert _without_seconds(history) == _without_seconds(expected.state.history)
    for w1, w2 in zip(expected.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    # Numbered by steps: the save point at step 9 (epoch 3) and the end at step 12 remain.
    assert {p.name for p in tmp_path.glob("ckpt-*.index")} == {"ckpt-9.index", "ckpt-12.index"}


@pytest.fixture
def signal_handlers():
    """The test process's SIGTERM/SIGINT handlers, put back after a trainer left them at the
    default (so that a second signal would end the process at once)."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def _signal_before_call(trainer, call, signum):
    """Sends `signum` to this process just before the `call`-th training step runs."""
    step, calls = trainer._train_step, []

    def signalling_step(*args):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return step(*args)

    trainer._train_step = signalling_step


class _Interrupts(Hook):
    def __init__(self):
        self.heard, self.ended = [], False

    def on_interrupt(self, trainer, signal_name):
        self.heard.append((signal_name, trainer.state.step))

    def on_train_end(self, trainer, logs):
        self.ended = True


@pytest.mark.parametrize("signum,call,stopped_at,partial", [
    (signal.SIGTERM, 6, 7, 3),  # epoch 2: a mid-epoch save point after its step 3
    (signal.SIGINT, 3, 4, None),  # the step that ends epoch 1: its epoch-end save point
    (signal.SIGTERM, 12, 12, None),  # after the last vote: training is done, the save is too
], ids=["sigterm-mid-epoch", "sigint-at-epoch-end", "sigterm-in-the-last-step"])
def test_a_signal_stops_after_the_next_step_with_a_save_point_that_resumes_exactly(
        signum, call, stopped_at, partial, tmp_path, signal_handlers):
    expected = _trainer()
    expected.fit(*_datasets(), epochs=3, steps_per_epoch=4)

    stopped, heard = _trainer(), _Interrupts()
    stopped.hooks += [CheckpointHook(tmp_path, stopped.model, stopped.optimizer), heard]
    _signal_before_call(stopped, call, signum)
    with pytest.raises(TrainingInterrupted) as raised:
        stopped.fit(*_datasets(), epochs=3, steps_per_epoch=4)
    # The signal's step finishes, the vote rides on the next one: every worker stops there.
    assert raised.value.code == 128 + signum and raised.value.signal_name == signum.name
    assert heard.heard == [(signum.name, stopped_at)] and not heard.ended
    saved = json.loads((tmp_path / "trainer_state.json").read_text())
    assert saved["step"] == stopped_at and saved.get("partial", {}).get("steps") == partial
    # A second signal would meet the default handler: the process ends at once.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL

    resumed = _trainer()
    hook = CheckpointHook(tmp_path, resumed.model, resumed.optimizer)
    resumed.hooks.append(hook)
    assert hook.restore(resumed)
    history = resumed.fit(*_datasets(), epochs=3, steps_per_epoch=4)
    assert _without_seconds(history) == _without_seconds(expected.state.history)
    for w1, w2 in zip(expected.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(w1, w2)


def test_without_a_signal_fit_puts_the_previous_handlers_back(signal_handlers):
    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    _trainer().fit(_datasets()[0], None, epochs=1, steps_per_epoch=2)
    assert signal.getsignal(signal.SIGTERM) is mine


def test_replicas_agree_on_the_stop_step_under_mirrored(signal_handlers):
    """The stop vote is summed across replicas with the step's statistics."""
    from tests.pipelines.test_trainer import _datasets as plain_datasets
    from tests.pipelines.test_trainer import _trainer as plain_trainer

    trainer = plain_trainer(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    step = trainer._train_step

    def step_then_request(*args):
        stats = step(*args)
        trainer.request_stop("SIGTERM")  # as the handler does, on one worker
        return stats

    trainer._train_step = step_then_request
    with pytest.raises(TrainingInterrupted, match="SIGTERM in epoch 1 at step 2 of 4"):
        trainer.fit(plain_datasets()[0], None, epochs=1, steps_per_epoch=4)


def _poison(trainer, first, last=None):
    """The loss (and so every gradient) becomes NaN from the `first` to the `last` step."""
    calls = tf.Variable(0)

    def loss(y, y_pred):
        calls.assign_add(1)
        bad = calls >= first if last is None else (calls >= first) & (calls <= last)
        return _loss(y, y_pred) * tf.where(bad, float("nan"), 1.0)

    trainer.loss_fn = loss
    trainer._train_step = trainer._make_train_step()


@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "cosine"])
def test_nan_loss_restores_the_last_save_point_and_halves_the_learning_rate(schedule, tmp_path,
                                                                           caplog):
    lr = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=100) if schedule else 0.05
    trainer = _trainer(lr, checkpoint_every_steps=3, max_nan_recoveries=2)
    trainer.hooks.append(CheckpointHook(tmp_path, trainer.model, trainer.optimizer))
    _poison(trainer, first=5, last=5)  # epoch 2, step 1; the last save point is epoch 1's end
    history = trainer.fit(_datasets()[0], None, epochs=2, steps_per_epoch=4)

    assert trainer.state.nan_recoveries == 1 and trainer.state.lr_scale == 0.5
    assert "halved the learning rate" in caplog.text
    assert int(trainer.optimizer.iterations) == 7  # step 5 undone (back to 4), then 6, 7, 8
    assert all(np.isfinite(w).all() for w in trainer.model.get_weights())
    assert all(math.isfinite(logs["train_loss"]) for logs in history)
    base = float(lr(7)) if schedule else 0.05
    assert history[0]["learning_rate"] == pytest.approx(float(lr(4)) if schedule else 0.05)
    assert history[1]["learning_rate"] == pytest.approx(base / 2)

    resumed = _trainer(lr, max_nan_recoveries=2)  # the halved rate survives a resume
    CheckpointHook(tmp_path, resumed.model, resumed.optimizer).restore(resumed)
    resumed.fit(_datasets()[0], None, epochs=2, steps_per_epoch=4)  # already finished
    assert float(resumed.optimizer.learning_rate) == pytest.approx(base / 2)


def test_nan_recoveries_run_out_with_a_clear_error():
    trainer = _trainer(max_nan_recoveries=2)
    _poison(trainer, first=3)  # NaN for good: recoveries at steps 3 and 4, then the error
    with pytest.raises(FloatingPointError, match=(
            r"the training loss became nan in epoch 2, step 1 after 2 recoveries; lower "
            r"trainer.learning_rate, set trainer.clip_norm or raise "
            r"trainer.max_nan_recoveries \(now 2\)")):
        trainer.fit(_datasets()[0], None, epochs=2, steps_per_epoch=4)
    assert trainer.state.nan_recoveries == 2 and trainer.state.lr_scale == 0.25
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.05 / 4)
    assert int(trainer.optimizer.iterations) == 1  # each recovery went back to the start


# ------------------------------------------------------------------ the CLI, in subprocesses
# 3 epochs of 10 steps over ~100 examples (6 batches a pass): epochs cross reshuffles; save
# points at steps 5, 15, 25; no early stopping, so the final weights depend on every step.
COMMAND = ["task=sentiment", "model=lstm", "debug=smoke", "logger=none", "export.enabled=false",
           "trainer.deterministic=true", "trainer.epochs=3", "trainer.steps_per_epoch=10",
           "trainer.checkpoint_every_steps=5", "trainer.early_stopping_patience=null"]


def _outcome(run_dir):
    """metrics.json's bytes and the per-epoch history without wall-clock times."""
    state = json.loads((run_dir / "checkpoints" / "trainer_state.json").read_text())
    return (run_dir / "metrics.json").read_bytes(), _without_seconds(state["history"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result, seconds = _cli(*COMMAND, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"one run took {seconds:.0f}s")
    return _outcome(run_dir)


def test_deterministic_runs_write_identical_metrics(uninterrupted, tmp_path):
    result, _ = _cli(*COMMAND, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _outcome(tmp_path) == uninterrupted


def _mid_epoch(state_file) -> bool:
    try:
        return "partial" in json.loads(state_file.read_text())
    except FileNotFoundError:
        return False


@pytest.mark.slow  # three CLI processes: ~65 s on its own, ~45 s beside the determinism test
def test_sigkill_at_a_mid_epoch_checkpoint_then_rerun_matches_an_uninterrupted_run(
        uninterrupted, tmp_path):
    args = [sys.executable, "-m", "pipelines", *COMMAND, f"hydra.run.dir={tmp_path}"]
    state_file = tmp_path / "checkpoints" / "trainer_state.json"
    with open(tmp_path / "killed.log", "w") as output:
        process = subprocess.Popen(args, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            while not _mid_epoch(state_file):
                assert process.poll() is None, "the run ended before a mid-epoch checkpoint"
                assert time.time() < deadline, "no mid-epoch checkpoint within 240 s"
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL and not (tmp_path / "metrics.json").exists()
    steps = json.loads(state_file.read_text())["partial"]["steps"]

    result, _ = _cli(*COMMAND, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"(step {steps} of 10)" in result.stdout + result.stderr  # resumed mid-epoch
    assert _outcome(tmp_path) == uninterrupted


@pytest.mark.slow  # two CLI processes: ~40 s beside the uninterrupted run
def test_sigterm_mid_training_exits_143_and_the_rerun_matches_an_uninterrupted_run(
        uninterrupted, tmp_path):
    """The whole path: a real SIGTERM to the CLI, the save point, exit status 143, the MLflow
    run ended KILLED; the same command again resumes, ends FINISHED with the same metrics."""
    from tests.e2e.test_cli import _mlflow_client

    run_dir, db = tmp_path / "run", tmp_path / "mlflow.db"
    command = [*(arg for arg in COMMAND if arg != "logger=none"), f"hydra.run.dir={run_dir}",
               f"logger.tracking_uri=sqlite:///{db}", "logger.experiment_name=sigterm"]
    state_file = run_dir / "checkpoints" / "trainer_state.json"
    with open(tmp_path / "stopped.log", "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "pipelines", *command], cwd=REPO,
                                   stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 240
            while not _mid_epoch(state_file):  # training is under way: the step-5 save point
                assert process.poll() is None, "the run ended before its first save point"
                assert time.time() < deadline, "no save point within 240 s"
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            process.wait(120)
        finally:
            process.kill()
            process.wait()
    log = (tmp_path / "stopped.log").read_text()
    assert process.returncode == 143, log[-3000:]
    assert "stopped by SIGTERM" in log and not (run_dir / "metrics.json").exists()
    step = json.loads(state_file.read_text())["step"]

    result, _ = _cli(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at epoch" in result.stdout + result.stderr
    assert _outcome(run_dir) == uninterrupted
    client = _mlflow_client(db)
    (run,) = client.search_runs([client.get_experiment_by_name("sigterm").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["stopped_by"] == "SIGTERM"
    assert f"({step} steps in all)" in run.data.tags["stopped_at"]
