"""MLflow: one run per training job, re-attached on resume, nested under a parent in sweeps,
never fatal once training began.

`Tracker.start()` fails fast (before any training) when the tracking server is unreachable or
the experiment cannot be opened; after that every logging call is guarded: a tracking failure
prints a warning and the run goes on, so the model and `metrics.json` are always written
locally. When the server goes away mid-run the tracker stops trying after the first connection
failure (one warning, short HTTP timeouts and retries) instead of stalling every epoch.

A run holds: tags (task, model, data, git commit, versions, overrides, system info, sweep id and
job number), the flattened resolved config as params (batched, long values truncated), per-epoch
metrics with `step=epoch`, the final metrics, the config/overrides/metrics.json/samples/pictures
as artifacts, a training-curve PNG, and the SavedModel twice: as files (`saved_model/`) and as
an MLflow `pyfunc` model (`model`) that predicts on raw input, optionally registered.

In a Hydra multirun (basic launcher or our Optuna sweeper) the first job creates one parent run
for the whole sweep, under a file lock in the sweep directory; every job is a child of it
(`mlflow.parentRunId`), so re-running the same sweep directory re-attaches parent and children.
Jobs of one Optuna study (several sweepers, processes or machines) find its parent by the tag
`sweep_study`. Several jobs may write one SQLite store at once: a fresh store is created under
a lock beside the file, and writes that find the database locked are retried with back-off.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import platform
import subprocess
import time
import urllib.request
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipelines.hooks import Hook
from pipelines.locks import file_lock as _file_lock
from pipelines.locks import retry_locked, store_lock

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
PARENT_RUN_ID_FILE = "mlflow_parent_run_id"  # in the sweep directory
MAX_PARAM_LENGTH = 500  # MLflow accepts more, but the UI and `compare` stay readable
PARAMS_PER_CALL = 100   # MLflow's limit for one log_batch call
TRUNCATED = "...[truncated]"
OBJECTIVE_TAG = "objective_metric"
TRIAL_ENV = "PIPELINES_OPTUNA_TRIAL"  # set by the Optuna sweeper for each job: its trial number
STUDY_ENV = "PIPELINES_SWEEP_STUDY"   # ... and its study's key: one parent run per study

# MLflow settings this package changes; users' own environment wins.
# - A tracking server that dies mid-run must cost seconds, not MLflow's default of 7 retries
#   with exponential backoff (minutes) per call.
# - No tqdm "Downloading artifacts" bar in the run log: logging the pyfunc model reads its
#   artifacts back once to validate the serving example, which drew a bar per trial.
MLFLOW_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_CONNECTION_ERRORS = ("Max retries exceeded", "Connection refused", "ConnectionError",
                      "Failed to establish a new connection", "timed out", "Read timed out",
                      "RemoteDisconnected", "Connection aborted")


class TrackingError(RuntimeError):
    """MLflow cannot be used for this run (raised before training, with what to do)."""


def objective(metrics: dict[str, float]) -> tuple[str, float]:
    """The run's objective: the task's first metric (tasks list their headline metric first,
    e.g. `accuracy`, `bleu`, `f1`). The one place that decides it: `run()` returns its value
    for sweeps, the tracker tags its name (`objective_metric`) and `compare` ranks by it."""
    if not metrics:
        raise ValueError("a run without metrics has no objective")
    name = next(iter(metrics))
    return name, metrics[name]


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """{'trainer': {'epochs': 3}} -> {'trainer.epochs': '3'}, long values truncated."""
    flat = {}
    if isinstance(config, dict):
        for key, value in config.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    text = str(config)
    if len(text) > MAX_PARAM_LENGTH:
        text = text[: MAX_PARAM_LENGTH - len(TRUNCATED)] + TRUNCATED
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


def _is_connection_error(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}"
    return any(marker in text for marker in _CONNECTION_ERRORS)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a git checkout: no tag
        return "unknown"


def system_info() -> dict[str, str]:
    """Where the run ran: platform, Python, CPUs, the TF devices (after the strategy split them)."""
    import tensorflow as tf

    devices = tf.config.list_logical_devices()
    kinds: dict[str, int] = {}
    for device in devices:
        kinds[device.device_type] = kinds.get(device.device_type, 0) + 1
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            gpus.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except Exception:  # noqa: BLE001 - details are best effort
            gpus.append(gpu.name)
    return {
        "system.platform": platform.platform(),
        "system.python": platform.python_version(),
        "system.cpu_count": str(os.cpu_count()),
        "system.tf_devices": ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())),
        "system.gpus": ", ".join(gpus) or "none",
    }


@dataclasses.dataclass
class Sweep:
    """This job's place in a Hydra multirun."""

    dir: pathlib.Path
    job_num: int

    @classmethod
    def from_hydra(cls) -> "Sweep | None":
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        return cls(pathlib.Path(hydra_cfg.sweep.dir).absolute(), int(hydra_cfg.job.num))


def mlflow_enabled(cfg: DictConfig) -> bool:
    """`logger.backend=mlflow` (False for `logger=none` and for a config without our logger)."""
    backend = OmegaConf.select(cfg, "logger.backend")
    return str(getattr(backend, "value", backend)) == "mlflow"


def connect(tracking_uri: str | None) -> str:
    """Points this process's MLflow at `logger.tracking_uri` (resolved), with short HTTP
    retries and no artifact progress bars (`MLFLOW_SETTINGS`), after checking that a
    server answers; returns the URI."""
    for key, value in MLFLOW_SETTINGS.items():
        os.environ.setdefault(key, value)
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def open_experiment(uri: str, name: str) -> str:
    """The id of experiment `name` at `uri` (the tracking URI set), created if new. Sweep
    workers start together: the first one creates (migrates) a SQLite store and the
    experiment while the others wait."""
    import mlflow

    with store_lock(uri):
        return retry_locked(mlflow.set_experiment, name).experiment_id


def prepare_sweep(cfg: DictConfig, sweep_dir: pathlib.Path, study: str) -> None:
    """What the first job of a sweep would do before training, done by the sweeper while its
    parallel jobs start (import TensorFlow): opens the MLflow store (a new SQLite store is
    created and migrated: ~3 s), the experiment and the study's parent run, under the locks the
    jobs take, so that no job waits on another's store creation. Best effort: a failure is left
    to the jobs, which report it with their usual message. A config without our `logger`
    (another Hydra app on this sweeper) has nothing to prepare."""
    if not mlflow_enabled(cfg):
        return
    try:
        import mlflow

        uri = connect(cfg.logger.tracking_uri)
        experiment_id = open_experiment(uri, cfg.logger.experiment_name)
        sweep_parent_run(mlflow.MlflowClient(), experiment_id, sweep_dir, cfg.task.name, study)
    except Exception as error:  # noqa: BLE001 - the jobs open the store themselves
        log.info("MLflow: the sweeper could not prepare the store (%s); the jobs will", error)


def sweep_parent_run(client, experiment_id: str, sweep_dir: pathlib.Path, task: str,
                     study: str | None = None) -> str:
    """The sweep's parent run id: created by the first job, found by the others and by re-runs.

    Jobs of one sweep directory decide under a file lock there (`mlflow_parent_run_id` keeps
    the id). An Optuna study's jobs also find the parent by its `sweep_study` tag, so sweepers
    in other directories or on other machines that share the study share its parent too."""
    sweep_dir = pathlib.Path(sweep_dir)
    id_file = sweep_dir / PARENT_RUN_ID_FILE
    with _file_lock(sweep_dir / ".mlflow_parent.lock"):
        if id_file.exists():
            run_id = id_file.read_text().strip()
            try:
                retry_locked(client.get_run, run_id)
                return run_id
            except Exception:  # noqa: BLE001 - another store: make a new parent here
                log.info("MLflow: parent run %s is not in this store; creating one", run_id)
        if study:
            found = retry_locked(client.search_runs, [experiment_id], max_results=1,
                                 filter_string=f"tags.sweep_parent = 'true' and "
                                               f"tags.sweep_study = '{study}'",
                                 order_by=["attributes.start_time ASC"])
            if found:
                id_file.write_text(found[0].info.run_id)
                log.info("MLflow: sweep parent run %s (study %s)", found[0].info.run_id, study)
                return found[0].info.run_id
        overrides, sweeper = "", ""
        multirun = sweep_dir / "multirun.yaml"
        if multirun.exists():
            hydra_cfg = OmegaConf.load(multirun).hydra
            overrides = " ".join(hydra_cfg.overrides.task)
            sweeper = str(hydra_cfg.sweeper.get("_target_", "")).rsplit(".", 1)[-1]
        tags = {"sweep_parent": "true", "sweep_dir": str(sweep_dir),
                "sweep_overrides": overrides, "sweeper": sweeper, "task": task}
        if study:
            tags["sweep_study"] = study
        run = retry_locked(client.create_run, experiment_id, run_name=f"sweep-{sweep_dir.name}",
                           tags=tags)
        retry_locked(client.set_tag, run.info.run_id, "sweep_id", run.info.run_id)
        id_file.write_text(run.info.run_id)
        log.info("MLflow: sweep parent run %s", run.info.run_id)
        return run.info.run_id


def training_curves(history: list[dict], monitor: str, path: pathlib.Path) -> pathlib.Path | None:
    """Draws train/val loss and the monitored metric per epoch into a PNG; None without history."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(1, len(history) + 1))
    metric = monitor[4:] if monitor.startswith("val_") else monitor
    panels = [("loss", ["train_loss", "val_loss"])]
    if metric != "loss":
        panels.append((metric, [f"train_{metric}", f"val_{metric}"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [float("nan") if v is None else v for v in values], marker="o",
                        label=key + (" (monitored)" if key == monitor else ""))
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _input_example(specs: dict, samples: list[dict] | None):
    """A few raw inputs for the model's signature, taken from the task's sample predictions."""
    import pandas as pd

    if not samples or len(specs) != 1:
        return None
    (name,) = specs
    rows = []
    for sample in samples[:3]:
        value = sample.get(name)
        if value is None:  # e.g. translation's `source`: the first text field
            value = next((v for v in sample.values() if isinstance(v, str)), None)
        if not isinstance(value, str):
            return None
        rows.append(value)
    return pd.DataFrame({name: rows})


class Tracker:
    """One MLflow run for this job. `logger=none` gives a tracker that does nothing."""

    def __init__(self, cfg: DictConfig, run_dir: pathlib.Path, overrides: list[str] | None = None,
                 sweep: Sweep | None = None):
        self.cfg, self.run_dir = cfg, pathlib.Path(run_dir)
        self.enabled = mlflow_enabled(cfg)
        self.overrides = overrides or []
        self.sweep = sweep if sweep is not None else (Sweep.from_hydra() if self.enabled else None)
        self.run_id: str | None = None
        self.parent_run_id: str | None = None
        self.resumed = False
        self.offline = False  # set when the server stopped answering mid-run
        self.model_uri: str | None = None
        self.finished = False  # the run is ended: later finish() calls do nothing

    @classmethod
    def disabled(cls, cfg: DictConfig, run_dir: pathlib.Path) -> "Tracker":
        """A tracker that logs nothing (non-chief workers)."""
        tracker = cls(cfg, run_dir)
        tracker.enabled = False
        return tracker

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        if not self.enabled:
            return
        import mlflow

        uri = connect(self.cfg.logger.tracking_uri)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.run_dir / RUN_ID_FILE
        self.resumed = id_file.exists()
        # `mlflow run` (MLproject) made the run already and passes it in MLFLOW_RUN_ID.
        project_run = None if self.resumed else os.environ.get("MLFLOW_RUN_ID")
        name = self.cfg.logger.experiment_name
        try:
            if project_run:
                experiment_id = retry_locked(
                    mlflow.MlflowClient().get_run, project_run).info.experiment_id
                name = retry_locked(mlflow.set_experiment, experiment_id=experiment_id).name
            else:
                experiment_id = open_experiment(uri, name)
        except Exception as error:  # noqa: BLE001
            raise TrackingError(
                f"MLflow could not open experiment {name!r} at {uri}: {error}. Check "
                "logger.experiment_name (a non-empty name; not a deleted experiment) and your "
                "permissions on the store, or run with logger=none"
            ) from None
        try:
            if self.resumed:
                self.run_id = id_file.read_text().strip()
                retry_locked(mlflow.start_run, run_id=self.run_id)
                log.info("MLflow: re-attached run %s", self.run_id)
            else:
                if self.sweep is not None:
                    self.parent_run_id = self._parent_run(experiment_id)
                run = retry_locked(mlflow.start_run, run_id=project_run, run_name=self._run_name(),
                                   parent_run_id=None if project_run else self.parent_run_id)
                self.run_id = run.info.run_id
                id_file.write_text(self.run_id)
        except Exception as error:  # noqa: BLE001
            hint = (f" The run id in {id_file} is from another store: delete that file to start "
                    "a new run." if self.resumed else "")
            raise TrackingError(
                f"MLflow could not start a run in experiment {name!r} at {uri}: {error}.{hint} "
                "Check your permissions on the store and its artifact location, or run with "
                "logger=none"
            ) from None
        self._guard("log tags", mlflow.set_tags, self._tags())
        if not self.resumed:  # params are immutable in MLflow: a resumed run keeps the first ones
            self._guard("log params", self._log_params)
        if self.parent_run_id:
            self._guard("update the sweep's parent run", mlflow.MlflowClient().update_run,
                        self.parent_run_id, status="RUNNING")
        log.info("MLflow: run %s in experiment %r at %s", self.run_id, name, uri)

    def _run_name(self) -> str | None:
        name = self.cfg.logger.run_name
        if self.sweep is not None:
            return f"{name or 'job'}-{self.sweep.job_num}"
        return name

    def _tags(self) -> dict[str, str]:
        import keras
        import mlflow
        import tensorflow as tf

        import pipelines

        tags = {
            "task": self.cfg.task.name,
            "model": self.cfg.model.name,
            "data": str(getattr(self.cfg.data.source, "value", self.cfg.data.source)),
            "git_commit": _git_commit(),
            "overrides": " ".join(self.overrides),
            "versions": f"pipelines={pipelines.__version__} tensorflow={tf.__version__} "
                        f"keras={keras.__version__} mlflow={mlflow.__version__}",
            "run_dir": str(self.run_dir.absolute()),
            **system_info(),
        }
        init_from = self.cfg.model.get("init_from")
        if init_from:  # the pretraining run this one fine-tunes (pipelines.pretrained)
            from pipelines.pretrained import pretraining_run_id

            tags["pretrained_run_dir"] = str(pathlib.Path(init_from).absolute())
            tags["pretrained_run_id"] = pretraining_run_id(init_from) or ""
        if self.resumed:
            tags["resumed_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        if self.sweep is not None:
            tags.update({"sweep_id": self.parent_run_id or "", "sweep_dir": str(self.sweep.dir),
                         "job_num": str(self.sweep.job_num)})
            trial = os.environ.get(TRIAL_ENV)
            if trial is not None:
                tags["optuna_trial"] = trial
            if os.environ.get(STUDY_ENV):
                tags["sweep_study"] = os.environ[STUDY_ENV]
        return tags

    def _log_params(self) -> None:
        import mlflow
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in
                  flatten(OmegaConf.to_container(self.cfg, resolve=True)).items()]
        client = mlflow.MlflowClient()
        for start in range(0, len(params), PARAMS_PER_CALL):
            client.log_batch(self.run_id, params=params[start:start + PARAMS_PER_CALL])

    def _parent_run(self, experiment_id: str) -> str:
        import mlflow

        return sweep_parent_run(mlflow.MlflowClient(), experiment_id, self.sweep.dir,
                                self.cfg.task.name, study=os.environ.get(STUDY_ENV))

    # ------------------------------------------------------------------ logging
    def _guard(self, what: str, fn, *args, **kwargs):
        if not self.enabled or self.run_id is None or self.offline:
            return None
        try:  # several jobs may write to one SQLite store at once: retried when it is locked
            return retry_locked(fn, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - tracking must never cost the model
            if _is_connection_error(error):
                self.offline = True
                log.warning("MLflow: the tracking server stopped answering (could not %s: %s); "
                            "training goes on without MLflow, results stay in %s",
                            what, error, self.run_dir)
            else:
                log.warning("MLflow: could not %s (%s); training goes on, results stay in %s",
                            what, error, self.run_dir)
            return None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self._guard("log metrics", mlflow.log_metrics, clean, step=step)

    def log_final_metrics(self, metrics: dict) -> None:
        """The task metrics, and the objective's name as the tag `objective_metric`."""
        import mlflow

        self.log_metrics(metrics)
        if metrics:
            self._guard("tag the objective", mlflow.set_tag, OBJECTIVE_TAG, objective(metrics)[0])

    def log_artifact(self, path: pathlib.Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = pathlib.Path(path)
        if not path.exists():
            return
        log_fn = mlflow.log_artifacts if path.is_dir() else mlflow.log_artifact
        self._guard(f"log {path.name}", log_fn, str(path), artifact_path)

    def log_table(self, rows: list[dict], artifact_file: str = "samples.json") -> None:
        """Rows of sample predictions as an MLflow table (shown in the UI's artifact view)."""
        if not rows:
            return
        import mlflow
        import pandas as pd

        self._guard(f"log {artifact_file}", mlflow.log_table, pd.DataFrame(rows), artifact_file)

    def log_training_curves(self, history: list[dict]) -> None:
        if not self.enabled or self.run_id is None:
            return
        try:
            path = training_curves(history, self.cfg.task.monitor,
                                   self.run_dir / "pictures" / "training_curves.png")
        except Exception as error:  # noqa: BLE001 - a picture must never cost the run
            log.warning("could not draw the training curves (%s)", error)
            return
        if path is not None:
            self.log_artifact(path, "pictures")

    def log_model(self, export_dir: pathlib.Path, samples: list[dict] | None = None) -> None:
        """The SavedModel as files (`saved_model/`) and as a `pyfunc` model (`model`), which
        `logger.register_as=NAME` registers."""
        self.log_artifact(export_dir, "saved_model")
        if not self.enabled or self.run_id is None or self.offline:
            return
        self.model_uri = self._guard("log the pyfunc model", self._log_pyfunc, export_dir, samples)

    def _log_pyfunc(self, export_dir: pathlib.Path, samples: list[dict] | None) -> str:
        import sys

        import mlflow
        import tensorflow as tf

        import pipelines.mlflow_pyfunc as pyfunc_module

        specs = tf.saved_model.load(str(export_dir)).signatures[
            "serving_default"].structured_input_signature[1]
        requirements = [f"mlflow=={mlflow.__version__}", f"tensorflow=={tf.__version__}", "pandas"]
        if "tensorflow_text" in sys.modules:
            import tensorflow_text

            requirements.append(f"tensorflow-text=={tensorflow_text.__version__}")
        register_as = self.cfg.logger.register_as
        if register_as and mlflow.get_tracking_uri().startswith(("file:", "/", ".")):
            log.warning("MLflow: logger.register_as=%s needs a database-backed store (sqlite:/// "
                        "or a tracking server), not %s; the model is logged, not registered",
                        register_as, mlflow.get_tracking_uri())
            register_as = None
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_module.__file__,  # a model from code: loads without this package
            artifacts={"saved_model": str(export_dir)},
            input_example=_input_example(dict(specs), samples),
            pip_requirements=requirements,  # explicit: inferring them re-imports TF (~10 s)
            registered_model_name=register_as,
        )
        mlflow.set_tag("model_uri", info.model_uri)
        if register_as:
            log.info("MLflow: registered %s version %s", register_as,
                     info.registered_model_version)
        return info.model_uri

    # ------------------------------------------------------------------ end
    def stopped(self, signal_name: str, where: str) -> None:
        """Ends the run as KILLED after a signal stopped training, with tags saying where
        (`stopped_by`, `stopped_at`); a re-run re-attaches it and ends it FINISHED."""
        import mlflow

        self._guard("tag where training stopped", mlflow.set_tags,
                    {"stopped_by": signal_name, "stopped_at": where})
        self.finish("KILLED")

    def finish(self, status: str = "FINISHED") -> None:
        """Ends the run with `status` (FINISHED, FAILED or KILLED); only the first call counts."""
        if not self.enabled or self.run_id is None or self.finished:
            return
        self.finished = True
        import mlflow

        if self.offline:
            # Nothing more reaches the server; only drop the active run from this process so
            # that the next job of a multirun starts clean.
            with contextlib.suppress(Exception):
                mlflow.tracking.fluent._active_run_stack.get().clear()
            if mlflow.active_run() is not None:  # end_run pops the run before it calls out
                with contextlib.suppress(Exception):
                    mlflow.end_run(status=status)
            os.environ.pop("MLFLOW_RUN_ID", None)
            return
        self._guard("end the run", mlflow.end_run, status=status)
        if self.parent_run_id:
            # The parent ends with every job; the next job marks it RUNNING again.
            self._guard("end the sweep's parent run", mlflow.MlflowClient().set_terminated,
                        self.parent_run_id,
                        status if status in ("FINISHED", "KILLED") else "FAILED")


class MlflowHook(Hook):
    """Logs every epoch's metrics with `step=epoch` (1-based, so resumed runs never repeat) and
    the training curves (the whole history, resumed epochs included) at the end; ends the run
    as KILLED, saying where, when a signal stops training.

    `pipelines.hooks.Hook` is the trainer's `Hook` without TensorFlow, so importing this module
    (`pipelines.compare` does) stays fast."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_epoch_end(self, trainer, epoch, logs):
        self.tracker.log_metrics(logs, step=epoch + 1)

    def on_train_end(self, trainer, logs):
        self.tracker.log_training_curves(trainer.state.history)

    def on_interrupt(self, trainer, signal_name):
        state = trainer.state
        steps = state.partial.steps if state.partial else 0
        self.tracker.stopped(signal_name, f"epoch {state.epoch + (1 if steps else 0)}"
                             + (f", step {steps}" if steps else " end")
                             + f" ({state.step} steps in all)")
