"""Sweeps: a multirun and an Optuna search each make one MLflow parent run with a child per job;
the Optuna sweeper reads hydra-optuna-sweeper's syntax and resumes a killed study; compare
ranks the runs a sweep made."""
import os
import subprocess
import sys
import textwrap

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from pipelines.sweeper import distribution_from_override
from tests.conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OPTUNA_LOGGING": "0",
            "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}


def _user_env():
    """A user's shell: the installed package only (the repository is not on the path, so an
    editable install serves `hydra_plugins` through its import hook, as it does for users)."""
    return {k: v for k, v in _env().items() if k != "PYTHONPATH"}


def _run(args, cwd=REPO, timeout=400, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env or _env())


def _sweep_runs(client, experiment):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return runs, parents, children


# ----------------------------------------------------------------------------- search space
@pytest.mark.parametrize("line, expected", [
    ("lr=interval(0.001, 0.1)", FloatDistribution(0.001, 0.1)),
    ("lr=tag(log, interval(1e-4, 1e-2))", FloatDistribution(1e-4, 1e-2, log=True)),
    ("units=tag(int, interval(8, 64))", IntDistribution(8, 64)),
    ("units=choice(32, 64, 128)", CategoricalDistribution([32, 64, 128])),
    ("model=lstm,gru", CategoricalDistribution(["lstm", "gru"])),
    ("layers=range(1, 4)", IntDistribution(1, 3)),  # Hydra's range excludes its end
    ("layers=range(2, 9, 3)", IntDistribution(2, 8, step=3)),
    ("dropout=range(0.0, 0.3, 0.1)", FloatDistribution(0.0, 0.2, step=0.1)),
    ("epochs=3", "3"),
])
def test_hydra_optuna_sweeper_syntax(line, expected):
    (override,) = OverridesParser.create().parse_overrides([line])
    assert distribution_from_override(override) == expected


# ----------------------------------------------------------------------------- sweeper, no TF
APP = '''
import os
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    job = HydraConfig.get().job.num
    if os.environ.get("DIE_AT_JOB") == str(job):
        os._exit(9)  # killed in the middle of this trial
    with open(os.path.join(HydraConfig.get().runtime.output_dir, "ran"), "a") as f:
        f.write(f"{cfg.x} {cfg.n} {cfg.opt}\\n")
    return -(cfg.x - 1.0) ** 2 + cfg.n

main()
'''
CONFIG = '''
defaults:
  - override hydra/sweeper: pipelines_optuna
  - _self_
x: 0.0
n: 1
opt: a
hydra:
  sweeper:
    n_trials: 3
    seed: 7
    sampler: random
    study_name: toy
    params:
      x: tag(log, interval(0.01, 10))
      n: range(1, 4)
'''


def test_optuna_sweep_killed_mid_trial_resumes_to_n_trials_in_total(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG))
    sweep = tmp_path / "sweep"
    args = ["app.py", "-m", f"hydra.sweep.dir={sweep}", "opt=a,b"]
    killed = _run(args, cwd=tmp_path, env={**_env(), "DIE_AT_JOB": "1"})
    assert killed.returncode == 9, killed.stderr[-2000:]
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]

    resumed = _run(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "trial 1 was interrupted; re-running it in job 1" in resumed.stdout + resumed.stderr
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{sweep / 'optuna.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3  # n_trials counts the whole study: one more after the re-run
    interrupted = study.trials[1]
    assert interrupted.state.name == "FAIL" and interrupted.user_attrs["interrupted"]
    assert complete[1].params == interrupted.params  # re-run with the same parameters ...
    assert complete[1].user_attrs["job_num"] == 1     # ... in the same job directory
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    for trial in complete:
        assert 0.01 <= trial.params["x"] <= 10 and trial.params["n"] in (1, 2, 3)
        assert trial.params["opt"] in ("a", "b")  # the command line's sweep joins the space
        assert trial.value == pytest.approx(-(trial.params["x"] - 1) ** 2 + trial.params["n"])
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(t.value for t in complete))
    assert results.n_trials == 3


# ----------------------------------------------------------------------------- the real CLI
SMOKE = ["task=sentiment", "debug=smoke", "logger.log_model=false", "export.enabled=false"]


def test_multirun_makes_one_parent_and_a_child_per_job_then_compare(mlflow_server, tmp_path):
    sweep = tmp_path / "sweep"
    result = _run(["-m", "pipelines", "-m", "model=lstm,gru,transformer", *SMOKE, f"hydra.sweep.dir={sweep}",
                   f"logger.tracking_uri={mlflow_server.uri}", "logger.experiment_name=e2e-multirun"])
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow_server.client()
    runs, (parent,), children = _sweep_runs(client, "e2e-multirun")
    assert len(runs) == 4 and len(children) == 3
    parent_id = parent.info.run_id
    assert all(c.data.tags["mlflow.parentRunId"] == parent_id == c.data.tags["sweep_id"]
               for c in children)
    assert sorted((c.data.tags["job_num"], c.data.tags["model"]) for c in children) == [
        ("0", "lstm"), ("1", "gru"), ("2", "transformer")]
    assert all(c.info.status == "FINISHED" for c in runs)
    assert "model=lstm,gru,transformer" in parent.data.tags["sweep_overrides"]
    assert (sweep / "mlflow_parent_run_id").read_text() == parent_id

    plot = tmp_path / "compare.png"
    compared = _run(["-m", "pipelines.compare", "--experiment", "e2e-multirun", "--tracking-uri",
                     mlflow_server.uri, "--plot", str(plot)])
    assert compared.returncode == 0, compared.stderr[-2000:]
    lines = compared.stdout.splitlines()
    assert "3 runs, best first by accuracy" in lines[0]
    header = lines[1].split()
    assert header[:4] == ["run", "run_id", "task", "model"] and "model.cell" in header
    assert {"accuracy", "macro_f1", "duration_s"} <= set(header)
    rows = [line.split() for line in lines[3:6]]
    accuracy = [float(row[header.index("accuracy")]) for row in rows]
    assert accuracy == sorted(accuracy, reverse=True)
    assert {row[0] for row in rows} == {"lstm-0", "gru-1", "transformer-2"}
    assert {row[1] for row in rows} == {c.info.run_id[:8] for c in children}
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_optuna_search_resumes_and_nests_its_trials(mlflow_server, tmp_path):
    sweep = tmp_path / "sweep"
    common = ["-m", "pipelines", "hparams_search=optuna", "model=lstm", *SMOKE,
              f"hydra.sweep.dir={sweep}", f"logger.tracking_uri={mlflow_server.uri}",
              "logger.experiment_name=e2e-optuna"]
    # Run as a user does, from another folder (Hydra did not find our sweeper there when the
    # package was installed editable: "Could not find 'hydra/sweeper/pipelines_optuna'").
    first = _run([*common, "hydra.sweeper.n_trials=2"], cwd=tmp_path, env=_user_env())
    assert first.returncode == 0, first.stderr[-3000:]  # as if stopped after its 2nd trial
    second = _run([*common, "hydra.sweeper.n_trials=3"], cwd=tmp_path, env=_user_env())
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 of 3 trials done" in second.stdout + second.stderr

    study = optuna.load_study(study_name="sentiment_lstm", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for trial in study.trials:
        assert 1e-4 <= trial.params["trainer.learning_rate"] <= 1e-2
        assert trial.params["model.units"] in (32, 64, 128)

    client = mlflow_server.client()
    runs, (parent,), children = _sweep_runs(client, "e2e-optuna")
    assert len(runs) == 4 and len(children) == 3  # one parent for both invocations
    assert parent.data.tags["sweeper"] == "PipelinesOptunaSweeper"
    assert sorted(c.data.tags["optuna_trial"] for c in children) == ["0", "1", "2"]
    by_trial = {int(c.data.tags["optuna_trial"]): c for c in children}
    for trial in study.trials:
        child = by_trial[trial.number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert float(child.data.params["trainer.learning_rate"]) == pytest.approx(
            trial.params["trainer.learning_rate"])
        assert child.data.params["model.units"] == str(trial.params["model.units"])
        assert child.data.metrics["accuracy"] == pytest.approx(trial.value)  # the objective
