"""Tracker and compare in-process on a SQLite store: params in batches, resume without duplicates,
guarded logging and the offline switch, clear errors, sweep parents, curves, the pyfunc model."""
import json
import logging
import pathlib

import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from pipelines import compare, tracking
from pipelines.config import register_schemas
from pipelines.tracking import Sweep, Tracker, TrackingError, flatten, training_curves
from tests.conftest import REPO

register_schemas()


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=["debug=smoke", *overrides])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds); an experiment per test."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def _runs(uri, experiment):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_flatten_dots_keys_and_marks_truncation():
    flat = flatten({"a": {"b": 1, "c": {"d": "x"}}, "long": "y" * 600})
    assert flat["a.b"] == "1" and flat["a.c.d"] == "x"
    assert len(flat["long"]) == tracking.MAX_PARAM_LENGTH and flat["long"].endswith("...[truncated]")


def test_params_in_batches_tags_and_resume_without_duplicates(store, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "PARAMS_PER_CALL", 7)  # many batches for a ~60-key config
    cfg = _cfg(f"logger.tracking_uri={store}", "logger.experiment_name=resume")
    first = Tracker(cfg, tmp_path / "run", ["debug=smoke"])
    first.start()
    first.log_metrics({"val_loss": 0.5}, step=1)
    first.finish()
    (run,) = _runs(store, "resume")
    expected = flatten(OmegaConf.to_container(cfg, resolve=True))
    assert run.data.params == expected
    assert run.data.tags["overrides"] == "debug=smoke" and run.data.tags["task"] == "sentiment"
    assert run.data.tags["system.cpu_count"].isdigit() and "CPU" in run.data.tags["system.tf_devices"]

    # The same run dir with another epoch count: the run is re-attached, params stay immutable.
    again = Tracker(_cfg(f"logger.tracking_uri={store}", "logger.experiment_name=resume",
                         "trainer.epochs=5"), tmp_path / "run")
    again.start()
    again.log_metrics({"val_loss": 0.4}, step=2)
    again.finish()
    (run,) = _runs(store, "resume")
    assert run.info.run_id == first.run_id == again.run_id and again.resumed
    assert run.data.params["trainer.epochs"] == "1" and "resumed_at" in run.data.tags
    history = MlflowClient(store).get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]


def test_a_dead_server_mid_run_only_warns_once_then_goes_offline(store, tmp_path, monkeypatch,
                                                                  caplog):
    tracker = Tracker(_cfg(f"logger.tracking_uri={store}", "logger.experiment_name=dead"),
                      tmp_path / "run")
    tracker.start()
    calls = []

    def refused(*args, **kwargs):
        calls.append(args)
        raise MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch "
                              "failed with exception Max retries exceeded (Connection refused)")

    monkeypatch.setattr(mlflow, "log_metrics", refused)
    monkeypatch.setattr(mlflow, "log_artifact", refused)
    with caplog.at_level(logging.WARNING, logger="pipelines.tracking"):
        tracker.log_metrics({"val_loss": 1.0}, step=1)
        tracker.log_metrics({"val_loss": 0.9}, step=2)
        (tmp_path / "metrics.json").write_text("{}")
        tracker.log_artifact(tmp_path / "metrics.json")
        tracker.finish()
    assert tracker.offline and len(calls) == 1  # no retry storm once the server is gone
    assert "stopped answering" in caplog.text
    assert mlflow.active_run() is None  # the next job of a multirun can start its own run


def test_other_tracking_errors_warn_and_logging_goes_on(store, tmp_path, monkeypatch, caplog):
    tracker = Tracker(_cfg(f"logger.tracking_uri={store}", "logger.experiment_name=errors"),
                      tmp_path / "run")
    tracker.start()
    monkeypatch.setattr(mlflow, "log_table", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad")))
    with caplog.at_level(logging.WARNING, logger="pipelines.tracking"):
        tracker.log_table([{"text": "a", "label": "b"}])
    tracker.log_metrics({"accuracy": 0.5})
    tracker.finish()
    assert "could not log samples.json (bad)" in caplog.text and not tracker.offline
    (run,) = _runs(store, "errors")
    assert run.data.metrics["accuracy"] == 0.5 and run.info.status == "FINISHED"


def test_bad_or_deleted_experiment_is_a_clear_error(store, tmp_path):
    with pytest.raises(TrackingError, match="could not open experiment ''.*logger.experiment_name"):
        Tracker(_cfg(f"logger.tracking_uri={store}", "logger.experiment_name=''"), tmp_path).start()
    client = MlflowClient(store)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(TrackingError, match="'gone'.*deleted"):
        Tracker(_cfg(f"logger.tracking_uri={store}", "logger.experiment_name=gone"), tmp_path).start()
    assert not (tmp_path / tracking.RUN_ID_FILE).exists()


def test_unwritable_store_is_a_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if (locked / "probe").exists() or _writable(locked):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(TrackingError, match="permissions"):
            Tracker(_cfg(f"logger.tracking_uri=sqlite:///{locked / 'mlflow.db'}"), tmp_path).start()
    finally:
        locked.chmod(0o700)


def _writable(directory: pathlib.Path) -> bool:
    try:
        (directory / "probe").write_text("x")
        return True
    except OSError:
        return False


def test_sweep_jobs_share_one_parent_run(store, tmp_path):
    sweep_dir = tmp_path / "sweep"
    trackers = []
    for job in range(2):
        cfg = _cfg(f"logger.tracking_uri={store}", "logger.experiment_name=sweep",
                   f"model={'lstm' if job == 0 else 'gru'}")
        tracker = Tracker(cfg, sweep_dir / str(job), sweep=Sweep(sweep_dir, job))
        tracker.start()
        tracker.finish()
        trackers.append(tracker)
    runs = _runs(store, "sweep")
    (parent,) = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert {r.data.tags["job_num"] for r in children} == {"0", "1"}
    assert {r.info.run_name for r in children} == {"lstm-0", "gru-1"}
    assert all(r.data.tags["sweep_id"] == parent.info.run_id for r in children)
    assert parent.info.status == "FINISHED"
    assert (sweep_dir / tracking.PARENT_RUN_ID_FILE).read_text() == parent.info.run_id


def test_the_sweeper_prepares_the_parent_run_that_its_jobs_join(store, tmp_path, monkeypatch,
                                                                 caplog):
    sweep_dir = tmp_path / "sweep"
    cfg = _cfg(f"logger.tracking_uri={store}", "logger.experiment_name=prepared", "model=lstm")
    tracking.prepare_sweep(cfg, sweep_dir, "study.0123")  # the sweeper, before its jobs start
    (parent,) = _runs(store, "prepared")
    assert parent.data.tags["sweep_parent"] == "true"
    assert parent.data.tags["sweep_study"] == "study.0123"
    assert (sweep_dir / tracking.PARENT_RUN_ID_FILE).read_text() == parent.info.run_id
    monkeypatch.setenv(tracking.STUDY_ENV, "study.0123")
    job = Tracker(cfg, sweep_dir / "0", sweep=Sweep(sweep_dir, 0))
    job.start()
    job.finish()
    assert job.parent_run_id == parent.info.run_id and len(_runs(store, "prepared")) == 2
    # logger=none: nothing; an unreachable server: the jobs report it, the sweeper only notes it
    tracking.prepare_sweep(_cfg("logger=none"), tmp_path / "none", "s")
    tracking.prepare_sweep(OmegaConf.create({"x": 1}), tmp_path / "none", "s")  # another app
    assert not (tmp_path / "none").exists()
    with caplog.at_level(logging.INFO, logger="pipelines.tracking"):
        tracking.prepare_sweep(_cfg("logger.tracking_uri=http://127.0.0.1:9"), tmp_path / "x", "s")
    assert "unreachable" in caplog.text and not (tmp_path / "x").exists()


def test_training_curves_png(tmp_path):
    history = [{"train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5 + e / 10,
                "val_accuracy": 0.4 + e / 10} for e in range(1, 4)]
    path = training_curves(history, "val_accuracy", tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert training_curves([], "val_loss", tmp_path / "none.png") is None


class _Toy(tf.Module):
    """A raw-input SavedModel like the tasks': strings in; labels, probabilities, padded tokens."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        positive = tf.strings.regex_full_match(text, ".*good.*")
        probabilities = tf.stack([1.0 - tf.cast(positive, tf.float32),
                                  tf.cast(positive, tf.float32)], axis=-1)
        tokens = tf.strings.split(text).to_tensor(default_value="")
        return {"label": tf.where(positive, "positive", "negative"),
                "probabilities": probabilities, "tokens": tokens}


def test_pyfunc_model_predicts_raw_text_and_registers(store, tmp_path):
    export = tmp_path / "saved_model"
    toy = _Toy()
    tf.saved_model.save(toy, str(export), signatures={"serving_default": toy.serve})
    tracker = Tracker(_cfg(f"logger.tracking_uri={store}", "logger.experiment_name=pyfunc",
                           "logger.register_as=toy"), tmp_path / "run")
    tracker.start()
    samples = [{"text": "a good film", "label": "positive", "predicted": "positive"},
               {"text": "so bad", "label": "negative", "predicted": "negative"}]
    tracker.log_table(samples)
    tracker.log_model(export, samples)
    tracker.finish()
    assert tracker.model_uri and not tracker.offline

    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model("models:/toy/1")
    assert model.metadata.get_input_schema().input_names() == ["text"]
    out = model.predict(pd.DataFrame({"text": ["good stuff here", "meh"]}))
    assert list(out["label"]) == ["positive", "negative"]
    assert np.allclose(out["probabilities"][0], [0.0, 1.0])
    assert list(out["tokens"][1]) == ["meh"]  # the "" padding is gone
    (run,) = _runs(store, "pyfunc")
    assert run.data.tags["model_uri"] == tracker.model_uri
    table = MlflowClient(store).load_table(run.info.experiment_id, "samples.json",
                                           run_ids=[run.info.run_id])
    assert list(table["text"]) == ["a good film", "so bad"]
    assert {a.path for a in MlflowClient(store).list_artifacts(run.info.run_id)} >= {
        "saved_model", "samples.json"}


# ----------------------------------------------------------------------------- compare
def _fake_runs(uri):
    client = MlflowClient(uri)
    experiment = client.create_experiment("cmp")
    parent = client.create_run(experiment, run_name="sweep", tags={"sweep_parent": "true"})
    for name, lr, accuracy in [("a", "0.001", 0.6), ("b", "0.01", 0.9), ("c", "0.1", 0.7)]:
        run = client.create_run(experiment, run_name=name, tags={
            "task": "sentiment", "model": "lstm", "objective_metric": "accuracy",
            "mlflow.parentRunId": parent.info.run_id, "sweep_id": parent.info.run_id})
        for key, value in {"trainer.learning_rate": lr, "trainer.epochs": "2",
                           "task.monitor": "val_accuracy", "logger.run_name": name}.items():
            client.log_param(run.info.run_id, key, value)
        client.log_metric(run.info.run_id, "accuracy", accuracy)
        client.log_metric(run.info.run_id, "macro_f1", accuracy - 0.1)
        for step in (1, 2):
            client.log_metric(run.info.run_id, "val_loss", 1.0 / step, step=step)
            client.log_metric(run.info.run_id, "val_accuracy", accuracy * step / 2, step=step)
        client.set_terminated(run.info.run_id)
    return client, parent.info.run_id


def test_compare_ranks_runs_and_shows_differing_params(store, tmp_path, capsys):
    _fake_runs(store)
    plot = tmp_path / "cmp.png"
    assert compare.main(["--experiment", "cmp", "--tracking-uri", store, "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "best first by accuracy" in lines[0]
    header = lines[1].split()
    assert header[:4] == ["run", "run_id", "task", "model"]
    assert "trainer.learning_rate" in header and "trainer.epochs" not in header  # same everywhere
    assert "logger.run_name" not in header and "accuracy" in header and "val_loss" not in header
    rows = [line.split() for line in lines[3:] if not line.startswith("plot:")]
    assert [row[0] for row in rows] == ["b", "c", "a"]  # the parent run is not a row
    assert rows[0][header.index("accuracy")] == "0.9000"
    assert plot.read_bytes()[:4] == b"\x89PNG"

    assert compare.main(["--experiment", "cmp", "--tracking-uri", store, "--metric", "val_loss"]) == 0
    assert "best first by val_loss" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no MLflow experiment named 'nope'"):
        compare.main(["--experiment", "nope", "--tracking-uri", store])


def test_compare_ranking_direction():
    assert compare.lower_is_better("val_loss") and not compare.lower_is_better("bleu")


def test_the_objective_is_the_first_metric_everywhere(store):
    from pipelines.hooks import Hook

    assert tracking.objective({"bleu": 31.9, "chrf": 55.0}) == ("bleu", 31.9)
    with pytest.raises(ValueError, match="no objective"):
        tracking.objective({})
    assert issubclass(tracking.MlflowHook, Hook)
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("untagged"))
    client.log_metric(run.info.run_id, "f1", 0.8)
    client.log_metric(run.info.run_id, "val_loss", 0.3)
    # Without the tag, compare ranks by the objective of the final metrics (not val_*).
    assert compare.default_metric(compare.load_runs(client, "untagged")) == "f1"


def test_a_signal_ends_the_run_killed_where_it_stopped_and_a_rerun_finishes_it(store, tmp_path):
    from pipelines.hooks import PartialEpoch, TrainerState

    cfg = _cfg(f"logger.tracking_uri={store}", "logger.experiment_name=killed")
    tracker = Tracker(cfg, tmp_path / "run")
    tracker.start()

    class _Trainer:
        state = TrainerState(epoch=1, step=15, partial=PartialEpoch(5, {}))

    tracking.MlflowHook(tracker).on_interrupt(_Trainer(), "SIGTERM")
    tracker.finish("FAILED")  # run()'s handler after the exception: the first status stays
    (run,) = _runs(store, "killed")
    assert run.info.status == "KILLED" and run.data.tags["stopped_by"] == "SIGTERM"
    assert run.data.tags["stopped_at"] == "epoch 2, step 5 (15 steps in all)"
    again = Tracker(cfg, tmp_path / "run")
    again.start()
    again.finish()
    (run,) = _runs(store, "killed")
    assert run.info.run_id == tracker.run_id and run.info.status == "FINISHED"
