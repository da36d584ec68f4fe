"""Sweeps across processes: the joblib and submitit launchers compose; sweepers started at the
same moment on one Optuna study run n_trials in all, none twice; two processes writing one
SQLite MLflow store at once lose no run and no metric; a joblib-parallel Optuna sweep of the
real CLI makes one parent run with a child per trial and resumes without duplicates."""
import subprocess
import sys
import textwrap

import optuna
import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO
from tests.e2e.test_sweeps import SMOKE, _env, _run, _sweep_runs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _start_together(commands, cwd, barrier, timeout=600, env=None):
    """Runs the commands at once; a script that calls `barrier()` (BARRIER below) after its
    imports waits there until all have arrived, so that they race from the same instant."""
    barrier.mkdir()
    env = {**(env or _env()), "BARRIER_DIR": str(barrier), "BARRIER_COUNT": str(len(commands))}
    children = [subprocess.Popen([sys.executable, *command], cwd=cwd, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                for command in commands]
    outputs = [child.communicate(timeout=timeout)[0] for child in children]
    return [child.returncode for child in children], outputs


BARRIER = """
def barrier():
    import os, time
    directory = os.environ.get("BARRIER_DIR")
    if directory:
        open(os.path.join(directory, str(os.getpid())), "w").close()
        while len(os.listdir(directory)) < int(os.environ["BARRIER_COUNT"]):
            time.sleep(0.01)
"""


# ----------------------------------------------------------------------------- launchers
def _hydra_cfg(*overrides):
    result = _run(["-m", "pipelines", "hparams_search=optuna", "task=sentiment", "model=lstm",
                   *overrides, "--cfg", "hydra"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tensorflow" not in result.stderr.lower()
    return OmegaConf.create(result.stdout).hydra


def test_joblib_and_submitit_launchers_compose():
    joblib = _hydra_cfg("hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                        "hydra.sweeper.n_jobs=2")
    assert joblib.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher." \
                                       "JoblibLauncher"
    assert joblib.launcher.n_jobs == 2 and joblib.sweeper.n_jobs == 2
    # No SLURM here: the cluster launcher is checked as far as its config, not run.
    slurm = _hydra_cfg("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                       "hydra.launcher.timeout_min=90", "hydra.sweeper.n_jobs=8",
                       "hydra.sweeper.storage=postgresql://optuna@db.cluster/optuna")
    assert slurm.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher." \
                                      "SlurmLauncher"
    assert slurm.launcher.partition == "gpu" and slurm.launcher.timeout_min == 90
    assert slurm.sweeper.storage == "postgresql://optuna@db.cluster/optuna"


# ----------------------------------------------------------------------------- no TF
APP = BARRIER + '''
import os
import time

import hydra
import optuna  # noqa: F401 - imported before the start line, as is the sweeper
from hydra.core.hydra_config import HydraConfig
from hydra_plugins.pipelines_optuna_sweeper import pipelines_optuna_sweeper  # noqa: F401
from pipelines.sweeper import optuna_sweeper  # noqa: F401


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    time.sleep(float(os.environ.get("TRIAL_SECONDS", "0")))
    if os.environ.get("FAIL"):
        raise ValueError(f"trial with x={cfg.x} failed")
    with open(os.path.join(HydraConfig.get().runtime.output_dir, "ran"), "a") as f:
        f.write(f"{os.getpid()} {cfg.x}\\n")
    return -(cfg.x - 1.0) ** 2


barrier()
main()
'''
CONFIG = '''
defaults:
  - override hydra/sweeper: pipelines_optuna
  - override hydra/launcher: joblib
  - _self_
x: 0.0
hydra:
  launcher:
    n_jobs: 2
  sweeper:
    n_trials: 8
    n_jobs: 2
    seed: 3
    sampler: random
    study_name: toy
    params:
      x: interval(0, 2)
'''


def test_two_sweepers_started_together_run_n_trials_in_all_none_twice(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG))
    sweep = tmp_path / "sweep"
    command = ["app.py", "-m", f"hydra.sweep.dir={sweep}"]
    codes, outputs = _start_together([command, command], tmp_path, tmp_path / "barrier",
                                     env={**_env(), "TRIAL_SECONDS": "1.5"})
    assert codes == [0, 0], "\n".join(o[-2000:] for o in outputs)

    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8  # none lost, none extra
    jobs = sorted(t.user_attrs["job_num"] for t in study.trials)
    assert jobs == list(range(8))  # each trial its own job directory
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2  # both sweepers asked the study for trials
    assert all(isinstance(t.user_attrs["heartbeat"], float) for t in study.trials)
    assert len({t.params["x"] for t in study.trials}) == 8  # and drew different ones
    pids = set()
    for trial in study.trials:
        lines = (sweep / str(trial.user_attrs["job_num"]) / "ran").read_text().splitlines()
        assert len(lines) == 1  # run once
        pid, x = lines[0].split()
        assert float(x) == pytest.approx(trial.params["x"])
        assert trial.value == pytest.approx(-(float(x) - 1) ** 2)
        pids.add(pid)
    assert len(pids) >= 3  # joblib ran the trials in worker processes, two per sweeper
    assert OmegaConf.load(sweep / "optimization_results.yaml").n_trials == 8

    resumed = _run(command, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "8 of 8 trials done" in resumed.stdout + resumed.stderr
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert len(study.trials) == 8
    assert all(len((sweep / str(j) / "ran").read_text().splitlines()) == 1 for j in range(8))


WARM = """
import os
KEEP = []  # what the trials of this worker hold
with open(os.path.join(os.environ["WARM_DIR"], str(os.getpid())), "w"):
    pass
"""


def test_warmed_joblib_workers_run_every_trial_and_survive_a_large_one(tmp_path):
    # Each trial holds 400 MB more than the warm-up left: loky's leak guard (300 MB since the
    # first task) would replace the worker after its first trial unless the warm-up raised it.
    trial_sleep = "    time.sleep(float("
    assert APP.count(trial_sleep) == 1
    (tmp_path / "app.py").write_text(APP.replace(trial_sleep, (
        "    import warm\n"
        "    warm.KEEP.append(b'x' * (400 * 2**20))  # resident: every page written\n"
        + trial_sleep)))
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG).replace("n_trials: 8",
                                                                          "n_trials: 4"))
    (tmp_path / "warm.py").write_text(WARM)
    (tmp_path / "warmed").mkdir()
    sweep = tmp_path / "sweep"
    result = _run(["app.py", "-m", f"hydra.sweep.dir={sweep}", "+hydra.sweeper.warm_up=warm"],
                  cwd=tmp_path, env={**_env(), "WARM_DIR": str(tmp_path / "warmed"),
                                     "TRIAL_SECONDS": "1.2",  # loky checks at most every 1 s
                                     "PYTHONPATH": f"{tmp_path}:{REPO}"})
    assert result.returncode == 0, result.stderr[-2000:]
    warmed = {p.name for p in (tmp_path / "warmed").iterdir()}
    ran = {line.split()[0] for job in sweep.glob("[0-9]*")
           for line in (job / "ran").read_text().splitlines()}
    assert len(ran) == 2 and ran <= warmed, (ran, warmed)  # 4 trials, the 2 warmed workers


def test_a_failing_parallel_trial_stops_the_sweep_and_leaves_nothing_running(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG))
    sweep = tmp_path / "sweep"
    result = _run(["app.py", "-m", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                  env={**_env(), "FAIL": "1", "TRIAL_SECONDS": "0.5"})
    assert result.returncode != 0 and "trial with x=" in result.stderr
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{sweep / 'optuna.db'}")
    # max_failure_rate=0: the first failure stops both slots once their trial is told
    assert 1 <= len(study.trials) <= 2
    assert {t.state.name for t in study.trials} == {"FAIL"}


def test_two_processes_write_one_sqlite_mlflow_store_at_once_and_lose_nothing(tmp_path):
    from benchmarks.concurrent_writers import run_writers

    # A fresh store: both race to create it (MLflow's migrations fail when two run at once),
    # then find the one parent and log 5 runs x 5 steps x 3 metrics each.
    counts, _, _ = run_writers(tmp_path, processes=2, runs=5, steps=5)
    assert counts == {"parent runs": (1, 1), "child runs under it, FINISHED": (10, 10),
                      "metric values": (150, 150), "runs in the experiment": (11, 11)}

    # Jobs of the same study in another sweep dir (another machine) find that parent by its
    # sweep_study tag; another study, or a plain multirun, gets its own.
    import mlflow

    from pipelines.tracking import sweep_parent_run

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("concurrent_writers").experiment_id
    parent = (tmp_path / "sweep" / "mlflow_parent_run_id").read_text()
    assert sweep_parent_run(client, experiment, tmp_path / "node-b", "toy", study="toy.0123") \
        == parent == (tmp_path / "node-b" / "mlflow_parent_run_id").read_text()
    other = sweep_parent_run(client, experiment, tmp_path / "node-c", "toy", study="toy.4567")
    plain = sweep_parent_run(client, experiment, tmp_path / "node-d", "toy")
    assert len({parent, other, plain}) == 3
    assert client.get_run(other).data.tags["sweep_study"] == "toy.4567"


# ----------------------------------------------------------------------------- the real CLI
@pytest.mark.slow
def test_joblib_parallel_optuna_sweep_one_parent_four_children_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the jobs write one SQLite store at once
    command = ["-m", "pipelines", "hparams_search=optuna", "model=lstm", *SMOKE,
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
               "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}",
               f"logger.tracking_uri={uri}", "logger.experiment_name=e2e-joblib"]
    first = _run(command)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "4 of 4 trials done" in resumed.stdout + resumed.stderr

    study = optuna.load_study(study_name="sentiment_lstm", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert sorted(t.user_attrs["job_num"] for t in study.trials) == [0, 1, 2, 3]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs, (parent,), children = _sweep_runs(client, "e2e-joblib")
    assert len(runs) == 5 and len(children) == 4
    assert sorted(c.data.tags["optuna_trial"] for c in children) == ["0", "1", "2", "3"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.data.tags["sweep_study"] == children[0].data.tags["sweep_study"]
    by_trial = {int(c.data.tags["optuna_trial"]): c for c in children}
    for trial in study.trials:
        assert by_trial[trial.number].data.metrics["accuracy"] == pytest.approx(trial.value)
    # Two slots keep a trial each in flight: 4 launches of one job on the 2 joblib processes.
    assert (first.stdout + first.stderr).count("Joblib.Parallel(n_jobs=2") == 4


@pytest.mark.slow
def test_two_cli_sweepers_started_together_share_one_study_and_one_parent(tmp_path):
    sweep = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = ["-m", "pipelines", "hparams_search=optuna", "model=lstm", *SMOKE,
               "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}",
               f"logger.tracking_uri={uri}", "logger.experiment_name=e2e-two-sweepers"]
    codes, outputs = _start_together([command, command], REPO, tmp_path / "barrier")
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outputs)

    study = optuna.load_study(study_name="sentiment_lstm", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert sorted(t.user_attrs["job_num"] for t in study.trials) == [0, 1, 2, 3]
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs, (parent,), children = _sweep_runs(client, "e2e-two-sweepers")
    assert len(runs) == 5 and len(children) == 4
    assert sorted(c.data.tags["optuna_trial"] for c in children) == ["0", "1", "2", "3"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
