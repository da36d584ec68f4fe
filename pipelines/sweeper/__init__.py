"""Hyperparameter sweeps on current Optuna (>=4) as a Hydra sweeper.

The plugin itself lives in `hydra_plugins/pipelines_optuna_sweeper/` (Hydra only loads plugins
from the `hydra_plugins` namespace); the work happens here. Select it with
`hydra/sweeper=pipelines_optuna` or `hparams_search=optuna`.
"""
from pipelines.sweeper.optuna_sweeper import OptunaSweeperImpl, distribution_from_override

__all__ = ["OptunaSweeperImpl", "distribution_from_override"]
