"""`python -m pipelines task=TASK model=MODEL [key=value ...]`: compose, check, run."""
import sys

import hydra
from omegaconf import DictConfig

from pipelines.config import ConfigError, check, register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        check(cfg)
    except ConfigError as error:
        print(f"Config error: {error}", file=sys.stderr)
        sys.exit(2)
    from pipelines.run import run  # TensorFlow is imported from here on

    return run(cfg).get("objective")


if __name__ == "__main__":
    main()
