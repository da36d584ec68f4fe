"""The trainer that owns its step: learning, replica parity, early stopping, checkpoints."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines.checkpoints import CheckpointHook
from pipelines.trainer import EarlyStopping, PartialEpoch, StepProfiler, Trainer, TrainerState


def _loss(y, y_pred):
    return keras.losses.sparse_categorical_crossentropy(y, y_pred, from_logits=True)


def _stats(y, y_pred):
    correct = tf.cast(tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32), y), tf.float32)
    return {"accuracy": (tf.reduce_sum(correct), tf.cast(tf.size(correct), tf.float32))}


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    return x, y


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(2)])


def _trainer(strategy, batch=32, hooks=(), lr=0.05, seed=0):
    with strategy.scope():
        model = _model(seed)
        optimizer = keras.optimizers.SGD(lr)
        optimizer.build(model.trainable_variables)
    return Trainer(model, optimizer, _loss, _stats, strategy, batch, hooks=hooks, verbose=False)


def _datasets(batch=32):
    x, y = _data()
    train = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch, drop_remainder=True)
    val = tf.data.Dataset.from_tensor_slices(_data(64, seed=1)).batch(batch)
    return train, val


def test_trainer_learns_and_reports_history():
    trainer = _trainer(tf.distribute.get_strategy())
    train, val = _datasets()
    history = trainer.fit(train, val, epochs=5, steps_per_epoch=8)
    assert len(history) == 5 and trainer.state.epoch == 5
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.85
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history[0])


def test_mirrored_on_two_cpus_matches_one_device():
    """Same global batch, same weights: the loss after a few steps agrees to 1e-4."""
    train, _ = _datasets()
    single = _trainer(tf.distribute.get_strategy())
    mirrored = _trainer(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    assert mirrored.strategy.num_replicas_in_sync == 2
    a = single.fit(train, None, epochs=3, steps_per_epoch=4)
    b = mirrored.fit(train, None, epochs=3, steps_per_epoch=4)
    for left, right in zip(a, b):
        np.testing.assert_allclose(left["train_loss"], right["train_loss"], atol=1e-4)
    for w1, w2 in zip(single.model.get_weights(), mirrored.model.get_weights()):
        np.testing.assert_allclose(w1, w2, atol=1e-4)


def test_jit_compiled_step_matches_eager_graph():
    train, _ = _datasets()
    plain = _trainer(tf.distribute.get_strategy())
    jitted = _trainer(tf.distribute.get_strategy())
    jitted.jit_compile = True
    jitted._train_step = jitted._make_train_step()
    a = plain.fit(train, None, epochs=2, steps_per_epoch=4)
    b = jitted.fit(train, None, epochs=2, steps_per_epoch=4)
    np.testing.assert_allclose(a[-1]["train_loss"], b[-1]["train_loss"], atol=1e-4)


def test_early_stopping_stops_and_restores_best_weights():
    early = EarlyStopping("val_accuracy", patience=2, mode="max")
    trainer = _trainer(tf.distribute.get_strategy(), hooks=[early])
    best = None
    for epoch, value in enumerate([0.5, 0.7, 0.6, 0.65]):
        trainer.model.layers[0].kernel.assign(np.full((8, 16), epoch, "float32"))
        early.on_epoch_end(trainer, epoch, {"val_accuracy": value})
        if value == 0.7:
            best = trainer.model.get_weights()
    assert trainer.stop_training and trainer.state.best_epoch == 1
    early.on_train_end(trainer, {})
    for w1, w2 in zip(trainer.model.get_weights(), best):
        np.testing.assert_array_equal(w1, w2)


def test_early_stopping_names_missing_monitor():
    trainer = _trainer(tf.distribute.get_strategy())
    with pytest.raises(KeyError, match="monitors 'val_f1'.*available: \\['val_loss'\\]"):
        EarlyStopping("val_f1", 2).on_epoch_end(trainer, 0, {"val_loss": 1.0})


def test_checkpoint_resumes_weights_optimizer_and_state(tmp_path):
    train, val = _datasets()
    first = _trainer(tf.distribute.get_strategy(), lr=0.1)
    first.hooks.append(CheckpointHook(tmp_path, first.model, first.optimizer))
    first.fit(train, val, epochs=2, steps_per_epoch=4)
    second = _trainer(tf.distribute.get_strategy(), lr=0.1, seed=1)
    hook = CheckpointHook(tmp_path, second.model, second.optimizer)
    assert hook.restore(second)
    assert second.state.epoch == 2 and len(second.state.history) == 2
    assert int(second.optimizer.iterations.numpy()) == 8
    for w1, w2 in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(w1, w2)
    assert json.loads((tmp_path / "trainer_state.json").read_text())["epoch"] == 2


def test_nan_loss_is_a_clear_error():
    trainer = _trainer(tf.distribute.get_strategy())
    trainer.loss_fn = lambda y, y_pred: _loss(y, y_pred) * float("nan")  # an injected NaN
    trainer._train_step = trainer._make_train_step()
    train, _ = _datasets()
    with pytest.raises(FloatingPointError, match=(
            r"training loss became nan in epoch 1, step 1; lower trainer.learning_rate, set "
            r"trainer.clip_norm or raise trainer.max_nan_recoveries \(now 0\)")):
        trainer.fit(train, None, epochs=1, steps_per_epoch=2)


def test_resumed_run_still_ends_on_the_best_epochs_weights(tmp_path):
    train, val = _datasets()

    def trainer_with_hooks(seed):
        trainer = _trainer(tf.distribute.get_strategy(), lr=0.1, seed=seed)
        checkpoints = CheckpointHook(tmp_path, trainer.model, trainer.optimizer)
        # mode="min" on accuracy makes an early epoch the "best", unlike the last one.
        early = EarlyStopping("val_accuracy", None, mode="min", restore_saved=checkpoints.restore_best)
        trainer.hooks += [early, checkpoints]
        return trainer, checkpoints

    first, _ = trainer_with_hooks(0)
    first.fit(train, val, epochs=3, steps_per_epoch=4)
    assert first.state.best_epoch < 2
    second, checkpoints = trainer_with_hooks(1)
    assert checkpoints.restore(second)  # the last epoch's weights...
    second.fit(train, val, epochs=3, steps_per_epoch=4)  # ...nothing left to train
    for w1, w2 in zip(first.model.get_weights(), second.model.get_weights()):
        np.testing.assert_array_equal(w1, w2)  # ...and both end on the best epoch's


def test_trainer_state_round_trips_through_json_and_refuses_junk():
    state = TrainerState(epoch=1, step=6, history=[{"train_loss": 0.5}], best=0.7, best_epoch=0,
                         partial=PartialEpoch(2, {"loss": (1.5, 64.0)}))
    data = json.loads(json.dumps(state.to_json()))
    assert data["epoch"] == 1 and data["step"] == 6 and data["partial"]["steps"] == 2
    assert TrainerState.from_json(data) == state
    assert "partial" not in TrainerState().to_json()  # unset fields are left out
    assert TrainerState.from_json({"epoch": 2, "history": []}) == TrainerState(epoch=2)
    with pytest.raises(ValueError, match="'epoch' has the wrong type; received '3'"):
        TrainerState.from_json({"epoch": "3"})
    with pytest.raises(ValueError, match=r"unknown trainer state keys \['epochs'\]"):
        TrainerState.from_json({"epochs": 3})


def test_make_optimizer_scales_its_schedule_through_lr_scale():
    from omegaconf import OmegaConf

    from pipelines.optimizers import make_optimizer

    tcfg = OmegaConf.create({"learning_rate": 0.1, "lr_schedule": "cosine", "warmup_steps": 0,
                             "clip_norm": None, "optimizer": "adam", "weight_decay": 0.0,
                             "precision": "float32"})
    scale = tf.Variable(1.0, trainable=False)
    optimizer = make_optimizer(tcfg, total_steps=10, lr_scale=scale)
    before = float(optimizer.learning_rate)
    scale.assign(0.5)
    assert float(optimizer.learning_rate) == pytest.approx(before / 2) and before == pytest.approx(0.1)
    # A schedule without lr_scale cannot be halved: NaN recovery refuses it up front.
    with pytest.raises(ValueError, match="max_nan_recoveries needs a learning rate it can halve"):
        Trainer(_model(), make_optimizer(tcfg, total_steps=10), _loss, _stats,
                tf.distribute.get_strategy(), 32, max_nan_recoveries=1)


# ----------------------------------------------------------------------------- profile_steps
def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from pipelines.config import register_schemas
    from tests.conftest import REPO

    register_schemas()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=sentiment", "model=lstm", "debug=smoke",
                                            "logger=none", *overrides])


def test_profile_steps_leave_a_tensorboard_profile_in_the_run_directory(tmp_path):
    from pipelines.run import execute

    cfg = _compose("export.enabled=false", "trainer.steps_per_epoch=3",
                   "trainer.profile_steps=[2,3]")
    execute(cfg, tmp_path)
    profiles = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(profiles) == 1 and profiles[0].stat().st_size > 0, profiles


def test_the_profiler_stops_when_training_ends_inside_the_range(tmp_path):
    trainer = _trainer(tf.distribute.get_strategy())
    trainer.profiler = StepProfiler((3, 10), tmp_path)
    train, _ = _datasets()
    trainer.fit(train, None, epochs=1, steps_per_epoch=4)  # steps 3-4 of 3-10
    assert not trainer.profiler.running
    assert list(tmp_path.rglob("*.xplane.pb"))


@pytest.mark.parametrize("steps,message", [
    ("[3,2]", "two ints with 1 <= a <= b"),
    ("[0,1]", "two ints with 1 <= a <= b"),
    ("[1,2,3]", "two ints with 1 <= a <= b"),
    ("[2,5]", r"ends after the first epoch \(3 steps, trainer.steps_per_epoch\); pick b <= 3"),
])
def test_profile_steps_are_checked_before_tensorflow_runs(steps, message):
    from pipelines.config import ConfigError, check

    with pytest.raises(ConfigError, match=message):
        check(_compose("trainer.steps_per_epoch=3", f"trainer.profile_steps={steps}"))
    check(_compose("trainer.steps_per_epoch=3", "trainer.profile_steps=[1,3]"))  # fine
