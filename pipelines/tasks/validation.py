"""Model selection on the task's real metric: `ValidationMetrics` computes the task metrics
(`Task.validation_metrics`: seqeval F1, BLEU, IoU, ...) on the validation split at the end
of an epoch and adds them to the epoch's logs as `val_<metric>`, so that `task.monitor=val_f1`
drives early stopping, the best checkpoint and the restore at the end of training.

When it runs (`validation_hooks`):
- `trainer.eval_every=N`: every N epochs; 0 turns it off.
- `trainer.eval_every=null` (default): every epoch when `task.monitor` names one of these
  metrics, else every `trainer.eval_bleu_every` epochs (the older spelling, 0 = off).

A `task.monitor` that the run would never produce is refused before the first epoch, with
the names it can monitor.
"""
from __future__ import annotations

import logging
import time

from pipelines.trainer import Hook

log = logging.getLogger(__name__)


class ValidationMetrics(Hook):
    """Every `every` epochs: `task.validation_metrics(model, pair)` on the validation split,
    added to the epoch's logs as `val_<name>` (overwriting a monitoring statistic of the same
    name: the real metric wins)."""

    def __init__(self, task, model, pair, every: int, batch_size: int):
        if every < 1:
            raise ValueError(f"every must be >= 1; received every={every}")
        self.task, self.model, self.pair = task, model, pair
        self.every, self.batch_size = every, batch_size

    def on_epoch_end(self, trainer, epoch, logs):
        if (epoch + 1) % self.every:
            return
        began = time.time()
        metrics = self.task.validation_metrics(self.model, self.pair, self.batch_size)
        logs.update({f"val_{name}": float(value) for name, value in metrics.items()})
        logs["val_metrics_seconds"] = time.time() - began
        log.info("epoch %d validation metrics: %s (%.1f s)", epoch + 1,
                 " ".join(f"val_{k}={v:.4f}" for k, v in metrics.items()),
                 logs["val_metrics_seconds"])


def _statistic_names(task, model, pair) -> list[str]:
    """The names `Trainer` logs from `task.stats` and the loss, from one small batch."""
    x, y = next(iter(task.dataset((pair[0][:2], pair[1][:2]), training=False, batch_size=2)))
    names = ["loss", *task.stats(y, model(x, training=False))]
    return [f"{prefix}_{name}" for prefix in ("train", "val") for name in names]


def _metric_names(task, model, pair, batch_size) -> list[str]:
    """The names `task.validation_metrics` returns: declared by the task, or computed on a
    few validation examples."""
    declared = getattr(task, "validation_metric_names", None)
    if declared is not None:
        return list(declared)
    return list(task.validation_metrics(model, (pair[0][:4], pair[1][:4]), batch_size))


def _needs_metrics(task, model, pair, monitor: str, batch_size: int) -> bool:
    """Whether `monitor` is one of the task metrics (else a statistic the trainer logs);
    raises when it is neither. The model runs on a few examples only when the names are
    not known without it."""
    if monitor in ("train_loss", "val_loss"):
        return False
    declared = getattr(task, "validation_metric_names", None) or ()
    if monitor in [f"val_{name}" for name in declared]:
        return True
    statistics = _statistic_names(task, model, pair)
    if monitor in statistics:
        return False
    metrics = [f"val_{name}" for name in _metric_names(task, model, pair, batch_size)]
    if monitor not in metrics:
        raise ValueError(
            f"task.monitor={monitor} is not produced by task={task.name}; the names it can "
            f"monitor: {', '.join(statistics + metrics)}"
        )
    return True


def validation_hooks(task, model, splits) -> list[Hook]:
    """The `ValidationMetrics` hook this run needs (or none), after checking that
    `task.monitor` is something the run produces."""
    tcfg = task.trainer_cfg
    monitor = str(task.task_cfg.monitor)
    configured = tcfg.get("eval_every")
    batch_size = int(tcfg.batch_size)
    pair = splits.validation
    needed = _needs_metrics(task, model, pair, monitor, batch_size)
    every = configured
    if every is None:
        every = 1 if needed else int(tcfg.get("eval_bleu_every") or 0)
    if needed and every != 1:
        raise ValueError(
            f"task.monitor={monitor} is a validation metric and early stopping reads it "
            f"every epoch, so it must be computed every epoch; received "
            f"trainer.eval_every={configured}, trainer.eval_bleu_every="
            f"{tcfg.get('eval_bleu_every')} (set trainer.eval_every=1 or null)"
        )
    if not every:
        return []
    log.info("validation metrics (val_<metric>) every %d epoch(s); monitor %s", every, monitor)
    return [ValidationMetrics(task, model, pair, every, batch_size)]
