"""Model selection on the task metric: the `ValidationMetrics` hook, early stopping on
`val_f1`, and the checks of `task.monitor` and the NER-only model keys."""
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from pipelines.config import ConfigError, check, register_schemas
from pipelines.data.splits import Splits
from pipelines.hooks import TrainerState
from pipelines.tasks import build_task
from pipelines.tasks.validation import ValidationMetrics, validation_hooks
from pipelines.trainer import EarlyStopping
from tests.conftest import REPO

register_schemas()


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["logger=none", "trainer.verbose=false", *overrides])


def _ner(*overrides):
    tokens = [["john", "lives", "in", "new", "york"], ["acme", "corp", "hired", "mary"]]
    tags = [["B-PER", "O", "O", "B-LOC", "I-LOC"], ["B-ORG", "I-ORG", "O", "B-PER"]]
    task = build_task(_cfg("task=ner", "model=lstm", "model.units=4", "model.embedding_dim=4",
                           "task.max_length=6", *overrides))
    splits = Splits((tokens * 2, tags * 2), (tokens, tags))
    task.adapt(splits)
    return task, splits, task.build_model()


class _Trainer:  # what the hooks read of `pipelines.trainer.Trainer`
    def __init__(self, model):
        self.model, self.state, self.stop_training = model, TrainerState(), False


def _predict_everywhere(task, model, tag):
    """The head's weights that make every word `tag` (zero kernel, one large bias)."""
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    bias[:] = 0.0
    bias[task.tag_names.index(tag)] = 10.0
    head.set_weights([np.zeros_like(kernel), bias])


def test_the_hook_adds_the_task_metrics_to_the_epoch_logs():
    task, splits, model = _ner()
    [hook] = validation_hooks(task, model, splits)  # task.monitor=val_f1: needed every epoch
    assert isinstance(hook, ValidationMetrics) and hook.every == 1
    _predict_everywhere(task, model, "B-PER")
    logs = {"val_accuracy": 0.2}
    hook.on_epoch_end(_Trainer(model), 0, logs)
    # 9 one-word B-PER entities predicted, 2 of the 4 true entities among them (john, mary)
    assert logs["val_precision"] == pytest.approx(2 / 9) and logs["val_recall"] == pytest.approx(2 / 4)
    assert logs["val_f1"] == pytest.approx(2 * (2 / 9) * (2 / 4) / (2 / 9 + 2 / 4))
    assert logs["val_accuracy"] == 0.2  # the monitoring statistics stay


def test_early_stopping_restores_the_best_f1_not_the_best_accuracy():
    task, splits, model = _ner()
    [metrics] = validation_hooks(task, model, splits)
    early = EarlyStopping("val_f1", patience=5, mode=task.monitor_mode)
    assert task.monitor_mode == "max"
    trainer = _Trainer(model)
    x, y = next(iter(task.dataset(splits.validation, training=False, batch_size=2)))
    accuracies = []
    for epoch, tag in enumerate(["O", "B-PER", "O"]):  # all-O: the best accuracy, F1 0
        _predict_everywhere(task, model, tag)
        total, count = task.stats(y, model(x))["accuracy"]
        logs = {"val_accuracy": float(total / count)}
        metrics.on_epoch_end(trainer, epoch, logs)
        early.on_epoch_end(trainer, epoch, logs)
        accuracies.append(logs["val_accuracy"])
    assert accuracies[0] > accuracies[1]  # accuracy would keep epoch 1 (all O)
    early.on_train_end(trainer, {})
    assert trainer.state.best_epoch == 1
    assert set(sum(task.predict_tags(model, splits.validation[0]), [])) == {"B-PER"}


def test_a_monitor_the_run_never_produces_is_refused_at_start():
    task, splits, model = _ner("task.monitor=val_bleu")
    with pytest.raises(ValueError, match=r"task.monitor=val_bleu is not produced by task=ner; "
                                         r"the names it can monitor: train_loss, .*val_accuracy, "
                                         r"val_f1, val_precision, val_recall"):
        validation_hooks(task, model, splits)
    task, splits, model = _ner("trainer.eval_every=2")
    with pytest.raises(ValueError, match=r"task.monitor=val_f1 .* must be computed every epoch"):
        validation_hooks(task, model, splits)
    task, splits, model = _ner("task.monitor=val_accuracy")
    assert validation_hooks(task, model, splits) == []  # nothing to compute
    task, splits, model = _ner("task.monitor=val_accuracy", "trainer.eval_every=3")
    assert validation_hooks(task, model, splits)[0].every == 3  # logged, not monitored


def test_config_refuses_what_cannot_be_monitored_or_used():
    with pytest.raises(ConfigError, match="task.monitor must name an epoch log.*received task.monitor=f1"):
        check(_cfg("task=ner", "model=lstm", "task.monitor=f1"))
    with pytest.raises(ConfigError, match="trainer.eval_every must be >= 0"):
        check(_cfg("task=ner", "model=lstm", "trainer.eval_every=-1"))
    # the NER-only model keys are refused elsewhere
    with pytest.raises(ConfigError, match="model.crf=True has no effect with task=sentiment model=gru"):
        check(_cfg("task=sentiment", "model=gru", "model.crf=true"))
    with pytest.raises(ConfigError, match="model.char_features=cnn has no effect with task=translation"):
        check(_cfg("task=translation", "model=transformer", "model.char_features=cnn"))
    check(_cfg("task=ner", "model=transformer", "model.char_features=lstm", "model.crf=true"))


@pytest.mark.parametrize("override,message", [
    ("model.char_features=yes", "char_features"),
    ("model.char_dim=wide", "char_dim"),
    ("model.crf=maybe", "crf"),
])
def test_a_char_feature_setting_of_the_wrong_type_fails_to_compose(override, message):
    with pytest.raises(ConfigCompositionException) as error:
        _cfg("task=ner", "model=lstm", override)
    assert message in str(error.value.__cause__ or error.value)
