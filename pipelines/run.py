"""`run(cfg)`: strategy -> data -> task -> train -> evaluate -> export -> log.

Everything the run writes goes under its run directory (`hydra.run.dir`): `metrics.json`,
`saved_model/`, `checkpoints/`, and the MLflow run id that a re-run re-attaches.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pipelines.checkpoints import CheckpointHook  # noqa: E402,F401 - re-exported
from pipelines import pretrained  # noqa: E402
from pipelines.config import check_profile_steps, option_value as _value  # noqa: E402
from pipelines.data.streaming import StreamingSplit, check_one_batch  # noqa: E402
from pipelines.distribute import choose_jit_compile, is_chief, make_strategy  # noqa: E402
from pipelines.optimizers import make_optimizer  # noqa: E402,F401 - re-exported
from pipelines.tasks import build_task  # noqa: E402
from pipelines.tracking import MlflowHook, Tracker, objective  # noqa: E402
from pipelines.trainer import EarlyStopping, Trainer  # noqa: E402

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    metrics: dict  # the final metrics, as in metrics.json
    task: object   # the adapted Task (tokenizers, label names)
    model: keras.Model
    run_dir: pathlib.Path


def run(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict:
    """Trains and evaluates the configured task; returns the final metrics.

    The returned dict also holds `objective`: the task's first metric, for sweeps.
    """
    metrics = execute(cfg, run_dir).metrics
    print(json.dumps(metrics))
    return {**metrics, "objective": objective(metrics)[1]}


def execute(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> RunResult:
    """The whole path; `run_dir` defaults to Hydra's output directory."""
    began = time.time()
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    run_dir = pathlib.Path(run_dir or hydra_cfg.runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg else []

    strategy = make_strategy(cfg.distribute)  # first: it may split the CPU into devices
    tcfg = cfg.trainer
    keras.utils.set_random_seed(tcfg.seed)
    if tcfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(_value(tcfg.precision))
    chief = is_chief(strategy)
    log.info("task=%s model=%s data=%s strategy=%s replicas=%d global batch=%d "
             "(per replica %d) precision=%s", cfg.task.name, cfg.model.name,
             _value(cfg.data.source), _value(cfg.distribute.strategy),
             strategy.num_replicas_in_sync, tcfg.batch_size,
             tcfg.batch_size // strategy.num_replicas_in_sync, _value(tcfg.precision))

    task = build_task(cfg)
    tracker = Tracker(cfg, run_dir, overrides) if chief else Tracker.disabled(cfg, run_dir)
    tracker.start()  # fails here, before any training, when the server is unreachable
    try:
        splits = task.load()
        log.info("data: %d train%s, %d validation, %s %s examples", len(splits.train[0]),
                 " (streamed from its files)" if isinstance(splits.train, StreamingSplit) else "",
                 len(splits.validation[0]), len(splits.evaluation[0]), splits.evaluation_name)
        if task.trains:  # before the vocabularies are learned: it fails in seconds
            check_one_batch(splits.train, tcfg.batch_size)
        task.adapt(splits)
        for name, text in task.run_files().items():  # e.g. masked_lm's vocabulary
            if chief:
                (run_dir / name).write_text(text)
        batch = tcfg.batch_size
        if task.trains:
            model = _train(cfg, task, splits, strategy, tracker, run_dir, chief)
        else:  # the model comes trained (zero_shot_text); trainer.epochs and the rest are unused
            log.info("task=%s trains nothing: evaluating the model as it comes", cfg.task.name)
            with strategy.scope():
                model = task.build_model()
            _log_size(model, tracker)

        metrics = task.evaluate(model, splits.evaluation, batch)
        log.info("%s metrics: %s", splits.evaluation_name,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if chief:
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        tracker.log_final_metrics(metrics)
        tracker.log_metrics({"train_seconds": time.time() - began})
        for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json"):
            tracker.log_artifact(run_dir / name)
        if chief:
            for picture in task.pictures(model, splits, run_dir / "pictures"):
                tracker.log_artifact(picture, "pictures")
        samples = getattr(task, "samples", None)
        if samples and chief:
            (run_dir / "samples.json").write_text(json.dumps(samples, indent=2))
            tracker.log_table(samples, "samples.json")

        if cfg.export.enabled and chief:
            export_dir = run_dir / cfg.export.dir
            task.export(model, str(export_dir))
            log.info("exported SavedModel to %s", export_dir)
            if cfg.logger.log_model:
                tracker.log_model(export_dir, samples)
        tracker.finish()
    except BaseException:
        tracker.finish("FAILED")
        raise
    return RunResult(metrics, task, model, run_dir)


def _log_size(model: keras.Model, tracker: Tracker) -> None:
    log.info("model %s: %s parameters", model.name, f"{model.count_params():,}")
    tracker.log_metrics({"parameters": model.count_params()})


def _train(cfg: DictConfig, task, splits, strategy, tracker: Tracker, run_dir: pathlib.Path,
           chief: bool) -> keras.Model:
    """Builds the model under `strategy` (copying `model.init_from`'s layers) and trains it,
    resuming from the run's newest save point; returns it with the weights to evaluate."""
    tcfg = cfg.trainer
    batch = tcfg.batch_size
    train_ds = task.dataset(splits.train, training=True, batch_size=batch)
    val_ds = task.dataset(splits.validation, training=False, batch_size=batch)
    steps = tcfg.steps_per_epoch or max(1, task.train_examples(splits) // batch)
    profile_steps = tcfg.get("profile_steps")
    check_profile_steps(profile_steps, steps)  # the epoch's length is known now
    jit_compile, reason = choose_jit_compile(tcfg.jit_compile, task.backbone,
                                             steps * tcfg.epochs)
    log.info("XLA %s (%s)", "on" if jit_compile else "off", reason)

    with strategy.scope():
        model = task.build_model()
        warm = pretrained.initialize(cfg, model)  # model.init_from: the layers it copied
        lr_scale = tf.Variable(1.0, trainable=False, name="lr_scale")  # NaN recovery halves it
        optimizer = make_optimizer(tcfg, total_steps=steps * tcfg.epochs, lr_scale=lr_scale)
        optimizer.build(model.trainable_variables)
    _log_size(model, tracker)

    checkpoints = CheckpointHook(run_dir / "checkpoints", model, optimizer, write=chief)
    early = EarlyStopping(cfg.task.monitor, tcfg.early_stopping_patience, task.monitor_mode,
                          restore_saved=checkpoints.restore_best)
    trainer = Trainer(model, optimizer, task.loss, task.stats, strategy, batch,
                      jit_compile=jit_compile,
                      hooks=[*task.hooks(model, splits), *pretrained.freeze(cfg, warm), early,
                             checkpoints, MlflowHook(tracker)],
                      verbose=tcfg.verbose,
                      checkpoint_every_steps=tcfg.checkpoint_every_steps,
                      max_nan_recoveries=tcfg.max_nan_recoveries, lr_scale=lr_scale,
                      profile_steps=tuple(profile_steps) if profile_steps else None,
                      profile_dir=run_dir / "profile")
    checkpoints.restore(trainer)
    trainer.fit(train_ds, val_ds, tcfg.epochs, steps, tcfg.eval_steps)
    return model
