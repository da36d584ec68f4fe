"""The sweeper's config schema, stored as `hydra/sweeper: pipelines_optuna`.

Keys follow hydra-optuna-sweeper, so its users' `hydra.sweeper` blocks carry over.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class PipelinesOptunaSweeperConf:
    _target_: str = (
        "hydra_plugins.pipelines_optuna_sweeper.pipelines_optuna_sweeper.PipelinesOptunaSweeper"
    )
    _recursive_: bool = False  # the sampler config reaches the sweeper as config, not an object
    # maximize (the task metrics are higher-is-better), minimize, or a list (multi-objective)
    direction: Any = "maximize"
    # trials in the study in total: a resumed sweep runs only the ones still missing
    n_trials: int = 20
    # tpe | random | cmaes, or a config with _target_ (e.g. optuna.samplers.TPESampler)
    sampler: Any = "tpe"
    seed: Optional[int] = None
    # null: sqlite:///<hydra.sweep.dir>/optuna.db, so re-running the same sweep dir resumes it
    storage: Optional[str] = None
    study_name: Optional[str] = None
    # trials this sweeper runs at once: in parallel with hydra/launcher=joblib (set
    # hydra.launcher.n_jobs to the same number) or submitit_slurm, each slot starting its next
    # trial when its last one ends. Several sweepers may share one study (same storage and
    # study_name); together they run n_trials.
    n_jobs: int = 1
    max_failure_rate: float = 0.0
    # a sweeper writes a heartbeat into its running trials every heartbeat_interval s; another
    # host's trial silent for grace_period s is re-run (on this host, a dead pid is enough)
    heartbeat_interval: float = 30.0
    grace_period: float = 120.0
    # with hydra/launcher=joblib: a module every worker imports as soon as the sweep starts,
    # before its first trial arrives (hparams_search=optuna sets pipelines.run: TensorFlow)
    warm_up: Optional[str] = None
    # key: choice(...) | interval(lo, hi) | range(lo, hi[, step]) | tag(log, interval(...))
    params: Optional[Dict[str, str]] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="pipelines_optuna",
                             node=PipelinesOptunaSweeperConf, provider="pipelines")
