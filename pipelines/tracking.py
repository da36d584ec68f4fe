"""MLflow: one run per training job, re-attached on resume, never fatal once training began.

`Tracker.start()` fails fast (before any training) when the tracking server is unreachable;
after that every logging call is guarded: a tracking failure prints a warning and the run
goes on, so the model and `metrics.json` are always written locally.
"""
from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import urllib.request
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipelines.trainer import Hook

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
MAX_PARAM_LENGTH = 500  # MLflow accepts more, but the UI and `compare` stay readable
PARAMS_PER_CALL = 100   # MLflow's limit for one log_batch call


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """{'trainer': {'epochs': 3}} -> {'trainer.epochs': '3'}, long values truncated."""
    flat = {}
    if isinstance(config, dict):
        for key, value in config.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    text = str(config)
    if len(text) > MAX_PARAM_LENGTH:
        text = text[: MAX_PARAM_LENGTH - 14] + "...[truncated]"
    return {prefix[:-1]: text}


def resolve_tracking_uri(uri: str | None) -> str:
    """logger.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{pathlib.Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raises ConnectionError naming the URI when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except Exception as error:  # noqa: BLE001 - any failure means the same to the user
        raise ConnectionError(
            f"MLflow tracking server {uri} is unreachable ({error}). Start it "
            "(mlflow/server.sh), fix logger.tracking_uri, or run with logger=none"
        ) from None


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout: no tag
        return "unknown"


class Tracker:
    """One MLflow run for this job. `logger=none` gives a tracker that does nothing."""

    def __init__(self, cfg: DictConfig, run_dir: pathlib.Path, overrides: list[str] | None = None):
        self.cfg, self.run_dir = cfg, pathlib.Path(run_dir)
        self.enabled = str(getattr(cfg.logger.backend, "value", cfg.logger.backend)) == "mlflow"
        self.overrides = overrides or []
        self.run_id: str | None = None

    @classmethod
    def disabled(cls, cfg: DictConfig, run_dir: pathlib.Path) -> "Tracker":
        """A tracker that logs nothing (non-chief workers)."""
        tracker = cls(cfg, run_dir)
        tracker.enabled = False
        return tracker

    def start(self) -> None:
        if not self.enabled:
            return
        import mlflow

        uri = resolve_tracking_uri(self.cfg.logger.tracking_uri)
        check_reachable(uri)
        mlflow.set_tracking_uri(uri)
        name = self.cfg.logger.experiment_name
        try:
            mlflow.set_experiment(name)
        except Exception as error:  # noqa: BLE001
            raise RuntimeError(
                f"MLflow could not open experiment {name!r} at {uri}: {error}. Check "
                "logger.experiment_name and your permissions on the store"
            ) from None
        id_file = self.run_dir / RUN_ID_FILE
        resumed = id_file.exists()
        if resumed:
            self.run_id = id_file.read_text().strip()
            mlflow.start_run(run_id=self.run_id)
            log.info("MLflow: re-attached run %s", self.run_id)
        else:
            run = mlflow.start_run(run_name=self.cfg.logger.run_name)
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id)
            self._log_params_and_tags()
        log.info("MLflow: run %s in experiment %r at %s", self.run_id, name, uri)

    def _log_params_and_tags(self) -> None:
        import mlflow
        from mlflow.entities import Param

        import keras
        import tensorflow as tf

        import pipelines

        mlflow.set_tags({
            "task": self.cfg.task.name,
            "model": self.cfg.model.name,
            "data": str(self.cfg.data.source.value if hasattr(self.cfg.data.source, "value")
                        else self.cfg.data.source),
            "git_commit": _git_commit(),
            "overrides": " ".join(self.overrides),
            "versions": f"pipelines={pipelines.__version__} tensorflow={tf.__version__} "
                        f"keras={keras.__version__} mlflow={mlflow.__version__}",
            "run_dir": str(self.run_dir.absolute()),
        })
        params = [Param(k, v) for k, v in flatten(OmegaConf.to_container(self.cfg, resolve=True)).items()]
        client = mlflow.MlflowClient()
        for start in range(0, len(params), PARAMS_PER_CALL):
            client.log_batch(self.run_id, params=params[start:start + PARAMS_PER_CALL])

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if not self.enabled or self.run_id is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - tracking must never cost the model
            log.warning("MLflow: could not %s (%s); training goes on, results stay in %s",
                        what, error, self.run_dir)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self._guard("log metrics", mlflow.log_metrics, clean, step=step)

    def log_artifact(self, path: pathlib.Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = pathlib.Path(path)
        if not path.exists():
            return
        log_fn = mlflow.log_artifacts if path.is_dir() else mlflow.log_artifact
        self._guard(f"log {path.name}", log_fn, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        import mlflow

        self._guard("end the run", mlflow.end_run, status=status)


class MlflowHook(Hook):
    """Logs every epoch's metrics with `step=epoch` (1-based, so resumed runs never repeat)."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_epoch_end(self, trainer, epoch, logs):
        self.tracker.log_metrics(logs, step=epoch + 1)
