"""`python -m pipelines task=TASK model=MODEL [key=value ...]`: compose, check, run."""
import sys

import hydra
from omegaconf import DictConfig

from pipelines.config import ConfigError, check, register_schemas
from pipelines.logs import quiet_tensorflow

register_schemas()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        check(cfg)
    except ConfigError as error:
        print(f"Config error: {error}", file=sys.stderr)
        sys.exit(2)
    with quiet_tensorflow():  # no absl / TF C++ chatter unless PIPELINES_TF_LOGS=1
        from pipelines.run import run  # TensorFlow is imported from here on

    try:
        return run(cfg).get("objective")
    finally:
        # A multirun runs its jobs in this process: free the last job's graphs and weights.
        import gc

        import keras

        keras.backend.clear_session()
        gc.collect()


if __name__ == "__main__":
    main()
