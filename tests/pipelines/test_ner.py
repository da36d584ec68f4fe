"""NER in-process: seqeval metrics, padding independence, word features (characters, case,
word dropout), the CRF, learning, fresh-process export."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from seqeval.metrics import f1_score

from pipelines.config import register_schemas
from pipelines.data.files import DataFileError, FilesSource
from pipelines.data.splits import Splits
from pipelines.run import execute
from pipelines.tasks import build_task
from tests.conftest import REPO

register_schemas()

CHARS_CRF = ("model.char_features=cnn", "model.char_dim=4", "model.char_filters=6", "model.crf=true")


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=ner", "logger=none", "trainer.verbose=false",
                                            *overrides])


SMALL = {"lstm": ("model.units=8", "model.embedding_dim=8"),
         "transformer": ("model.hidden_dim=8", "model.intermediate_dim=8", "model.num_heads=2")}


def _toy_task(*overrides, model="lstm"):
    tokens = [["john", "lives", "in", "new", "york"], ["acme", "corp", "hired", "mary"]]
    tags = [["B-PER", "O", "O", "B-LOC", "I-LOC"], ["B-ORG", "I-ORG", "O", "B-PER"]]
    task = build_task(_cfg(f"model={model}", *SMALL[model], "task.max_length=6", *overrides))
    splits = Splits((tokens * 4, tags * 4), (tokens, tags))
    task.adapt(splits)
    return task, splits


@pytest.mark.parametrize("overrides", [(), CHARS_CRF])
def test_targets_mark_padding_and_loss_ignores_it(overrides):
    task, splits = _toy_task(*overrides)
    x, y = next(iter(task.dataset(splits.validation, training=False, batch_size=2)))
    assert x["word_ids"].shape == (2, 6) and y.shape == (2, 6)
    np.testing.assert_array_equal(x["word_ids"].numpy() == 0, y.numpy() == 0)  # pads agree
    model = task.build_model()
    logits = model(x).numpy()
    changed = logits.copy()
    changed[y.numpy() == 0] = 1e3  # anything at padded positions
    np.testing.assert_allclose(task.loss(y, logits).numpy(), task.loss(y, changed).numpy(), atol=1e-5)


@pytest.mark.parametrize("model,overrides", [
    ("lstm", ()), ("lstm", CHARS_CRF + ("task.case_features=true",)),
    ("lstm", ("model.char_features=lstm", "model.char_filters=3")),
    ("transformer", CHARS_CRF + ("task.case_features=true",))])
def test_padding_never_changes_a_prediction(model, overrides):
    task, _ = _toy_task(*overrides, model=model)
    tagger = task.build_model()
    alone = task.predict_tags(tagger, [["mary", "lives"]])
    together = task.predict_tags(tagger, [["mary", "lives"], ["john", "in", "new", "york", "acme", "corp"]])
    assert alone[0] == together[0]
    assert len(task.predict_tags(tagger, [["w"] * 9])[0]) == 9  # longer than max_length: O-filled
    short = tagger(task.features(tf.constant([["mary", "lives"]]))).numpy()
    padded = tagger(task.features(tf.constant([["mary", "lives", "", "", "", ""]]))).numpy()
    np.testing.assert_allclose(short, padded[:, :2], atol=1e-5)  # the scores, not only the tags


def test_word_features_are_computed_from_the_raw_words():
    task, _ = _toy_task("model.char_features=cnn", "task.max_word_length=3",
                        "task.case_features=true", "task.lowercase=true")
    words = tf.constant([["Paris", "paris", "EU", "U2", "McDonald", ",", ""]])
    inputs = task.features(words)
    ids = inputs["word_ids"].numpy()[0]
    assert ids[0] == ids[1] and ids[-1] == 0  # one lower-cased lookup; padding stays 0
    # digit, upper, title, lower, other = 1..5, padding 0; the case the lookup lost is here
    assert inputs["case_ids"].numpy()[0].tolist() == [3, 4, 2, 1, 5, 5, 0]
    chars = inputs["char_ids"].numpy()[0]
    assert chars.shape == (7, 3)  # "McDonald" is cut to its first 3 characters, no error
    assert chars[0].tolist() == [ord("P") + 1, ord("a") + 1, ord("r") + 1]
    assert chars[2].tolist() == [ord("E") + 1, ord("U") + 1, 0] and not chars[6].any()


def test_word_dropout_replaces_real_words_in_training_only():
    task, splits = _toy_task("task.word_dropout=0.5", "task.length_buckets=null")
    many = Splits((splits.train[0] * 8, splits.train[1] * 8), splits.validation)

    def first_batches(training):
        ds = task.dataset(many.train, training=training, batch_size=32)
        return [(x["word_ids"].numpy(), y.numpy()) for x, y in ds.take(2)]

    clean = task._ids(tf.constant(task._pad(many.train[0][:32], ""))).numpy()
    np.testing.assert_array_equal(first_batches(False)[0][0], clean)  # evaluation: never dropped
    train = first_batches(True)
    ids, y = train[0]
    np.testing.assert_array_equal(ids == 0, y == 0)  # padding is never touched
    unknown = np.mean(ids[y > 0] == 1)  # no toy word is [UNK] by itself
    assert 0.35 < unknown < 0.65, unknown  # about word_dropout of the real words
    again = first_batches(True)
    np.testing.assert_array_equal(again[1][0], train[1][0])  # seeded: a replay drops the same


def test_crf_forbids_invalid_iob2_transitions():
    task, splits = _toy_task(*CHARS_CRF)
    model = task.build_model()
    crf = model.get_layer("crf")
    names = task.tag_names
    o, i_loc = names.index("O"), names.index("I-LOC")
    weights = [w.numpy() for w in crf.weights]
    weights[0][o, i_loc] = 50.0  # a huge learned score cannot bring back a forbidden O -> I-LOC
    crf.set_weights(weights)
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    bias[:] = 0.0
    bias[i_loc] = 30.0  # every word prefers I-LOC on its own
    head.set_weights([np.zeros_like(kernel), bias])
    for tags in task.predict_tags(model, splits.validation[0]):
        assert tags[0] != "I-LOC"  # no sentence starts with I-X
        assert all(not (b.startswith("I-") and a == "O") for a, b in zip(tags, tags[1:])), tags


def test_metrics_are_seqevals(monkeypatch):
    task, splits = _toy_task()
    predicted = [["B-PER", "O", "O", "B-LOC", "O"], ["B-ORG", "I-ORG", "O", "O"]]
    monkeypatch.setattr(task, "predict_tags", lambda model, sentences, batch_size=256: predicted)
    metrics = task.evaluate(None, splits.validation, 2)
    assert metrics["f1"] == pytest.approx(f1_score(splits.validation[1], predicted, mode="strict",
                                                   scheme=__import__("seqeval.scheme").scheme.IOB2))
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 4)


def test_unknown_tag_in_validation_is_a_clear_error():
    task = build_task(_cfg("model=lstm"))
    splits = Splits(([["a"]], [["O"]]), ([["b"]], [["B-XYZ"]]))
    with pytest.raises(ValueError, match=r"validation split has tags \['B-XYZ'\] that never occur in train"):
        task.adapt(splits)


@pytest.mark.parametrize("content,message", [
    ("EU B-ORG\nrejects U-ORG\n", r"bad\.conll:2: invalid tag 'U-ORG'"),  # BILOU, not IOB2
    ("EU B-ORG\n\u200b O\ncall O\n", r"bad\.conll:2: the token '\\u200b' is only whitespace"),
])
def test_bad_conll_lines_are_named(tmp_path, content, message):
    (tmp_path / "bad.conll").write_text(content, encoding="utf-8")
    with pytest.raises(DataFileError, match=message):
        FilesSource(train=str(tmp_path / "bad.conll")).read("conll")


@pytest.mark.parametrize("model", ["lstm", pytest.param("transformer", marks=pytest.mark.slow)])
def test_learns_synthetic_ner_and_export_matches(model, tmp_path):
    """With characters, case features, word dropout and the CRF: F1 well above chance, and
    the SavedModel's Viterbi tags in a fresh process equal the in-process model's."""
    extra = (["model.units=32", "model.embedding_dim=32"] if model == "lstm"
             else ["model.hidden_dim=32", "model.intermediate_dim=64", "model.num_heads=2"])
    cfg = _cfg(f"model={model}", *extra, *CHARS_CRF, "task.case_features=true",
               "task.word_dropout=0.1", "data.num_train=2000", "data.num_validation=200",
               "data.num_test=200", "trainer.epochs=3", "trainer.batch_size=32",
               "trainer.learning_rate=0.005", "trainer.early_stopping_patience=null")
    result = execute(cfg, tmp_path)
    assert set(result.metrics) == {"f1", "precision", "recall"}
    assert result.metrics["f1"] > 0.6, result.metrics
    history = json.loads((tmp_path / "checkpoints" / "trainer_state.json").read_text())["history"]
    assert all(0 <= epoch["val_f1"] <= 1 for epoch in history)  # monitored by default

    texts = ["president washington arrived in new york on friday .", "hello",
             "Supercalifragilisticexpialidocious visited ZÜRICH"]  # a word past max_word_length
    expected = result.task.serve_in_process(result.model, texts)
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        serve = tf.saved_model.load({str(tmp_path / 'saved_model')!r}).signatures["serving_default"]
        out = serve(text=tf.constant({texts!r}))
        assert not any(m.startswith(("pipelines", "layers")) for m in sys.modules)
        print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()}}, default=lambda b: b.decode()))
    """)
    served = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd="/", timeout=120)
    assert served.returncode == 0, served.stderr[-3000:]
    outputs = json.loads(served.stdout.strip().splitlines()[-1])
    assert outputs["tokens"][0] == texts[0].split() and outputs["tokens"][1][1:] == [""] * 8
    assert outputs["tags"] == [[t.decode() for t in row] for row in expected["tags"]]
    # the in-process tags are the CRF's Viterbi path
    words = [t.split() for t in texts]
    assert [[t.decode() for t in row[: len(w)]] for row, w in zip(expected["tags"], words)] == \
        result.task.predict_tags(result.model, words)
