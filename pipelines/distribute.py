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
    too_short = None
    if total_steps < MIN_XLA_STEPS:
        too_short = (f"auto: {total_steps} training steps do not pay for an XLA compile "
                     f"(fewer than {MIN_XLA_STEPS})")
    return _choose_xla(setting, "trainer.jit_compile", backbone, "xla_on_cpu", "trains",
                       "jit_families", too_short)


# Fewer sentences than this in one decode do not pay for the search's XLA compile: it cost
# 3-4 s more than tracing the graph (transformer, lstm; beam 4, 2-vCPU CPU) for 1.3 / 0.7 ms
# saved per sentence (benchmarks jit_families --decode).
MIN_XLA_SENTENCES = 5000


def choose_decode_jit(setting, backbone, sentences: int | None) -> tuple[bool, str]:
    """`decode.jit_compile` (translation, captioning) for decoding `sentences` sentences in one
    go: the same rule for the search, read from the factory's `xla_decode_on_cpu`, as measured
    by `python -m benchmarks jit_families --decode` (beam search sentences per second, XLA vs
    graph), and at least `MIN_XLA_SENTENCES`. `sentences=None` is the exported signature,
    which `auto` leaves uncompiled: a server's requests are not counted, and the first of
    each batch size would compile (3-7 s measured here; then 31 vs 263 ms per sentence at
    batch 1). Returns (jit, the reason, for the log)."""
    too_short = None
    if sentences is None:
        too_short = ("auto: the export serves requests of any batch size, each new size an "
                     "XLA compile of seconds; decode.jit_compile=true compiles it")
    elif sentences < MIN_XLA_SENTENCES:
        too_short = (f"auto: {sentences} sentences do not pay for an XLA compile of the "
                     f"search (fewer than {MIN_XLA_SENTENCES})")
    return _choose_xla(setting, "decode.jit_compile", backbone, "xla_decode_on_cpu",
                       "decodes", "jit_families --decode", too_short)


def _choose_xla(setting, key: str, backbone, measured: str, verb: str, benchmark: str,
                too_short: str | None = None) -> tuple[bool, str]:
    """What `auto` means for both keys: a TPU compiles; `too_short` (a reason) does not;
    a GPU is not measured; on a CPU the backbone's attribute `measured` says."""
    if setting is True or setting is False:
        return setting, f"{key}={str(setting).lower()}"
    devices = {device.device_type for device in tf.config.list_logical_devices()}
    if "TPU" in devices:
        return True, "auto: a TPU runs XLA"
    family = getattr(backbone, "name", type(backbone).__name__)
    if too_short is not None:
        return False, too_short
    if "GPU" in devices:
        return False, (f"auto: XLA is not measured for {family} on a GPU (benchmarks "
                       f"{benchmark}); {key}=true to try it")
    faster = bool(getattr(backbone, measured, False))
    return faster, (f"auto: {family} {verb} {'faster' if faster else 'slower'} under XLA on "
                    f"this CPU (benchmarks {benchmark})")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes checkpoints, exports and MLflow runs under multi-worker."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )
