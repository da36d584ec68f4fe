"""A training loop that owns its step, after TF Model Garden's Orbit.

Keras 3 `fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585) and has
similar reports under TPUStrategy, so the step here is a `tf.function` that calls
`strategy.run` on a distributed dataset: the same code path for one CPU, N GPUs, many
workers and a TPU. What users like about `fit` stays: a progress bar with loss and metrics,
per-epoch validation, early stopping, learning-rate schedules, gradient clipping, logs.

Everything else (MLflow, checkpoints, pictures) plugs in as a `Hook`; the loop does not know
about them. The loop does own three kinds of fault tolerance: save points every
`checkpoint_every_steps` steps (hooks save there; `state` then says where in the data stream and
in the epoch the run is), recovery from a non-finite loss (`max_nan_recoveries`), and a clean
stop on SIGTERM/SIGINT: the current step finishes, a save point is written, hooks hear
`on_interrupt`, and `fit` raises `TrainingInterrupted`, whose exit status is 128 + the signal
number (143 for SIGTERM, 130 for SIGINT). A second signal ends the process at once.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from typing import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from pipelines.hooks import Hook, PartialEpoch, TrainerState

__all__ = ["EarlyStopping", "Hook", "PartialEpoch", "StepProfiler", "Trainer", "TrainerState",
           "TrainingInterrupted"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_STOP_VOTE = "__stop__"  # rides in the step's statistics: every worker learns of a signal

# loss_fn(y_true, y_pred) -> per-example loss (B,); stats_fn(y_true, y_pred) ->
# {name: (total, count)} summed over the batch, for monitoring only.
LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
StatsFn = Callable[[tf.Tensor, tf.Tensor], dict]


class TrainingInterrupted(SystemExit):
    """`fit` stopped on a signal after writing a save point; re-running the same command
    resumes there. As a `SystemExit` it ends the process with `code` = 128 + the signal number
    (143 for SIGTERM, 130 for SIGINT), not with a traceback."""

    def __init__(self, signal_name: str, code: int, where: str):
        super().__init__(code)
        self.signal_name, self.where = signal_name, where

    def __str__(self) -> str:
        return f"training stopped by {self.signal_name} {self.where} (exit status {self.code})"


class EarlyStopping(Hook):
    """Stops when `monitor` has not improved for `patience` epochs; restores the best weights.

    `mode` is "max" for metrics such as accuracy and "min" for losses. The state lives in
    `trainer.state` so that a resumed run keeps counting where it stopped.
    """

    def __init__(self, monitor: str, patience: int | None, mode: str = "max",
                 restore_saved: Callable[[int], bool] | None = None):
        self.monitor, self.patience, self.mode = monitor, patience, mode
        self.best_weights = None
        # restore_saved(best_epoch) loads the best weights that an earlier process saved.
        self.restore_saved = restore_saved

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
        if self._better(value, state.best):
            state.best, state.best_epoch, state.wait = float(value), epoch, 0
            self.best_weights = trainer.model.get_weights()
        else:
            state.wait += 1
            if self.patience is not None and state.wait >= self.patience:
                log.info("early stopping: %s did not improve for %d epochs (best %.4f at epoch %d)",
                         self.monitor, self.patience, state.best, state.best_epoch + 1)
                trainer.stop_training = True

    def on_train_end(self, trainer, logs):
        state = trainer.state
        if self.best_weights is not None:
            trainer.model.set_weights(self.best_weights)
        elif not (self.restore_saved and state.best_epoch is not None
                  and self.restore_saved(state.best_epoch)):
            return
        log.info("restored the weights of epoch %d (%s=%.4f)",
                 state.best_epoch + 1, self.monitor, state.best)


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
        lr_scale: the variable that scales the optimizer's learning rate
            (`pipelines.optimizers.ScaledSchedule`, as `make_optimizer(..., lr_scale=)` builds
            it); NaN recovery halves it. Without it, recovery halves a constant rate through
            the optimizer's `learning_rate` setter, and a schedule cannot be halved.
        handle_signals: stop cleanly on SIGTERM/SIGINT during `fit` (main thread only).
        profile_steps: `(a, b)`: a TensorBoard profile of training steps a..b (1-based, the
            run's global count, as Keras's `TensorBoard(profile_batch=(a, b))` counts batches)
            written to `profile_dir` (`<profile_dir>/plugins/profile/<time>/*.xplane.pb`);
            None = off.
        profile_dir: where the profile goes; needed with `profile_steps`.
    """

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 loss_fn: LossFn, stats_fn: StatsFn, strategy: tf.distribute.Strategy,
                 global_batch_size: int, jit_compile: bool = False,
                 hooks: Iterable[Hook] = (), verbose: bool = True,
                 checkpoint_every_steps: int | None = None, max_nan_recoveries: int = 0,
                 lr_scale: tf.Variable | None = None, handle_signals: bool = True,
                 profile_steps: tuple[int, int] | None = None, profile_dir: str | None = None):
        if checkpoint_every_steps is not None and checkpoint_every_steps < 1:
            raise ValueError("trainer.checkpoint_every_steps must be >= 1 or null; received "
                             f"{checkpoint_every_steps}")
        if max_nan_recoveries < 0:
            raise ValueError("trainer.max_nan_recoveries must be >= 0; received "
                             f"{max_nan_recoveries}")
        if max_nan_recoveries and lr_scale is None and not _constant_rate(optimizer):
            raise ValueError(
                "trainer.max_nan_recoveries needs a learning rate it can halve: a constant "
                "rate, or a schedule wrapped in pipelines.optimizers.ScaledSchedule and its "
                "variable passed as lr_scale (make_optimizer(..., lr_scale=) builds one); "
                f"received max_nan_recoveries={max_nan_recoveries} with a schedule")
        self.model, self.optimizer = model, optimizer
        self.loss_fn, self.stats_fn = loss_fn, stats_fn
        self.strategy, self.global_batch_size = strategy, global_batch_size
        self.jit_compile, self.hooks, self.verbose = jit_compile, list(hooks), verbose
        self.checkpoint_every_steps = checkpoint_every_steps
        self.max_nan_recoveries = max_nan_recoveries
        self.lr_scale, self.handle_signals = lr_scale, handle_signals
        self.stop_training = False
        self.state = TrainerState()  # saved with checkpoints, restored on resume
        self.stop_signal: str | None = None  # the signal that asked this process to stop
        self._last_good: list | None = None  # host copies of the last finite save point
        self.profiler = StepProfiler(profile_steps, profile_dir) if profile_steps else None
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()

    # ------------------------------------------------------------------ steps
    def rebuild_steps(self) -> None:
        """Traces the steps anew: after a change of which variables train (`trainable`,
        e.g. `trainer.freeze_epochs`); a traced step keeps the variable list it saw."""
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()

    def _make_train_step(self):
        model, optimizer = self.model, self.optimizer
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def replica_step(x, y, stop_vote):
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
            # Summed across replicas like the statistics: > 0 when any worker had a signal
            # (what tf.distribute's PreemptionCheckpointHandler agrees on), at no extra sync.
            stats[_STOP_VOTE] = (tf.identity(stop_vote), tf.ones_like(stop_vote))
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
        def float_step(x, y, *extra):
            stats = replica_step(x, y, *extra)
            return {name: tuple(tf.cast(v, tf.float32) for v in pair) for name, pair in stats.items()}

        replica_fn = tf.function(float_step, jit_compile=True) if jit_compile else float_step

        @tf.function(autograph=False)
        def step(batch, *extra):
            x, y = batch
            per_replica = strategy.run(replica_fn, args=(x, y, *extra))
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
        the `state.step` batches it already trained on, so it sees the same stream as an
        uninterrupted one. Skipping replays a seeded, deterministic stream rather than saving
        the iterator: a checkpointed tf.data iterator would hold the whole shuffle buffer
        (the training split, images included), cannot be saved from every distributed
        iterator, and breaks when the input pipeline changes; the replay costs only the input
        pipeline's time for the skipped batches. Under multi-worker sharding every worker
        skips the same global batches before its shard, so the position holds there too.

        Raises:
            TrainingInterrupted: a SIGTERM/SIGINT arrived; the save point is written.
        """
        with self._signals_stop_training():
            try:
                return self._fit(train_ds, val_ds, epochs, steps_per_epoch, eval_steps)
            finally:
                if self.profiler is not None:
                    self.profiler.stop()  # training ended (or failed) inside the range

    def _fit(self, train_ds, val_ds, epochs, steps_per_epoch, eval_steps):
        state = self.state
        for hook in self.hooks:
            hook.on_train_begin(self)
        if self.lr_scale is not None:
            self.lr_scale.assign(state.lr_scale)
        start, partial = state.epoch, state.partial or PartialEpoch()
        if start >= epochs:
            log.info("training already finished (%d of %d epochs)", start, epochs)
        elif start or partial.steps:
            log.info("resuming at epoch %d of %d%s", start + 1, epochs,
                     f" (step {partial.steps} of {steps_per_epoch})" if partial.steps else "")
        if start < epochs:
            self._check_workers_agree()
            if state.step:
                train_ds = train_ds.skip(state.step)
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
            totals = {k: tuple(v) for k, v in partial.totals.items()}
            stop = False
            for step in range(partial.steps, steps_per_epoch):
                with self._profiled(state.step + 1):
                    stats = self._train_step(next(iterator), self._stop_vote())
                    stop = float(stats.pop(_STOP_VOTE)[0]) > 0  # the same on every worker
                state.step += 1
                # False after a recovery: a NaN in the sums would poison the epoch's means.
                if self._finite(stats, f"in epoch {epoch + 1}, step {step + 1}"):
                    _accumulate(totals, stats)
                    bar.update(step + 1, values=[(k, v) for k, v in _means(stats).items()])
                every = self.checkpoint_every_steps
                if step + 1 < steps_per_epoch and (stop or every and state.step % every == 0):
                    self._save_point(PartialEpoch(step + 1, totals))
                if stop and step + 1 < steps_per_epoch:
                    self._interrupt(f"in epoch {epoch + 1} at step {step + 1} of "
                                    f"{steps_per_epoch} ({state.step} steps in all)")
            partial = PartialEpoch()
            state.partial = None
            logs = {f"train_{k}": v for k, v in _means(totals).items()}
            if val_ds is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(val_ds, eval_steps).items()})
            logs["epoch_seconds"] = time.time() - began
            logs["learning_rate"] = float(_current_lr(self.optimizer))
            state.history.append(logs)
            log.info("epoch %d/%d %s", epoch + 1, epochs,
                     " ".join(f"{k}={v:.4f}" for k, v in logs.items()))
            state.epoch = epoch + 1
            self._remember_good()
            for hook in self.hooks:
                hook.on_epoch_end(self, epoch, logs)  # the epoch's save point
            if stop:
                self._interrupt(f"after epoch {epoch + 1} ({state.step} steps in all)")
        # A signal after the last step's vote (during the last validation): the epoch's save
        # point holds the finished training; the re-run evaluates and exports.
        if start < epochs and self._mean_over_workers(float(self.stop_signal is not None))[0] > 0:
            self._interrupt(f"after the last epoch ({state.step} steps in all)")
        final = state.history[-1] if state.history else {}
        for hook in self.hooks:
            hook.on_train_end(self, final)
        return state.history

    def _profiled(self, step: int):
        """The context of training step `step` (1-based): inside `trainer.profile_steps`, a
        profiler trace event; otherwise nothing."""
        if self.profiler is None:
            return contextlib.nullcontext()
        return self.profiler.step(step)

    def _distribute(self, dataset: tf.data.Dataset):
        """Splits the global batches across replicas and workers. A dataset in memory has no
        files to shard, so workers split by example (DATA); AUTO would reach the same policy
        only after failing on files, with a warning per run. A dataset that chose its policy
        keeps it (a streaming training split shards itself and turns the rewrite OFF,
        `pipelines.data.streaming`)."""
        policy = tf.data.experimental.AutoShardPolicy
        if dataset.options().experimental_distribute.auto_shard_policy == policy.AUTO:
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = policy.DATA
            dataset = dataset.with_options(options)
        return self.strategy.experimental_distribute_dataset(dataset)

    def _save_point(self, partial: PartialEpoch) -> None:
        self.state.partial = partial
        self._remember_good()
        for hook in self.hooks:
            hook.on_save_point(self)

    def _check_workers_agree(self) -> None:
        """Under multi-worker every worker must start from the same step (the chief writes
        the save points, every worker restores them): a worker that resumed elsewhere would
        train other weights in lockstep, silently. One all-reduce of step and step squared:
        they match their means on every worker only when all steps are equal."""
        step = float(self.state.step)
        mean, mean_square = self._mean_over_workers(step, step * step)
        if mean != step or mean_square != step * step:
            raise RuntimeError(
                f"the workers start from different steps (this one from step {step:.0f}, their "
                f"mean is {mean:g}): give every worker the same hydra.run.dir on a shared "
                "folder, so that all restore the chief's checkpoints/")

    def _mean_over_workers(self, *values: float) -> list[float]:
        """Each value's mean over the workers (one all-reduce); the values themselves on
        one worker."""
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return list(values)

        @tf.function(autograph=False)
        def means():
            local = self.strategy.run(
                lambda: [tf.identity(tf.constant(v, tf.float64)) for v in values])
            return [self.strategy.reduce("MEAN", v, axis=None) for v in local]

        return [float(v) for v in means()]

    # ------------------------------------------------------------------ signals
    def request_stop(self, signal_name: str = "SIGTERM") -> None:
        """Asks training to stop cleanly after the next step (what a signal does)."""
        if self.stop_signal is None:
            self.stop_signal = signal_name
            log.warning("%s received: training stops after the current step with a save point "
                        "(a second signal exits at once)", signal_name)

    def _stop_vote(self) -> tf.Tensor:
        return tf.constant(0.0 if self.stop_signal is None else 1.0)

    @contextlib.contextmanager
    def _signals_stop_training(self):
        """SIGTERM/SIGINT call `request_stop` during `fit`; the handler hands both signals back
        to the system's default, so that a second one ends the process at once (also while
        the save point is written: writes are atomic). Without a signal the previous handlers
        return after `fit`."""
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            for number in STOP_SIGNALS:
                signal.signal(number, signal.SIG_DFL)
            self.request_stop(signal.Signals(signum).name)

        previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
        try:
            yield
        finally:
            if self.stop_signal is None:
                for number, old in previous.items():
                    signal.signal(number, old)

    def _interrupt(self, where: str) -> None:
        """Every worker stops here on the same step: hooks hear it, then the process exits
        with 128 + the signal number. A worker that had no signal itself (its peer had) exits
        as after a SIGTERM."""
        name = self.stop_signal or "SIGTERM"
        code = 128 + int(getattr(signal, name))
        log.warning("stopped by %s %s; the save point is written: re-run the same command to "
                    "resume (exit status %d)", name, where, code)
        for hook in self.hooks:
            hook.on_interrupt(self, name)
        raise TrainingInterrupted(name, code, where)

    # ------------------------------------------------------------------ NaN recovery
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
        state = self.state
        done = state.nan_recoveries
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
        state.nan_recoveries, state.lr_scale = done + 1, state.lr_scale / 2
        if self.lr_scale is None:
            self.optimizer.learning_rate = halved  # a constant: the optimizer's own variable
        else:
            self.lr_scale.assign(state.lr_scale)
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


class StepProfiler:
    """`trainer.profile_steps=[a, b]`: the TensorFlow profiler (`tf.profiler.experimental`, what
    Keras's TensorBoard callback uses for `profile_batch`) runs from the start of training step
    a to the end of step b, each step a `Trace("train", step_num=...)` event, so that
    TensorBoard's Profile tab shows them as steps. The profile lands in `directory`.

    Args:
        steps: `(a, b)`, 1 <= a <= b, the 1-based training steps to profile.
        directory: the log directory (`<run dir>/profile`).
    """

    def __init__(self, steps, directory):
        first, last = (int(s) for s in steps)
        if not 1 <= first <= last or directory is None:
            raise ValueError(f"profile_steps must be (a, b) with 1 <= a <= b and a profile_dir; "
                             f"received profile_steps={tuple(steps)}, profile_dir={directory}")
        self.first, self.last, self.directory = first, last, str(directory)
        self.running = False

    @contextlib.contextmanager
    def step(self, step: int):
        if step == self.first:
            tf.profiler.experimental.start(self.directory)
            self.running = True
            log.info("profiling training steps %d-%d into %s", self.first, self.last,
                     self.directory)
        if not self.running:
            yield
            return
        with tf.profiler.experimental.Trace("train", step_num=step, _r=1):
            yield
        if step >= self.last:
            self.stop()

    def stop(self) -> None:
        """Writes the profile (if one is running)."""
        if self.running:
            tf.profiler.experimental.stop()
            self.running = False


def _sum_and_count(per_example: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    per_example = tf.cast(per_example, tf.float32)
    return tf.reduce_sum(per_example), tf.cast(tf.size(per_example), tf.float32)


def _accumulate(totals: dict, stats: dict) -> None:
    for name, (total, count) in stats.items():
        t, c = totals.get(name, (0.0, 0.0))
        totals[name] = (t + float(total), c + float(count))


def _means(totals: dict) -> dict:
    return {name: float(total) / max(float(count), 1e-12) for name, (total, count) in totals.items()}


def _constant_rate(optimizer) -> bool:
    """Whether the learning rate is a number (settable), not a schedule; asked through the
    optimizer's public config (a schedule serializes to a dict)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # under loss scaling
    return isinstance(inner.get_config()["learning_rate"], (int, float))


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return np.asarray(keras.ops.convert_to_numpy(lr)).item()
