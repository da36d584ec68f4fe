"""SIGTERM under multi_worker through the real CLI: two workers on loopback agree on the step."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.e2e.test_distribute import _free_ports

COMMAND = ["task=sentiment", "model=lstm", "debug=smoke", "logger=none", "export.enabled=false",
           "distribute=multi_worker", "trainer.epochs=3", "trainer.steps_per_epoch=10",
           "trainer.checkpoint_every_steps=5", "trainer.early_stopping_patience=null"]


def _workers(run_dirs, logs):
    workers = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    return [subprocess.Popen(
        [sys.executable, "-m", "pipelines", *COMMAND, f"distribute.workers=[{workers}]",
         f"distribute.task_index={index}", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        for index, (run_dir, log) in enumerate(zip(run_dirs, logs))]


def _stopped_lines(log):
    return [line.split(" - ", 1)[-1].split(";")[0] for line in log.read_text().splitlines()
            if "stopped by SIGTERM" in line]


@pytest.mark.slow  # three runs of two workers: ~2 min
def test_sigterm_to_one_worker_stops_both_on_the_same_step_and_they_resume_together(tmp_path):
    run_dirs = [tmp_path / "worker0", tmp_path / "worker1"]
    logs = [tmp_path / "stop0.log", tmp_path / "stop1.log"]
    processes = _workers(run_dirs, logs)
    state_file = run_dirs[0] / "checkpoints" / "trainer_state.json"
    try:
        deadline = time.time() + 240
        while not state_file.exists():  # the chief's first save point: training is under way
            assert all(p.poll() is None for p in processes), logs[0].read_text()[-3000:]
            assert time.time() < deadline, "no save point within 240 s"
            time.sleep(0.01)
        processes[1].send_signal(signal.SIGTERM)  # the worker that is not the chief
        codes = [process.wait(120) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert codes == [143, 143], logs[0].read_text()[-3000:]
    (chief,), (worker,) = _stopped_lines(logs[0]), _stopped_lines(logs[1])
    assert chief == worker  # e.g. "stopped by SIGTERM in epoch 1 at step 7 of 10 (7 steps in all)"
    step = json.loads(state_file.read_text())["step"]
    assert f"({step} steps in all)" in chief

    # Each worker in its own run dir: only the chief has the save point; refused, not diverged.
    logs = [tmp_path / "apart0.log", tmp_path / "apart1.log"]
    assert [p.wait(300) for p in _workers(run_dirs, logs)] == [1, 1]
    assert "the workers start from different steps" in logs[1].read_text()

    # The chief's checkpoints where the other worker reads them too (a shared folder): resumed.
    import shutil

    shutil.copytree(run_dirs[0] / "checkpoints", run_dirs[1] / "checkpoints", dirs_exist_ok=True)
    logs = [tmp_path / "shared0.log", tmp_path / "shared1.log"]
    assert [p.wait(300) for p in _workers(run_dirs, logs)] == [0, 0], logs[0].read_text()[-3000:]
    resumed = f"(step {step % 10} of 10)" if step % 10 else f"resuming at epoch {step // 10 + 1}"
    assert resumed in logs[1].read_text()
    assert (run_dirs[0] / "metrics.json").exists()
