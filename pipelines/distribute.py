"""The `tf.distribute.Strategy` named by `distribute=`, created before any other TF op."""
from __future__ import annotations

import json
import logging
import os

import tensorflow as tf
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def split_cpu(n: int) -> None:
    """Splits the first CPU into `n` logical devices (must run before TF initialises)."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * n
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"distribute.cpu_devices={n}: TensorFlow was initialised before the CPU could be "
            "split; create the strategy first"
        ) from error


def make_strategy(cfg: DictConfig) -> tf.distribute.Strategy:
    """default | mirrored | multi_worker | tpu, from the `distribute` config group."""
    if cfg.cpu_devices:
        split_cpu(int(cfg.cpu_devices))
    kind = str(cfg.strategy.value if hasattr(cfg.strategy, "value") else cfg.strategy)
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if kind == "multi_worker":
        if cfg.workers:
            os.environ["TF_CONFIG"] = json.dumps({
                "cluster": {"worker": list(cfg.workers)},
                "task": {"type": "worker", "index": int(cfg.task_index)},
            })
        if "TF_CONFIG" not in os.environ:
            raise RuntimeError(
                "distribute=multi_worker needs the cluster: set TF_CONFIG or "
                "distribute.workers=[host:port,...] distribute.task_index=I"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
                tpu="local" if cfg.tpu in (None, "local") else cfg.tpu
            )
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except Exception as error:  # noqa: BLE001 - every failure means "no TPU here"
            raise RuntimeError(
                f"distribute=tpu: no TPU found (distribute.tpu={cfg.tpu}): {error}. Run on a "
                "TPU VM, or pick distribute=default|mirrored"
            ) from error
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"distribute.strategy={kind} is not one of default, mirrored, "
                     "multi_worker, tpu")


# Fewer training steps than this do not pay for an XLA compile (tens of seconds per shape).
MIN_XLA_STEPS = 200


def choose_jit_compile(setting, backbone, total_steps: int) -> tuple[bool, str]:
    """`trainer.jit_compile`: true/false as given; `auto` XLA-compiles the step when this
    device runs the backbone's family faster under XLA, as measured by
    `python -m benchmarks jit_families` (the factory's `xla_on_cpu`; on a GPU no family is
    measured yet, so graph mode unless forced; a TPU always compiles) and the run trains at
    least `MIN_XLA_STEPS` steps. Returns (jit, the reason, for the log)."""
    if setting is True or setting is False:
        return setting, f"trainer.jit_compile={str(setting).lower()}"
    devices = {device.device_type for device in tf.config.list_logical_devices()}
    if "TPU" in devices:
        return True, "auto: a TPU runs XLA"
    family = getattr(backbone, "name", type(backbone).__name__)
    if total_steps < MIN_XLA_STEPS:
        return False, (f"auto: {total_steps} training steps do not pay for an XLA compile "
                       f"(fewer than {MIN_XLA_STEPS})")
    if "GPU" in devices:
        return False, (f"auto: XLA is not measured for {family} on a GPU (benchmarks "
                       "jit_families); trainer.jit_compile=true to try it")
    faster = bool(getattr(backbone, "xla_on_cpu", False))
    return faster, (f"auto: {family} trains {'faster' if faster else 'slower'} under XLA on "
                    "this CPU (benchmarks jit_families)")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes checkpoints, exports and MLflow runs under multi-worker."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )
