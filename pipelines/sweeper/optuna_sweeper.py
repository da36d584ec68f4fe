"""An Optuna sweeper for Hydra that reads hydra-optuna-sweeper's search-space syntax.

Why our own: `hydra-optuna-sweeper` 1.3 pins `optuna<3`, whose SQLite storage fails under
SQLAlchemy 2 (which MLflow needs), so only in-memory studies worked and a killed sweep was lost.
This sweeper runs on current Optuna with a persistent storage in the sweep directory:

- `hydra.sweeper.params`: `key: choice(a, b)`, `interval(lo, hi)`, `range(lo, hi[, step])`,
  `tag(log, interval(...))`, `tag(int, interval(...))`; a plain value is fixed. Sweep overrides
  on the command line (`model=lstm,gru`) join the search space, plain ones are fixed.
- `direction` (`maximize` by default: the objective is the task's first metric, which is
  higher-is-better for every task), `n_trials`, `sampler` (`tpe`, `random`, `cmaes`, or a dict
  with `_target_` as in hydra-optuna-sweeper) with `seed`, `n_jobs` (trials per launch).
- `storage` (default `sqlite:///<hydra.sweep.dir>/optuna.db`) and `study_name`: the study is
  loaded if it exists, so re-running the same sweep (same `hydra.sweep.dir`) resumes it.
  `n_trials` counts the study's trials in total, so a sweep killed after 2 of 3 trials runs one
  more. A trial that was running when the sweep died is re-run with the same parameters in the
  same job directory, where the job resumes its checkpoint and its MLflow run.
- Several sweepers may share one study (the same `storage` and `study_name`: processes on one
  machine, or machines with a database URL and a shared `hydra.sweep.dir`). Each asks the study
  for its next trials (ask/tell) under a lock (beside a SQLite file, else in the sweep
  directory) that also hands out the job numbers, so together they run `n_trials` trials, none
  twice. A trial records its sweeper (`worker`: host:pid:start time) and a `heartbeat` every
  `heartbeat_interval` s: a RUNNING trial whose sweeper died (on this host: its process is gone;
  elsewhere: silent for `grace_period` s) is re-run as above; one whose sweeper lives is waited
  for. Storage calls are retried when SQLite reports "database is locked".
- `n_jobs` trials run at once. With a launcher that runs jobs in other processes
  (`hydra/launcher=joblib` with `hydra.launcher.n_jobs`, or `submitit_slurm`), `n_jobs` threads
  each keep one trial in flight and start the next as soon as theirs ends (as Optuna's
  `optimize(n_jobs=...)` does), so no trial waits for a slower one; Hydra's basic launcher runs
  batches of `n_jobs` in this process, one job after another. With joblib, `warm_up` (a module
  name; `hparams_search=optuna` sets `pipelines.run`) starts the workers and has each import it
  while the sweeper opens its study, and the sweeper opens the MLflow store and the parent run
  (`pipelines.tracking.prepare_sweep`) while they do. Jobs get their trial
  number and the study's key in the environment (`PIPELINES_OPTUNA_TRIAL`,
  `PIPELINES_SWEEP_STUDY`): the tracker tags the MLflow run and finds the one parent run of
  the study.

The objective is what the task function returns (`pipelines.__main__.main` returns the task's
first metric).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import pathlib
import re
import socket
import threading
import time
from typing import Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (ChoiceSweep, IntervalSweep, Override, RangeSweep,
                                              Transformer)
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

from pipelines.locks import retry_locked, sqlite_path, store_lock
# the tracker tags the MLflow run with the env vars; prepare_sweep opens its store early
from pipelines.tracking import STUDY_ENV, TRIAL_ENV, prepare_sweep

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # user attr of a trial that was running when its sweep died
JOB_NUM = "job_num"          # user attr: the Hydra job number (the job's subdirectory)
WORKER = "worker"            # user attr: the sweeper running the trial, host:pid:start time
HEARTBEAT = "heartbeat"      # user attr: when that sweeper last said it is alive (time.time())
STARTS = "sweeper_starts"    # study user attr: sweepers started on the study so far
SEED_STRIDE = 1_000_003      # seed + offset + stride * start: each sweeper draws its own


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" where unknown."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _process_id(pid: int) -> str:
    """`pid:start time`: a reused pid is another process."""
    return f"{pid}:{_start_time(pid)}"


def _process_alive(process: str) -> bool:
    """Whether the process `_process_id` named on this host still runs."""
    pid, _, started = process.partition(":")
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    except ValueError:
        return False
    return not started or _start_time(int(pid)) == started


def study_key(storage: str, study_name: str) -> str:
    """A name for the study (its name and a hash of its storage URL, no password shown) that
    the jobs' MLflow runs carry (`sweep_study`), so that all its jobs find one parent run."""
    digest = hashlib.sha1(f"{storage}|{study_name}".encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', study_name)[:60]}.{digest}"


class _Heartbeat:
    """While a batch runs, writes `heartbeat` into its trials every `interval` s, so that
    sweepers on other hosts can tell a live sweeper's trials from a dead one's."""

    def __init__(self, trials: list, interval: float):
        self.trials, self.interval = trials, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")

    def _beat(self) -> None:
        while True:
            for trial in self.trials:
                try:
                    retry_locked(trial.set_user_attr, HEARTBEAT, time.time())
                except Exception as error:  # noqa: BLE001 - a missed beat is not fatal
                    log.warning("Optuna: could not record a heartbeat: %s", error)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _stop_idle_workers(launcher) -> None:
    """Stops joblib's worker processes once every trial has returned: each holds TensorFlow,
    and letting them exit at interpreter exit costs about 3 s at the end of a sweep (measured:
    3.3 s vs 0.4 s for two workers), a tenth of an 8-trial smoke sweep."""
    if type(launcher).__name__ != "JoblibLauncher":
        return
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor  # the one hydra-joblib-launcher's Parallel reused
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


WORKER_GROWTH_LIMIT = 4 * 2**30  # bytes a warmed joblib worker may grow before loky replaces it


def _warm_worker(module: str) -> None:
    """Run in a joblib worker before its first trial: imports `module` (`pipelines.run` for
    our CLI: TensorFlow, Keras and the tasks, ~5 s).

    loky replaces a worker whose memory grew by 300 MB since its first task (a leak guard,
    measured after that task). With this task first, the first trial's graphs and imports
    would count as a leak and the worker, TensorFlow and all, would be replaced after it
    (seen: a 15 s re-import); a warmed worker's limit is WORKER_GROWTH_LIMIT instead."""
    import importlib

    from joblib.externals.loky import process_executor

    from pipelines.logs import quiet_tensorflow

    if hasattr(process_executor, "_MAX_MEMORY_LEAK_SIZE"):
        process_executor._MAX_MEMORY_LEAK_SIZE = max(process_executor._MAX_MEMORY_LEAK_SIZE,
                                                     WORKER_GROWTH_LIMIT)
    with quiet_tensorflow():
        importlib.import_module(module)


def _warm_workers(launcher, module: str | None) -> threading.Thread | None:
    """`hydra.sweeper.warm_up=MODULE` with the joblib launcher: starts the launcher's loky
    workers at once and has each import MODULE (`_warm_worker`), in a thread, while the
    sweeper opens its study, instead of when the first trials arrive. The launcher's own
    `Parallel` calls then reuse these workers (loky's reusable executor: the same arguments
    as `hydra_joblib_launcher._core.launch` gives)."""
    if not module or type(launcher).__name__ != "JoblibLauncher":
        return None
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed, effective_n_jobs

    config = {**launcher.joblib, "backend": "loky"}
    process_joblib_cfg(config)
    workers = effective_n_jobs(config.get("n_jobs", 1))

    def warm() -> None:
        try:
            Parallel(**config)(delayed(_warm_worker)(module) for _ in range(workers))
        except Exception as error:  # noqa: BLE001 - the trials import it themselves
            log.info("joblib: could not warm the workers up (%s)", error)

    thread = threading.Thread(target=warm, daemon=True, name="joblib-warm-up")
    thread.start()
    return thread


def distribution_from_override(override: Override) -> Any:
    """An Optuna distribution for a sweep override, or the value string for a plain one."""
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if not values:
            raise ValueError(f"{override.input_line}: the range is empty")
        if value.shuffle:
            return CategoricalDistribution(values)
        step = value.step
        if any(isinstance(v, float) for v in (value.start, value.stop, step)):
            high = value.start + step * (len(values) - 1)
            return FloatDistribution(value.start, round(high, 12), step=step)
        return IntDistribution(int(value.start), int(values[-1]), step=int(step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    raise NotImplementedError(f"{override.input_line}: unsupported sweep for Optuna")


def make_sampler(sampler: Any, seed: int | None, offset: int = 0):
    """`tpe` | `random` | `cmaes` | a config with `_target_` (hydra-optuna-sweeper style).

    `offset` (the trials already in a resumed study) shifts a seed given inside the config."""
    import optuna

    if sampler is None or isinstance(sampler, str):
        name = (sampler or "tpe").lower()
        samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                    "cmaes": optuna.samplers.CmaEsSampler}
        if name not in samplers:
            raise ValueError(f"hydra.sweeper.sampler must be one of {sorted(samplers)} or a config "
                             f"with _target_; received {sampler!r}")
        return samplers[name](seed=seed)
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    from hydra.utils import instantiate

    config = OmegaConf.to_container(sampler, resolve=True) if isinstance(sampler, DictConfig) \
        else dict(sampler)
    if config.get("seed") is not None:
        config["seed"] = int(config["seed"]) + offset
    elif seed is not None:
        config["seed"] = seed
    return instantiate(config)


def suggest(trial, name: str, distribution) -> Any:
    """`trial.suggest_*` for a distribution (the public API, so Optuna records it as usual)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high,
                                 step=distribution.step, log=distribution.log)
    return trial.suggest_float(name, distribution.low, distribution.high,
                               step=distribution.step, log=distribution.log)


def _format(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class _Slot(threading.Thread):
    """A thread that keeps one trial in flight. Its exception is kept for the sweeper, and
    stops the other slots (each finishes the trial it runs)."""

    def __init__(self, target, stop: threading.Event, *args):
        super().__init__(daemon=True, name="optuna-slot")
        self.run_slot, self.stop, self.slot_args, self.error = target, stop, args, None

    def run(self) -> None:
        try:
            self.run_slot(*self.slot_args)
        except BaseException as error:  # noqa: BLE001 - re-raised by the sweeper
            self.error = error
            self.stop.set()


class OptunaSweeperImpl(Sweeper):
    def __init__(self, direction: Any = "maximize", n_trials: int = 20, sampler: Any = "tpe",
                 seed: int | None = None, storage: str | None = None,
                 study_name: str | None = None, n_jobs: int = 1,
                 max_failure_rate: float = 0.0, params: dict | None = None,
                 heartbeat_interval: float = 30.0, grace_period: float = 120.0,
                 warm_up: str | None = None) -> None:
        directions = list(direction) if isinstance(direction, (list, tuple, ListConfig)) \
            else [direction]
        self.directions = [str(getattr(d, "value", d)).lower() for d in directions]
        for d in self.directions:
            if d not in ("maximize", "minimize"):
                raise ValueError(f"hydra.sweeper.direction must be 'maximize' or 'minimize'; "
                                 f"received {d!r}")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_trials and n_jobs must be >= 1; received "
                             f"n_trials={n_trials}, n_jobs={n_jobs}")
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.sampler, self.seed = sampler, seed
        self.storage, self.study_name = storage, study_name
        self.max_failure_rate = float(max_failure_rate)
        if not 0 < heartbeat_interval < grace_period:
            raise ValueError(f"hydra.sweeper needs 0 < heartbeat_interval < grace_period; "
                             f"received heartbeat_interval={heartbeat_interval}, "
                             f"grace_period={grace_period}")
        self.heartbeat_interval, self.grace_period = float(heartbeat_interval), float(grace_period)
        self.worker, self.study_key = "", ""
        self.params = dict(params or {})
        self.warm_up = warm_up
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None
        self.warming: threading.Thread | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = pathlib.Path(str(config.hydra.sweep.dir)).absolute()
        self.warming = _warm_workers(self.launcher, self.warm_up) if self.n_jobs > 1 else None

    # ------------------------------------------------------------------ search space
    def search_space(self, arguments: Sequence[str]) -> tuple[dict, dict]:
        """({name: distribution}, {name: fixed value string}) from params and the command line."""
        from optuna.distributions import BaseDistribution

        lines = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space, fixed = {}, {}
        for override in parser.parse_overrides(lines):
            name = override.get_key_element()
            value = distribution_from_override(override)
            if isinstance(value, BaseDistribution):
                space[name] = value
                fixed.pop(name, None)
            else:
                fixed[name] = value
                space.pop(name, None)
        return space, fixed

    # ------------------------------------------------------------------ study
    def _storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.sweep_dir / 'optuna.db'}"

    def _lock(self):
        """Held while a sweeper reads the study's counts and asks for trials, so that sweepers
        started together never ask for more than n_trials in all: beside a SQLite file, in
        the (shared) sweep directory for a database server."""
        return store_lock(self._storage_url(), fallback=self.sweep_dir / ".optuna.lock")

    def _study(self):
        import optuna

        url = self._storage_url()
        # SQLite makes a writer wait up to `timeout` s for another's lock (the default 5 s is
        # short when several workers tell results at once); retry_locked covers the rest.
        engine_kwargs = {"connect_args": {"timeout": 30}} if sqlite_path(url) else {}
        name = self.study_name or "pipelines"
        with self._lock():  # creating the tables is not safe to race
            storage = retry_locked(optuna.storages.RDBStorage, url, engine_kwargs=engine_kwargs)
            study = retry_locked(optuna.create_study, study_name=name, storage=storage,
                                 directions=self.directions, load_if_exists=True)
            # A resumed study must not replay the suggestions its seed gave at the start, nor
            # may two sweepers started together on one study draw the same ones.
            offset = len(study.get_trials(deepcopy=False))
            starts = int(study.user_attrs.get(STARTS, 0))
            retry_locked(study.set_user_attr, STARTS, starts + 1)
        offset += SEED_STRIDE * starts
        seed = None if self.seed is None else self.seed + offset
        study.sampler = make_sampler(self.sampler, seed, offset)
        return study, url

    def _stale(self, trial, now: float) -> bool:
        """A RUNNING trial whose sweeper is gone: dead on this host, or silent on another one
        for longer than grace_period (trials of older sweepers, without a worker, are stale)."""
        worker = trial.user_attrs.get(WORKER)
        if not worker:
            return True
        host, _, process = worker.partition(":")
        if host == socket.gethostname():
            return not _process_alive(process)
        beat = trial.user_attrs.get(HEARTBEAT)
        if beat is None:
            beat = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        return now - float(beat) > self.grace_period

    def _recover(self, study) -> int:
        """Trials left RUNNING by a dead sweeper: failed, and re-run in their job directory.
        Returns how many RUNNING trials live sweepers are still running."""
        from optuna.trial import Trial, TrialState

        now, running = time.time(), 0
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not self._stale(trial, now):
                running += 1
                continue
            retry_locked(Trial(study, trial._trial_id).set_user_attr, INTERRUPTED, True)
            retry_locked(study.tell, trial.number, state=TrialState.FAIL)
            job_num = trial.user_attrs.get(JOB_NUM, trial.number)
            retry_locked(study.enqueue_trial, trial.params, user_attrs={JOB_NUM: job_num},
                         skip_if_exists=False)
            log.info("Optuna: trial %d was interrupted; re-running it in job %s with %s",
                     trial.number, job_num, trial.params)
        return running

    @staticmethod
    def _finished(study) -> int:
        from optuna.trial import TrialState

        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED)))

    def _ask(self, study, space: dict, fixed: dict, size: int) -> tuple[list, int]:
        """Under the study lock: recovers dead sweepers' trials, then asks for the next
        trials (at most `size`, and never beyond n_trials with the ones running elsewhere).
        Returns ([(trial, overrides)], trials that other sweepers or slots are running)."""
        with self._lock():
            running = self._recover(study)
            to_go = self.n_trials - self._finished(study) - running
            if to_go <= 0:
                return [], running
            used = [t.user_attrs.get(JOB_NUM, t.number) for t in study.get_trials(deepcopy=False)]
            next_job = max(used, default=-1) + 1
            batch = []
            for _ in range(min(size, to_go)):
                trial = retry_locked(study.ask)
                for name, distribution in space.items():
                    retry_locked(suggest, trial, name, distribution)
                if JOB_NUM not in trial.user_attrs:
                    retry_locked(trial.set_user_attr, JOB_NUM, next_job)
                    next_job += 1
                retry_locked(trial.set_user_attr, WORKER, self.worker)
                overrides = [f"{k}={_format(v)}" for k, v in trial.params.items()]
                overrides += [f"{k}={v}" for k, v in fixed.items()]
                overrides.append(f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}")
                overrides.append(f"++hydra.job.env_set.{STUDY_ENV}={self.study_key}")
                batch.append((trial, tuple(overrides)))
        return batch, running

    # ------------------------------------------------------------------ sweep
    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        # Several sweepers of one study write it: atomically, so that a job never reads half.
        partial = self.sweep_dir / f".multirun.yaml.{os.getpid()}"
        OmegaConf.save(self.config, partial)
        os.replace(partial, self.sweep_dir / "multirun.yaml")
        space, fixed = self.search_space(arguments)
        study, storage = self._study()
        self.worker = f"{socket.gethostname()}:{_process_id(os.getpid())}"
        self.study_key = study_key(storage, study.study_name)
        log.info("Optuna: study %r in %s; %d of %d trials done; searching %s", study.study_name,
                 storage, self._finished(study), self.n_trials,
                 ", ".join(f"{k}: {v}" for k, v in space.items()) or "nothing")
        self._failures: list[BaseException] = []
        self._launched, self._tally, self._stop = 0, threading.Lock(), threading.Event()
        if self.n_jobs > 1 and type(self.launcher).__name__ != "BasicLauncher":
            # A launcher that runs jobs in other processes: n_jobs slots of one trial each, so
            # that a slot starts its next trial as soon as its last one ends, instead of every
            # batch waiting for its slowest trial (as Optuna's own optimize(n_jobs) does).
            slots = [_Slot(self._run_slot, self._stop, study, space, fixed, 1)
                     for _ in range(self.n_jobs)]
            for slot in slots:
                slot.start()
            # While the first jobs import TensorFlow, this process opens the MLflow store and
            # the parent run, which the first job would do while the others wait for it.
            preparing = threading.Thread(target=prepare_sweep, daemon=True, name="mlflow-store",
                                         args=(self.config, self.sweep_dir, self.study_key))
            preparing.start()
            for slot in slots:
                slot.join()
            preparing.join()
            errors = [slot.error for slot in slots if slot.error is not None]
            if errors:
                raise errors[0]
        else:
            self._run_slot(study, space, fixed, self.n_jobs)
        self._save_results(study)
        if self.warming is not None:
            self.warming.join()
        _stop_idle_workers(self.launcher)
        return study

    def _run_slot(self, study, space: dict, fixed: dict, size: int) -> None:
        """Asks for `size` trials at a time, launches them, tells their results; until the
        study holds n_trials finished trials (waiting for the ones others still run)."""
        from optuna.trial import TrialState

        waiting = False
        while not self._stop.is_set():
            batch, running = self._ask(study, space, fixed, size)
            if not batch:
                if not running:
                    return
                if not waiting:
                    log.info("Optuna: waiting for %d running trial(s) to finish", running)
                waiting = True
                self._stop.wait(min(1.0, self.heartbeat_interval))
                continue
            waiting = False
            try:
                self.validate_batch_is_legal([o for _, o in batch])
            except Exception:
                for trial, _ in batch:  # not interrupted: these trials can never run
                    retry_locked(study.tell, trial, state=TrialState.FAIL)
                raise
            with _Heartbeat([trial for trial, _ in batch], self.heartbeat_interval):
                returns = self._launch(batch)
            failed = []
            for (trial, _), ret in zip(batch, returns):
                try:
                    value = ret.return_value  # raises the job's exception if it failed
                    values = self._values(value)
                except Exception as error:  # noqa: BLE001 - a failed trial, told to the study
                    retry_locked(study.tell, trial, state=TrialState.FAIL)
                    failed.append(error)
                    log.warning("Optuna: trial %d failed: %s", trial.number, error)
                    continue
                retry_locked(study.tell, trial, values)
                log.info("Optuna: trial %d: %s -> %s", trial.number, dict(trial.params), values)
            with self._tally:
                self._launched += len(returns)
                self._failures += failed
                too_many = self._failures and \
                    len(self._failures) / max(self._launched, 1) > self.max_failure_rate
            if too_many:
                self._stop.set()
                raise self._failures[0]

    def _launch(self, batch) -> list:
        """Launches trials; a job number out of sequence (a re-run) gets a launch of its own."""
        returns, start = [], 0
        while start < len(batch):
            first = batch[start][0].user_attrs[JOB_NUM]
            end = start + 1
            while end < len(batch) and batch[end][0].user_attrs[JOB_NUM] == first + end - start:
                end += 1
            returns += list(self.launcher.launch([o for _, o in batch[start:end]],
                                                 initial_job_idx=first))
            start = end
        return returns

    def _values(self, value: Any) -> list[float]:
        values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
        if len(values) != len(self.directions) or any(v is None for v in values):
            raise ValueError(f"the job returned {value!r}; the sweep needs {len(self.directions)} "
                             f"objective value(s) for direction {self.directions}")
        values = [float(v) for v in values]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"the job returned a non-finite objective {values}")
        return values

    def _save_results(self, study) -> None:
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name,
                                   "n_trials": len(complete)}
        if complete and len(self.directions) == 1:
            results.update(best_params=study.best_params, best_value=study.best_value,
                           best_trial=study.best_trial.number,
                           best_job=study.best_trial.user_attrs.get(JOB_NUM))
        elif complete:
            results["best_trials"] = [{"params": t.params, "values": t.values}
                                      for t in study.best_trials]
        with self._lock():  # every sweeper of the study writes it when all trials are done
            OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        log.info("Optuna: %s", {k: v for k, v in results.items() if k != "name"})
