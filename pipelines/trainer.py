"""A training loop that owns its step, after TF Model Garden's Orbit.

Keras 3 `fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585) and has
similar reports under TPUStrategy, so the step here is a `tf.function` that calls
`strategy.run` on a distributed dataset: the same code path for one CPU, N GPUs, many
workers and a TPU. What users like about `fit` stays: a progress bar with loss and metrics,
per-epoch validation, early stopping, learning-rate schedules, gradient clipping, logs.

Everything else (MLflow, checkpoints, pictures) plugs in as a `Hook`; the loop does not know
about them. The loop does own two kinds of fault tolerance: save points every
`checkpoint_every_steps` steps (hooks save there; `state` then says where in the data stream and
in the epoch the run is) and recovery from a non-finite loss (`max_nan_recoveries`).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

# loss_fn(y_true, y_pred) -> per-example loss (B,); stats_fn(y_true, y_pred) ->
# {name: (total, count)} summed over the batch, for monitoring only.
LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
StatsFn = Callable[[tf.Tensor, tf.Tensor], dict]


class Hook:
    """Called by the trainer at the edges of training; override what you need."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def on_save_point(self, trainer: "Trainer") -> None:
        """Every `checkpoint_every_steps` steps inside an epoch; `trainer.state` holds the
        partial epoch (`state["partial"]`) and the batches consumed (`state["step"]`)."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, logs: dict) -> None: ...

    def on_train_end(self, trainer: "Trainer", logs: dict) -> None: ...


class EarlyStopping(Hook):
    """Stops when `monitor` has not improved for `patience` epochs; restores the best weights.

    `mode` is "max" for metrics such as accuracy and "min" for losses. The state lives in
    `trainer.state` so that a resumed run keeps counting where it stopped.
    """

    def __init__(self, monitor: str, patience: int | None, mode: str = "max",
                 restore_saved: Callable[[], bool] | None = None):
        self.monitor, self.patience, self.mode = monitor, patience, mode
        self.best_weights = None
        self.restore_saved = restore_saved  # loads the best weights after a resume

    def _better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    def on_epoch_end(self, trainer, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(
                f"early stopping monitors {self.monitor!r}, which this run does not produce; "
                f"available: {sorted(logs)}"
            )
        state = trainer.state
        if self._better(value, state.get("best")):
            state.update(best=float(value), best_epoch=epoch, wait=0)
            self.best_weights = trainer.model.get_weights()
        else:
            state["wait"] = state.get("wait", 0) + 1
            if self.patience is not None and state["wait"] >= self.patience:
                log.info("early stopping: %s did not improve for %d epochs (best %.4f at epoch %d)",
                         self.monitor, self.patience, state["best"], state["best_epoch"] + 1)
                trainer.stop_training = True

    def on_train_end(self, trainer, logs):
        if self.best_weights is not None:
            trainer.model.set_weights(self.best_weights)
        elif not (self.restore_saved and "best_epoch" in trainer.state and self.restore_saved()):
            return
        log.info("restored the weights of epoch %d (%s=%.4f)",
                 trainer.state["best_epoch"] + 1, self.monitor, trainer.state["best"])


class Trainer:
    """Trains a Keras model with a `strategy.run` step.

    Args:
        model: a built `keras.Model`, created under `strategy.scope()`.
        optimizer: a Keras optimizer created under the same scope.
        loss_fn: per-example loss, `(y_true, y_pred) -> (B,)`.
        stats_fn: monitoring statistics, `(y_true, y_pred) -> {name: (total, count)}`.
        strategy: the `tf.distribute.Strategy`.
        global_batch_size: the batch that every step consumes across all replicas.
        jit_compile: XLA-compile the replica step.
        hooks: `Hook`s called at epoch ends (and save points).
        verbose: show a progress bar.
        checkpoint_every_steps: a save point every this many steps (global count) besides the
            epoch ends; None = epoch ends only.
        max_nan_recoveries: how often a non-finite training loss may restore the last save
            point's weights and halve the learning rate before training fails; 0 = never.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 loss_fn: LossFn, stats_fn: StatsFn, strategy: tf.distribute.Strategy,
                 global_batch_size: int, jit_compile: bool = False,
                 hooks: Iterable[Hook] = (), verbose: bool = True,
                 checkpoint_every_steps: int | None = None, max_nan_recoveries: int = 0):
        if checkpoint_every_steps is not None and checkpoint_every_steps < 1:
            raise ValueError("trainer.checkpoint_every_steps must be >= 1 or null; received "
                             f"{checkpoint_every_steps}")
        if max_nan_recoveries < 0:
            raise ValueError("trainer.max_nan_recoveries must be >= 0; received "
                             f"{max_nan_recoveries}")
        self.model, self.optimizer = model, optimizer
        self.loss_fn, self.stats_fn = loss_fn, stats_fn
        self.strategy, self.global_batch_size = strategy, global_batch_size
        self.jit_compile, self.hooks, self.verbose = jit_compile, list(hooks), verbose
        self.checkpoint_every_steps = checkpoint_every_steps
        self.max_nan_recoveries = max_nan_recoveries
        self.stop_training = False
        # Saved with checkpoints: epochs done, batches consumed, the history, and mid-epoch
        # `partial` = {"steps", "totals"}; after a NaN recovery also `nan_recoveries`, `lr_scale`.
        self.state: dict = {"epoch": 0, "step": 0, "history": []}
        self._lr_scale = self._scalable_schedule() if max_nan_recoveries else None
        self._last_good: list | None = None  # host copies of the last finite save point
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()

    # ------------------------------------------------------------------ steps
    def _make_train_step(self):
        model, optimizer = self.model, self.optimizer
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def replica_step(x, y):
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                per_example = self.loss_fn(y, y_pred)
                # Sum / GLOBAL batch: gradients summed across replicas give the mean.
                loss = tf.nn.compute_average_loss(
                    per_example, global_batch_size=self.global_batch_size
                )
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled_loss = optimizer.scale_loss(loss) if scaled else loss
            grads = tape.gradient(scaled_loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            stats = self.stats_fn(y, y_pred)
            stats["loss"] = _sum_and_count(per_example)
            return stats

        return self._distributed(replica_step, self.jit_compile)

    def _make_eval_step(self):
        model = self.model

        def replica_step(x, y):
            y_pred = model(x, training=False)
            stats = self.stats_fn(y, y_pred)
            stats["loss"] = _sum_and_count(self.loss_fn(y, y_pred))
            return stats

        return self._distributed(replica_step, self.jit_compile)

    def _distributed(self, replica_step, jit_compile):
        strategy = self.strategy

        # The steps hold no Python control flow on tensors, so AutoGraph has nothing to
        # convert; skipping it also keeps a long run immune to source edits on disk.
        @tf.autograph.experimental.do_not_convert
        def float_step(x, y):
            stats = replica_step(x, y)
            return {name: tuple(tf.cast(v, tf.float32) for v in pair) for name, pair in stats.items()}

        replica_fn = tf.function(float_step, jit_compile=True) if jit_compile else float_step

        @tf.function(autograph=False)
        def step(batch):
            x, y = batch
            per_replica = strategy.run(replica_fn, args=(x, y))
            return {
                name: tuple(strategy.reduce("SUM", v, axis=None) for v in pair)
                for name, pair in per_replica.items()
            }

        return step

    # ------------------------------------------------------------------ loops
    def fit(self, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset | None, epochs: int,
            steps_per_epoch: int, eval_steps: int | None = None) -> list[dict]:
        """Trains from `self.state` (epoch, and step within it) to `epochs`; returns the
        per-epoch history.

        `train_ds` repeats forever; `steps_per_epoch` cuts it into epochs. A resumed run skips
        the `state["step"]` batches it already trained on, so it sees the same stream as an
        uninterrupted one. Skipping replays a seeded, deterministic stream rather than saving
        the iterator: a checkpointed tf.data iterator would hold the whole shuffle buffer
        (the training split, images included), cannot be saved from every distributed
        iterator, and breaks when the input pipeline changes; the replay costs only the input
        pipeline's time for the skipped batches. Under multi-worker sharding every worker
        skips the same global batches before its shard, so the position holds there too.
        """
        for hook in self.hooks:
            hook.on_train_begin(self)
        self.state.setdefault("step", 0)  # absent in states saved before mid-epoch resume
        if self._lr_scale is not None:
            self._lr_scale.assign(self.state.get("lr_scale", 1.0))
        start, partial = self.state["epoch"], self.state.get("partial", {"steps": 0, "totals": {}})
        if start >= epochs:
            log.info("training already finished (%d of %d epochs)", start, epochs)
        elif start or partial["steps"]:
            log.info("resuming at epoch %d of %d%s", start + 1, epochs,
                     f" (step {partial['steps']} of {steps_per_epoch})" if partial["steps"] else "")
        if start < epochs:
            if self.state["step"]:
                train_ds = train_ds.skip(self.state["step"])
            iterator = iter(self._distribute(train_ds))
            self._remember_good()
        for epoch in range(start, epochs):
            if self.stop_training:
                break
            began = time.time()  # a resumed partial epoch times this process's steps only
            bar = keras.utils.Progbar(steps_per_epoch, verbose=1 if self.verbose else 0,
                                      stateful_metrics=None)
            # A resumed epoch continues the saved sums, so its train_* logs equal an
            # uninterrupted epoch's.
            totals = {k: tuple(v) for k, v in partial["totals"].items()}
            for step in range(partial["steps"], steps_per_epoch):
                stats = self._train_step(next(iterator))
                self.state["step"] += 1
                if not self._finite(stats, f"in epoch {epoch + 1}, step {step + 1}"):
                    continue  # recovered; a NaN in the sums would poison the epoch's means
                _accumulate(totals, stats)
                bar.update(step + 1, values=[(k, v) for k, v in _means(stats).items()])
                every = self.checkpoint_every_steps
                if every and self.state["step"] % every == 0 and step + 1 < steps_per_epoch:
                    self._save_point({"steps": step + 1, "totals": totals})
            partial = {"steps": 0, "totals": {}}
            self.state.pop("partial", None)
            logs = {f"train_{k}": v for k, v in _means(totals).items()}
            if val_ds is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(val_ds, eval_steps).items()})
            logs["epoch_seconds"] = time.time() - began
            logs["learning_rate"] = float(_current_lr(self.optimizer))
            self.state["history"].append(logs)
            log.info("epoch %d/%d %s", epoch + 1, epochs,
                     " ".join(f"{k}={v:.4f}" for k, v in logs.items()))
            self.state["epoch"] = epoch + 1
            self._remember_good()
            for hook in self.hooks:
                hook.on_epoch_end(self, epoch, logs)
        final = self.state["history"][-1] if self.state["history"] else {}
        for hook in self.hooks:
            hook.on_train_end(self, final)
        return self.state["history"]

    def _distribute(self, dataset: tf.data.Dataset):
        """Splits the global batches across replicas and workers. The tasks' datasets are in
        memory, with no files to shard, so workers split by example (DATA); AUTO would reach
        the same policy only after failing on files, with a warning per run."""
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    def _save_point(self, partial: dict) -> None:
        self.state["partial"] = partial
        self._remember_good()
        for hook in self.hooks:  # hooks need not subclass Hook (MlflowHook does not)
            if hasattr(hook, "on_save_point"):
                hook.on_save_point(self)

    # ------------------------------------------------------------------ NaN recovery
    def _scalable_schedule(self) -> tf.Variable | None:
        """A schedule's rate cannot be set, so NaN recovery needs it as `schedule(step) *
        scale`, wrapped before the step is traced; the scale lives in `state["lr_scale"]`
        across resumes. A constant rate is an optimizer variable: recovery sets it and
        checkpoints keep it (None here)."""
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)  # loss scaling
        schedule = inner._learning_rate  # the public getter evaluates the schedule
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return None
        with self.strategy.scope():
            scale = tf.Variable(1.0, trainable=False, name="lr_scale")
        inner.learning_rate = _ScaledSchedule(schedule, scale)
        return scale

    def _remember_good(self) -> None:
        """Keeps host copies of the weights and optimizer state at a save point, if finite:
        what a NaN recovery restores (in memory, so every worker can, chief or not)."""
        if not self.max_nan_recoveries:
            return
        values = [v.numpy() for v in self._remembered_variables()]
        if all(np.isfinite(v).all() for v in values if v.dtype.kind == "f"):
            self._last_good = values

    def _remembered_variables(self) -> list:
        """Weights, dropout RNG states and optimizer state (iterations, moments, a constant
        learning rate)."""
        return self.model.variables + self.optimizer.variables

    def _finite(self, stats: dict, where: str) -> bool:
        """False after recovering from a non-finite loss; raises once recoveries run out."""
        loss = float(stats["loss"][0])
        if math.isfinite(loss):
            return True
        done = self.state.get("nan_recoveries", 0)
        if done >= self.max_nan_recoveries or self._last_good is None:
            raise FloatingPointError(
                f"the training loss became {loss} {where}"
                + (f" after {done} recoveries" if done else "")
                + "; lower trainer.learning_rate, set trainer.clip_norm or raise "
                f"trainer.max_nan_recoveries (now {self.max_nan_recoveries})"
            )
        halved = _current_lr(self.optimizer) / 2  # before the restore takes a constant back
        for variable, value in zip(self._remembered_variables(), self._last_good):
            variable.assign(value)
        self.state.update(nan_recoveries=done + 1, lr_scale=self.state.get("lr_scale", 1.0) / 2)
        if self._lr_scale is None:
            self.optimizer.learning_rate = halved
        else:
            self._lr_scale.assign(self.state["lr_scale"])
        log.warning("the training loss became %s %s: restored the last save point's weights and "
                    "halved the learning rate to %.3g (recovery %d of %d)", loss, where,
                    _current_lr(self.optimizer), done + 1, self.max_nan_recoveries)
        return False

    def evaluate(self, dataset: tf.data.Dataset, steps: int | None = None) -> dict:
        """Mean loss and monitoring statistics over `dataset` (or its first `steps` batches)."""
        if steps is not None:
            dataset = dataset.take(steps)
        totals: dict = {}
        for batch in self._distribute(dataset):
            _accumulate(totals, self._eval_step(batch))
        return _means(totals)


class _ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step) * scale`."""

    def __init__(self, schedule, scale: tf.Variable):
        self.schedule, self.scale = schedule, scale

    def __call__(self, step):
        return tf.cast(self.schedule(step), self.scale.dtype) * self.scale


def _sum_and_count(per_example: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    per_example = tf.cast(per_example, tf.float32)
    return tf.reduce_sum(per_example), tf.cast(tf.size(per_example), tf.float32)


def _accumulate(totals: dict, stats: dict) -> None:
    for name, (total, count) in stats.items():
        t, c = totals.get(name, (0.0, 0.0))
        totals[name] = (t + float(total), c + float(count))


def _means(totals: dict) -> dict:
    return {name: float(total) / max(float(count), 1e-12) for name, (total, count) in totals.items()}


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return np.asarray(keras.ops.convert_to_numpy(lr)).item()
