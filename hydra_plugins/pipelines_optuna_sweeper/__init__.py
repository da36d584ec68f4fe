"""Hydra plugin `hydra/sweeper=pipelines_optuna`: Optuna (>=4) sweeps with a persistent study.

Hydra loads plugins only from the `hydra_plugins` namespace package (no `__init__.py` in
`hydra_plugins/` itself); the implementation is `pipelines.sweeper`.
"""
