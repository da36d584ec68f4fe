"""The optimizer from `trainer.*`: Adam/AdamW/SGD, the learning-rate schedule, clipping, loss
scaling, and a learning-rate scale that NaN recovery can halve without touching the
optimizer's internals."""
from __future__ import annotations

import keras
import tensorflow as tf
from omegaconf import DictConfig


def _value(option) -> str:
    return str(getattr(option, "value", option))


@keras.saving.register_keras_serializable(package="pipelines")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`base(step) * scale`: a learning rate that can be scaled while training.

    A schedule's rate cannot be set once an optimizer holds it, so the rate is built scalable
    from the start; `pipelines.trainer.Trainer(lr_scale=...)` halves `scale` on a NaN
    recovery.

    Args:
        base: a `LearningRateSchedule` or a constant rate.
        scale: the scalar `tf.Variable` that multiplies it (create it under the strategy's
            scope, as the optimizer).

    Example:
        >>> scale = tf.Variable(1.0, trainable=False)
        >>> optimizer = keras.optimizers.Adam(ScaledSchedule(1e-3, scale))
        >>> scale.assign(0.5)  # the rate is now 5e-4
    """

    def __init__(self, base, scale: tf.Variable):
        self.base, self.scale = base, scale

    def __call__(self, step):
        base = self.base(step) if callable(self.base) else self.base
        return tf.cast(base, self.scale.dtype) * self.scale

    def get_config(self) -> dict:
        base = self.base
        if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            base = keras.saving.serialize_keras_object(base)
        return {"base": base, "scale": float(self.scale.numpy())}

    @classmethod
    def from_config(cls, config: dict) -> "ScaledSchedule":
        base = config["base"]
        if isinstance(base, dict):
            base = keras.saving.deserialize_keras_object(base)
        return cls(base, tf.Variable(config["scale"], trainable=False, name="lr_scale"))


def make_optimizer(tcfg: DictConfig, total_steps: int,
                   lr_scale: tf.Variable | None = None) -> keras.optimizers.Optimizer:
    """Optimizer with the configured schedule and global-norm clipping.

    Args:
        tcfg: the `trainer` config.
        total_steps: the steps of the whole run (the cosine schedules decay over them).
        lr_scale: a scalar variable that multiplies the learning rate (`ScaledSchedule`), for
            the trainer's NaN recovery. Defaults to None: the rate as configured.
    """
    lr = tcfg.learning_rate
    schedule = _value(tcfg.lr_schedule)
    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(total_steps, 1))
    elif schedule == "warmup_cosine":
        warmup = min(tcfg.warmup_steps, max(total_steps - 1, 0))
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(total_steps - warmup, 1), warmup_target=tcfg.learning_rate,
            warmup_steps=warmup,
        )
    if lr_scale is not None:
        lr = ScaledSchedule(lr, lr_scale)
    common = {"learning_rate": lr, "global_clipnorm": tcfg.clip_norm}
    name = _value(tcfg.optimizer)
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(weight_decay=tcfg.weight_decay, **common)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(momentum=0.9, **common)
    else:
        optimizer = keras.optimizers.Adam(**common)
    if _value(tcfg.precision) == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
