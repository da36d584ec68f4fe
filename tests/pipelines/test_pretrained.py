"""`model.init_from=RUN_DIR` and `trainer.freeze_epochs`: sentiment and NER fine-tune from a
small masked_lm run (weights really copied, the run's vocabulary reused, the MLflow link), and
every mismatch fails before training with the layer, both shapes and the fix."""
import json
import shutil

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import OmegaConf

from pipelines.config import ConfigError, check, register_schemas
from tests.conftest import REPO

register_schemas()
SIZES = ["model.hidden_dim=32", "model.num_heads=2", "model.intermediate_dim=64",
         "model.num_layers=1"]
FAST = ["trainer.verbose=false", "trainer.epochs=2", "trainer.steps_per_epoch=3",
        "trainer.eval_steps=2", "trainer.batch_size=16", "data.limit=128", "logger.log_model=false"]


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["model=transformer", *overrides])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="module")
def pretraining_run(tmp_path_factory, store):
    """A smoke masked_lm run with a word vocabulary (what NER needs; sentiment takes either)."""
    import keras

    from pipelines.run import execute

    run_dir = tmp_path_factory.mktemp("masked_lm")
    cfg = _cfg("task=masked_lm", *SIZES, *FAST, "task.tokenizer=word", "task.lowercase=false",
               "task.max_length=64", "task.vocabulary_size=400", "trainer.epochs=1",
               f"logger.tracking_uri={store}", "logger.experiment_name=pretraining")
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)  # as the CLI writes it
    try:
        execute(cfg, run_dir)
    finally:
        keras.backend.clear_session()
    return run_dir


def _fine_tuning(task, run_dir, *overrides):
    return _cfg(f"task={task}", *SIZES, *FAST, f"model.init_from={run_dir}", *overrides)


def _built(cfg):
    """The fine-tuning task adapted and its model built with the pretraining weights."""
    from pipelines import pretrained
    from pipelines.tasks import build_task

    task = build_task(cfg)
    task.adapt(task.load())
    model = task.build_model()
    return task, model, pretrained.initialize(cfg, model)


@pytest.mark.parametrize("task", ["sentiment", "ner"])
def test_copies_the_encoder_and_takes_the_vocabulary(task, pretraining_run):
    """Every block weight equals the pretraining run's; the token table is the run's plus its
    segment-0 vector (a single sentence is segment 0); the first T position rows."""
    from pipelines.pretrained import open_run

    cfg = _fine_tuning(task, pretraining_run, "task.max_length=32")
    check(cfg)
    fine, model, copied = _built(cfg)
    source = open_run(str(pretraining_run)).encoder()
    assert [layer.name for layer in copied] == ["embedding", "encoder_0"]
    target = copied[1]
    for mine, theirs in zip(target.weights, source.get_layer("encoder_0").weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    embedding, pretrained_embedding = copied[0], source.get_layer("embedding")
    segment0 = np.asarray(pretrained_embedding.segment_embedding.embeddings)[0]
    np.testing.assert_allclose(np.asarray(embedding.token_embedding.embeddings),
                               np.asarray(pretrained_embedding.token_embedding.embeddings) + segment0)
    np.testing.assert_array_equal(np.asarray(embedding.position_embedding.embeddings),
                                  np.asarray(pretrained_embedding.position_embedding.embeddings)[:32])
    manifest = json.loads((pretraining_run / "pretraining.json").read_text())
    assert fine.vocabulary_size == len(manifest["vocabulary"])
    words = manifest["vocabulary"][5:8]
    if task == "ner":
        ids = fine.lookup(np.array([words + ["", "never-seen-word"]])).numpy()[0]
        assert ids.tolist() == [5, 6, 7, 0, 1]
    else:
        ids = fine.vectorizer(np.array([" ".join(words)])).numpy()[0]
        assert ids[:5].tolist() == [2, 5, 6, 7, 3]  # [CLS] words [SEP]


def test_sentiment_fine_tunes_with_a_frozen_first_epoch_and_links_the_mlflow_run(
        pretraining_run, store, tmp_path):
    import keras

    from pipelines.run import execute

    cfg = _fine_tuning("sentiment", pretraining_run, "trainer.freeze_epochs=1",
                       f"logger.tracking_uri={store}", "logger.experiment_name=fine_tuning")
    check(cfg)
    try:
        result = execute(cfg, tmp_path)
    finally:
        keras.backend.clear_session()
    assert set(result.metrics) == {"accuracy", "macro_f1"}
    assert (tmp_path / "saved_model" / "saved_model.pb").is_file()
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("fine_tuning").experiment_id])
    pretraining_id = (pretraining_run / "mlflow_run_id").read_text().strip()
    assert run.data.tags["pretrained_run_id"] == pretraining_id
    assert client.get_run(pretraining_id).data.tags["task"] == "masked_lm"


def test_ner_fine_tunes_from_the_run(pretraining_run, tmp_path):
    import keras

    from pipelines.run import execute

    cfg = _fine_tuning("ner", pretraining_run, "logger=none", "task.max_length=32")
    check(cfg)
    try:
        result = execute(cfg, tmp_path)
    finally:
        keras.backend.clear_session()
    assert set(result.metrics) == {"f1", "precision", "recall"}


def test_freeze_trains_only_the_head_then_everything(pretraining_run):
    from pipelines.pretrained import FreezeHook

    cfg = _fine_tuning("sentiment", pretraining_run, "trainer.freeze_epochs=1")
    _, model, copied = _built(cfg)
    every = len(model.trainable_variables)

    class Trainer:  # what the hook uses of pipelines.trainer.Trainer
        rebuilt = 0

        class state:
            epoch = 0

        def rebuild_steps(self):
            self.rebuilt += 1

    trainer, hook = Trainer(), FreezeHook(copied, epochs=1)
    hook.on_train_begin(trainer)
    assert [v.path for v in model.trainable_variables] == [v.path for v in
                                                          model.get_layer("head").trainable_variables]
    hook.on_epoch_end(trainer, 0, {})
    assert len(model.trainable_variables) == every and trainer.rebuilt == 2


# ----------------------------------------------------------------------------- errors
def test_a_missing_or_foreign_directory_is_refused_before_training(pretraining_run, tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        check(_fine_tuning("sentiment", tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"\.hydra/config\.yaml is missing"):
        check(_fine_tuning("sentiment", tmp_path))
    other = tmp_path / "sentiment_run"
    (other / ".hydra").mkdir(parents=True)
    OmegaConf.save(_cfg("task=sentiment"), other / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="is a run of task=sentiment, not of a pretraining task"):
        check(_fine_tuning("sentiment", other))


def test_a_run_without_checkpoint_is_refused(pretraining_run, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(pretraining_run, bare, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(ConfigError, match="no checkpoint in .*checkpoints.*never finished an epoch"):
        check(_fine_tuning("sentiment", bare))


@pytest.mark.parametrize("override, message", [
    ("model.hidden_dim=64", r"model\.hidden_dim=64 differs .*layer 'embedding' \(token embedding\) "
                            r"is \(\d+, 32\) there and would be \(\d+, 64\) here\. Fix: model\.hidden_dim=32"),
    ("model.intermediate_dim=128", r"layer 'encoder_0' \(feed-forward kernel\) is \(32, 64\) there "
                                   r"and would be \(32, 128\) here"),
    ("model.num_layers=2", r"model\.num_layers=2 differs .*Fix: model\.num_layers=1"),
    ("task.max_length=128", r"task\.max_length=128 exceeds .*\(64, 32\) there and would be "
                            r"\(128, 32\) here\. Fix: task\.max_length=64"),
])
def test_other_sizes_name_the_layer_both_shapes_and_the_fix(pretraining_run, override, message):
    with pytest.raises(ConfigError, match=message):
        check(_fine_tuning("sentiment", pretraining_run, override))


def test_another_model_family_is_refused(pretraining_run):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["task=sentiment", "model=lstm",
                                           f"model.init_from={pretraining_run}"])
    with pytest.raises(ConfigError, match="pretrained model=transformer; model=lstm .*Use model=transformer"):
        check(cfg)


def test_ner_needs_a_word_vocabulary_with_its_case(pretraining_run, tmp_path):
    with pytest.raises(ConfigError, match=r"set task\.lowercase=False"):
        check(_fine_tuning("ner", pretraining_run, "task.lowercase=true"))
    pieces = tmp_path / "wordpiece_run"
    shutil.copytree(pretraining_run, pieces)
    manifest = json.loads((pieces / "pretraining.json").read_text())
    (pieces / "pretraining.json").write_text(json.dumps({**manifest, "tokenizer": "wordpiece"}))
    with pytest.raises(ConfigError, match="NER tags whole words.*task.tokenizer=word"):
        check(_fine_tuning("ner", pieces))


def test_freeze_needs_init_from_and_other_tasks_are_refused(pretraining_run):
    with pytest.raises(ConfigError, match="trainer.freeze_epochs=1 .* add model.init_from"):
        check(_cfg("task=sentiment", "trainer.freeze_epochs=1"))
    check(_fine_tuning("sentiment", pretraining_run, "trainer.freeze_epochs=2"))  # a linear probe
    with pytest.raises(ConfigError, match="task=translation cannot start from a pretraining run"):
        check(_cfg("task=translation", f"model.init_from={pretraining_run}"))


def test_a_shape_mismatch_at_copy_time_names_the_layer_and_both_shapes(pretraining_run):
    """Past the config check (e.g. a model built by hand), the copy itself refuses."""
    from pipelines import pretrained
    from pipelines.tasks import build_task

    cfg = _fine_tuning("sentiment", pretraining_run)
    task = build_task(_cfg("task=sentiment", *SIZES[1:], "model.hidden_dim=64", *FAST))
    task.adapt(task.load())
    task.vocabulary_size = len(json.loads((pretraining_run / "pretraining.json").read_text())["vocabulary"])
    with pytest.raises(pretrained.InitFromError,
                       match=r"layer 'embedding/token_embedding' is \(\d+, 32\) in the pretraining "
                             r"run and \(\d+, 64\) here"):
        pretrained.initialize(cfg, task.build_model())
