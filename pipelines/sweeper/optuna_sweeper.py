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

The objective is what the task function returns (`pipelines.__main__.main` returns the task's
first metric).
"""
from __future__ import annotations

import logging
import math
import pathlib
from typing import Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (ChoiceSweep, IntervalSweep, Override, RangeSweep,
                                              Transformer)
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"  # user attr of a trial that was running when its sweep died
JOB_NUM = "job_num"          # user attr: the Hydra job number (the job's subdirectory)
TRIAL_ENV = "PIPELINES_OPTUNA_TRIAL"  # set for each job; the tracker tags the MLflow run


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


class OptunaSweeperImpl(Sweeper):
    def __init__(self, direction: Any = "maximize", n_trials: int = 20, sampler: Any = "tpe",
                 seed: int | None = None, storage: str | None = None,
                 study_name: str | None = None, n_jobs: int = 1,
                 max_failure_rate: float = 0.0, params: dict | None = None) -> None:
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
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = pathlib.Path(str(config.hydra.sweep.dir)).absolute()

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

    # ------------------------------------------------------------------ sweep
    def _study(self):
        import optuna

        storage = self.storage or f"sqlite:///{self.sweep_dir / 'optuna.db'}"
        name = self.study_name or "pipelines"
        study = optuna.create_study(study_name=name, storage=storage, directions=self.directions,
                                    load_if_exists=True)
        # A resumed study must not replay the suggestions its seed gave at the start.
        offset = len(study.get_trials(deepcopy=False))
        seed = None if self.seed is None else self.seed + offset
        study.sampler = make_sampler(self.sampler, seed, offset)
        return study, storage

    def _recover(self, study) -> None:
        """Trials left RUNNING by a killed sweep: failed, and re-run in their job directory."""
        from optuna.trial import Trial, TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            Trial(study, trial._trial_id).set_user_attr(INTERRUPTED, True)
            study.tell(trial.number, state=TrialState.FAIL)
            job_num = trial.user_attrs.get(JOB_NUM, trial.number)
            study.enqueue_trial(trial.params, user_attrs={JOB_NUM: job_num},
                                skip_if_exists=False)
            log.info("Optuna: trial %d was interrupted; re-running it in job %s with %s",
                     trial.number, job_num, trial.params)

    @staticmethod
    def _finished(study) -> int:
        from optuna.trial import TrialState

        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                   or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED)))

    def sweep(self, arguments: list[str]) -> Any:
        from optuna.trial import TrialState

        assert self.config is not None and self.launcher is not None
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        space, fixed = self.search_space(arguments)
        study, storage = self._study()
        self._recover(study)
        log.info("Optuna: study %r in %s; %d of %d trials done; searching %s", study.study_name,
                 storage, self._finished(study), self.n_trials,
                 ", ".join(f"{k}: {v}" for k, v in space.items()) or "nothing")
        used = {t.user_attrs.get(JOB_NUM, t.number) for t in study.get_trials(deepcopy=False)}
        next_job = max(used, default=-1) + 1
        failures: list[BaseException] = []
        launched = 0
        while (to_go := self.n_trials - self._finished(study)) > 0:
            trials = [study.ask() for _ in range(min(self.n_jobs, to_go))]
            batch = []
            for trial in trials:
                for name, distribution in space.items():
                    suggest(trial, name, distribution)
                if JOB_NUM not in trial.user_attrs:
                    trial.set_user_attr(JOB_NUM, next_job)
                    next_job += 1
                overrides = [f"{k}={_format(v)}" for k, v in trial.params.items()]
                overrides += [f"{k}={v}" for k, v in fixed.items()]
                overrides.append(f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}")
                batch.append((trial, tuple(overrides)))
            try:
                self.validate_batch_is_legal([o for _, o in batch])
            except Exception:
                for trial, _ in batch:  # not interrupted: these trials can never run
                    study.tell(trial, state=TrialState.FAIL)
                raise
            returns = self._launch(batch)
            launched += len(returns)
            for (trial, _), ret in zip(batch, returns):
                try:
                    value = ret.return_value  # raises the job's exception if it failed
                    values = self._values(value)
                except Exception as error:  # noqa: BLE001 - a failed trial, told to the study
                    study.tell(trial, state=TrialState.FAIL)
                    failures.append(error)
                    log.warning("Optuna: trial %d failed: %s", trial.number, error)
                    continue
                study.tell(trial, values)
                log.info("Optuna: trial %d: %s -> %s", trial.number, dict(trial.params), values)
            if failures and len(failures) / max(launched, 1) > self.max_failure_rate:
                raise failures[0]
        self._save_results(study)
        return study

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
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        log.info("Optuna: %s", {k: v for k, v in results.items() if k != "name"})
