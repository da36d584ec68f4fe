"""The CLI against a real MLflow tracking server (`mlflow/server.sh`): what a run holds, the
pyfunc model and the registry, the MLflow project, and a server that dies mid-run."""
import json
import os
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
import tensorflow as tf

from tests.conftest import REPO
from tests.e2e.conftest import mlflow_server_at

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _env():
    # `python` in the MLproject command and in subprocesses is this interpreter.
    return {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, env=_env())


def test_run_holds_params_metrics_artifacts_and_a_registered_pyfunc_model(mlflow_server, tmp_path):
    run_dir = tmp_path / "run"
    result = _cli("task=sentiment", "model=lstm", "debug=smoke", "trainer.epochs=2",
                  "trainer.early_stopping_patience=null", f"hydra.run.dir={run_dir}",
                  f"logger.tracking_uri={mlflow_server.uri}", "logger.experiment_name=e2e-server",
                  "logger.register_as=e2e-sentiment")
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow_server.client()
    (run,) = client.search_runs([client.get_experiment_by_name("e2e-server").experiment_id])
    run_id = run.info.run_id
    assert run_id == (run_dir / "mlflow_run_id").read_text() and run.info.status == "FINISHED"

    # params: the whole resolved config, dotted; tags: provenance and system info
    params, tags = run.data.params, run.data.tags
    assert params["trainer.epochs"] == "2" and params["model.name"] == "lstm"
    assert params["task.name"] == "sentiment" and len(params) > 40
    assert tags["task"] == "sentiment" and tags["data"] == "synthetic"
    assert "debug=smoke" in tags["overrides"] and "tensorflow=" in tags["versions"]
    assert tags["system.cpu_count"] == str(os.cpu_count()) and "CPU" in tags["system.tf_devices"]
    assert tags["objective_metric"] == "accuracy"

    # metrics: one point per epoch (step = epoch), the final ones as in metrics.json
    for name in ("train_loss", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2], name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["macro_f1"] == pytest.approx(metrics["macro_f1"])

    # artifacts: config, overrides, metrics, the curves, the samples table, the SavedModel
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "overrides.yaml", "metrics.json", "samples.json", "saved_model",
            "pictures"} <= artifacts
    assert "pictures/training_curves.png" in {a.path for a in client.list_artifacts(run_id, "pictures")}
    png = client.download_artifacts(run_id, "pictures/training_curves.png", str(tmp_path))
    assert open(png, "rb").read(4) == b"\x89PNG"
    mlflow.set_tracking_uri(mlflow_server.uri)  # load_table searches through the fluent API
    table = client.load_table(run.info.experiment_id, "samples.json", run_ids=[run_id])
    assert {"text", "label", "predicted"} <= set(table.columns) and len(table) > 0

    # the model: registered, and the pyfunc flavour predicts labels from raw text
    (version,) = client.search_model_versions("name='e2e-sentiment'")
    assert version.run_id == run_id and version.status == "READY"
    model = mlflow.pyfunc.load_model("models:/e2e-sentiment/1")
    assert model.metadata.get_input_schema().input_names() == ["text"]
    out = model.predict(pd.DataFrame({"text": ["a fine film", "dull and long"]}))
    assert list(out.columns) and set(out["label"]) <= {"negative", "positive"} and len(out) == 2
    assert all(len(p) == 2 for p in out["probabilities"])
    # ... with the same answers as the SavedModel on disk
    serve = tf.saved_model.load(str(run_dir / "saved_model")).signatures["serving_default"]
    labels = serve(text=tf.constant(["a fine film", "dull and long"]))["label"].numpy()
    assert list(out["label"]) == [label.decode() for label in labels]
    assert tags["model_uri"].startswith("models:/")


@pytest.mark.slow  # a third full training run; the project is a thin wrapper of the CLI
def test_mlflow_project_runs_the_cli_into_the_project_run(mlflow_server, tmp_path):
    env = {**_env(), "MLFLOW_TRACKING_URI": mlflow_server.uri}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", "mlflow", "-P", "task=sentiment", "-P", "model=gru",
         "-P", f"overrides=debug=smoke logger.log_model=false hydra.run.dir={tmp_path / 'run'}",
         "--env-manager", "local", "--experiment-name", "e2e-project"],
        capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    client = mlflow_server.client()
    (run,) = client.search_runs([client.get_experiment_by_name("e2e-project").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.data.params["model.name"] == "gru" and run.data.params["trainer.epochs"] == "1"
    assert "accuracy" in run.data.metrics
    assert (tmp_path / "run" / "mlflow_run_id").read_text() == run.info.run_id
    assert (tmp_path / "run" / "metrics.json").exists()


def test_server_dying_mid_run_keeps_training_and_local_results(tmp_path):
    run_dir = tmp_path / "run"
    with mlflow_server_at(tmp_path / "server") as server:
        began = time.time()
        job = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "task=sentiment", "model=lstm", "debug=smoke",
             "trainer.epochs=2", "trainer.early_stopping_patience=null",
             f"hydra.run.dir={run_dir}", f"logger.tracking_uri={server.uri}",
             "logger.experiment_name=e2e-dies"],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = server.client()
        # Wait until the model is built (its size is logged), then take the server away
        # while the job trains.
        while True:
            assert job.poll() is None, job.communicate()[1][-3000:]
            assert time.time() - began < 240, "the run never logged its parameter count"
            if (run_dir / "mlflow_run_id").exists():
                run = client.get_run((run_dir / "mlflow_run_id").read_text())
                if "parameters" in run.data.metrics:
                    break
            time.sleep(0.2)
        server.stop()
    stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-3000:]
    assert "MLflow: the tracking server stopped answering" in stdout + stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "macro_f1"}
    serve = tf.saved_model.load(str(run_dir / "saved_model")).signatures["serving_default"]
    assert serve(text=tf.constant(["fine"]))["label"].shape == (1,)
    state = json.loads((run_dir / "checkpoints" / "trainer_state.json").read_text())
    assert state["epoch"] == 2  # both epochs trained after the server went away
