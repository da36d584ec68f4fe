"""The real CLI in a subprocess: smoke runs, MLflow content, resume, and user errors."""
import json
import os
import re
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests.conftest import REPO


def _cli(*args, cwd=REPO, timeout=300, env=None):
    began = time.time()
    result = subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True,
                            text=True, cwd=cwd, timeout=timeout, env=env)
    return result, time.time() - began


# What absl and the TensorFlow C++ runtime print: glog-style lines, CUDA probing, absl INFO.
TF_CHATTER = re.compile(r"^[IWEF]\d{4} |cuda|cudnn|cuinit|Sharding callback|\[absl\]|"
                        r"absl::InitializeLog|oneDNN", re.IGNORECASE)


def _mlflow_client(db):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


@pytest.mark.parametrize("model", ["lstm", pytest.param("gru", marks=pytest.mark.slow)])
def test_smoke_runs_the_whole_path(model, tmp_path):
    run_dir, db = tmp_path / "run", tmp_path / "mlflow.db"
    # A user's environment: no TF_CPP_MIN_LOG_LEVEL (conftest sets one for the tests).
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "PIPELINES_TF_LOGS")}
    result, seconds = _cli("task=sentiment", f"model={model}", "debug=smoke",
                           f"hydra.run.dir={run_dir}", f"logger.tracking_uri=sqlite:///{db}",
                           env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"smoke took {seconds:.0f}s")  # the < 60 s goal is timed by benchmarks, not asserted
    output = result.stdout + result.stderr
    chatter = [line for line in output.splitlines() if TF_CHATTER.search(line)]
    assert not chatter, chatter[:5]  # quiet logs: nothing from absl or the TF C++ runtime
    assert "Downloading artifacts" not in output  # no MLflow tqdm bar from logging the model
    assert "[pipelines.run][INFO]" in output  # our own log lines stay

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "macro_f1"} and 0 <= metrics["accuracy"] <= 1
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / ".hydra" / "overrides.yaml").exists()
    serve = tf.saved_model.load(str(run_dir / "saved_model")).signatures["serving_default"]
    out = serve(text=tf.constant(["a fine film", "dull"]))
    assert out["label"].dtype == tf.string and out["probabilities"].shape == (2, 2)

    client = _mlflow_client(db)
    (experiment,) = [e for e in client.search_experiments() if e.name == "sentiment"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == (run_dir / "mlflow_run_id").read_text().strip()
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.epochs"] == "1" and run.data.params["model.name"] == model
    assert run.data.tags["task"] == "sentiment" and run.data.tags["model"] == model
    assert run.data.tags["data"] == "synthetic" and "debug=smoke" in run.data.tags["overrides"]
    assert run.data.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.yaml", "overrides.yaml", "saved_model"} <= artifacts


def test_predict_prints_json_lines(tmp_path):
    run_dir = tmp_path / "run"
    result, _ = _cli("debug=smoke", "logger=none", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run_dir / "mlflow_run_id").exists()  # logger=none logs nothing
    user_env = {key: value for key, value in os.environ.items()  # no TF_CPP_MIN_LOG_LEVEL
                if key not in ("TF_CPP_MIN_LOG_LEVEL", "PIPELINES_TF_LOGS")}
    predicted = subprocess.run(
        [sys.executable, "-m", "pipelines.predict", str(run_dir / "saved_model"), "not bad", "awful"],
        capture_output=True, text=True, cwd=REPO, timeout=120, env=user_env,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert not [line for line in predicted.stderr.splitlines() if TF_CHATTER.search(line)], \
        predicted.stderr[-2000:]
    rows = [json.loads(line) for line in predicted.stdout.strip().splitlines()]
    assert [row["input"] for row in rows] == ["not bad", "awful"]
    assert all(row["label"] in ("negative", "positive") and len(row["probabilities"]) == 2 for row in rows)


def test_rerun_resumes_and_reattaches_the_mlflow_run(tmp_path):
    run_dir, db = tmp_path / "run", tmp_path / "mlflow.db"
    common = ["debug=smoke", f"hydra.run.dir={run_dir}", f"logger.tracking_uri=sqlite:///{db}",
              "trainer.early_stopping_patience=null"]
    first, _ = _cli(*common, "trainer.epochs=1")  # as if interrupted after epoch 1 of 2
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (run_dir / "mlflow_run_id").read_text()
    second, _ = _cli(*common, "trainer.epochs=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming at epoch 2 of 2" in second.stdout + second.stderr
    assert (run_dir / "mlflow_run_id").read_text() == run_id
    client = _mlflow_client(db)
    assert len(client.search_runs([client.get_experiment_by_name("sentiment").experiment_id])) == 1
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2]
    state = json.loads((run_dir / "checkpoints" / "trainer_state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2


def test_unreachable_tracking_server_fails_before_training(tmp_path):
    result, seconds = _cli("debug=smoke", "logger.tracking_uri=http://127.0.0.1:9",
                           f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in result.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.json").exists()


def test_malformed_data_file_names_file_and_line(tmp_path):
    bad = tmp_path / "train.txt"
    bad.write_text("1 a good film\n0 a bad film\nnolabel\n")
    result, _ = _cli("data=files", f"data.train={bad}", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert f"{bad}:3: expected 'LABEL TEXT'" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("model", ["cnn", pytest.param("vit", marks=pytest.mark.slow)])
def test_vision_smoke_serves_image_bytes(model, tmp_path):
    import numpy as np

    run_dir = tmp_path / "run"
    result, seconds = _cli("task=image_classification", f"model={model}", "debug=smoke",
                           "logger=none", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"smoke took {seconds:.0f}s")  # the < 60 s goal is timed by benchmarks, not asserted
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "top5_accuracy"} and 0 <= metrics["accuracy"] <= 1
    assert (run_dir / "pictures" / "confusion_matrix.png").exists()
    serve = tf.saved_model.load(str(run_dir / "saved_model")).signatures["serving_default"]
    pixels = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    out = serve(image_bytes=tf.stack([tf.io.encode_png(pixels), tf.io.encode_jpeg(pixels)]))
    assert out["label"].dtype == tf.string and out["probabilities"].shape == (2, 6)


@pytest.mark.parametrize("task,model", [
    ("segmentation", "unet"), ("captioning", "transformer"),
    pytest.param("captioning", "lstm", marks=pytest.mark.slow),
    pytest.param("captioning", "gru", marks=pytest.mark.slow),
])
def test_segmentation_and_captioning_smoke_serve_image_bytes(task, model, tmp_path):
    import numpy as np

    run_dir = tmp_path / "run"
    result, seconds = _cli(f"task={task}", f"model={model}", "debug=smoke", "logger=none",
                           f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"smoke took {seconds:.0f}s")  # the < 60 s goal is timed by benchmarks, not asserted
    metrics = json.loads((run_dir / "metrics.json").read_text())
    picture = "overlay_0.png" if task == "segmentation" else "attention_0.png"
    assert (run_dir / "pictures" / picture).exists()
    serve = tf.saved_model.load(str(run_dir / "saved_model")).signatures["serving_default"]
    pixels = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    out = serve(image_bytes=tf.stack([tf.io.encode_png(pixels), tf.io.encode_jpeg(pixels)]))
    if task == "segmentation":
        assert set(metrics) == {"mean_iou", "pixel_accuracy", "dice"}
        assert out["mask"].dtype == tf.int32 and out["mask"].shape == (2, 64, 64)
    else:
        assert set(metrics) == {"bleu4", "bleu1"} and 0 <= metrics["bleu4"] <= 100
        assert out["caption"].dtype == tf.string and out["caption"].shape == (2,)
