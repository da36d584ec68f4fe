"""The plugin class Hydra instantiates; it delegates to `pipelines.sweeper.OptunaSweeperImpl`."""
from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

# Registers the config with Hydra when the plugin is scanned.
from hydra_plugins.pipelines_optuna_sweeper.config import PipelinesOptunaSweeperConf  # noqa: F401


class PipelinesOptunaSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        from pipelines.sweeper import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(**kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function,
                           config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.sweeper.sweep(arguments)
