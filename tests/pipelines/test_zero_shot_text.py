"""task=zero_shot_text: config errors before TF, the cloze scores of a small masked_lm run
against the network by hand (mean, logsumexp, calibration, long texts), the whole path
(metrics, baselines, an export that serves in a fresh process with only TensorFlow and
tensorflow_text, `pipelines.predict`), and (slow) continuation scores of a language_modeling
run."""
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.config import ConfigError, check, register_schemas
from tests.conftest import REPO
from tests.pipelines.test_config import _cli
from tests.pipelines.test_pretrained import SIZES

register_schemas()
# Words that the small run's WordPiece vocabulary holds whole (its 128 generated reviews).
WORDS = ["task.verbalizers.negative=[terrible,awful,poor]",
         "task.verbalizers.positive=[superb,excellent,charming]"]
QUICK = ["trainer.verbose=false", "trainer.epochs=1", "trainer.steps_per_epoch=2",
         "trainer.eval_steps=1", "trainer.batch_size=16", "data.limit=128", "logger=none"]
TEXTS = ["the plot was superb", "the acting felt not very weak , however the movie was dull",
         " ".join(["the movie was terrible"] * 12)]  # longer than the run's 32 positions


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _zero_shot(run_dir, *overrides, model="transformer"):
    return _cfg("task=zero_shot_text", f"model={model}", f"model.init_from={run_dir}", *WORDS,
                *QUICK, *overrides)


def _save_run(cfg, run_dir):
    """Runs `cfg` into `run_dir`, leaving the .hydra/config.yaml the CLI writes."""
    import keras

    from pipelines.run import execute

    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    try:
        execute(cfg, run_dir)
    finally:
        keras.backend.clear_session()
    return run_dir


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    """A small masked_lm run on the generated reviews, WordPiece, 32 positions, no export."""
    return _save_run(_cfg("task=masked_lm", "model=transformer", *SIZES, *QUICK,
                          "task.reader=labelled_text", "task.max_length=32",
                          "task.vocabulary_size=300", "export.enabled=false"),
                     tmp_path_factory.mktemp("masked_lm"))


@pytest.fixture(scope="module")
def adapted(mlm_run):
    from pipelines.tasks import build_task

    cfg = _zero_shot(mlm_run)
    check(cfg)
    task = build_task(cfg)
    task.adapt(task.load())
    return task, task.build_model()


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("override,message", [
    ("task.labels=[]", r"task.labels must be a non-empty list .* received task.labels=\[\]"),
    ("task.prompt='It was [MASK].'", "task.prompt must hold {} once, where the text goes"),
    ("task.prompt='{} and {} [MASK]'", "task.prompt must hold {} once"),
    ("task.prompt='{} [MASK] [MASK]'", "task.prompt holds .MASK. 2 times"),
    ("task.labels=[negative,positive,neutral]", r"task.verbalizers has no words for .*neutral"),
    ("task.lexicon_labels=[bad,positive]", r"task.lexicon_labels names \['bad'\]"),
])
def test_bad_task_keys_are_one_clear_error_before_the_run_is_read(override, message):
    with pytest.raises(ConfigError, match=message):
        check(_zero_shot("/no/such/run", override))


def test_init_from_is_required_and_must_be_a_pretraining_run(tmp_path):
    with pytest.raises(ConfigError, match="task=zero_shot_text needs model.init_from=RUN_DIR"):
        check(_cfg("task=zero_shot_text", "model=transformer"))
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"task": {"name": "sentiment"}}),
                   tmp_path / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="is a run of task=sentiment, not of a pretraining task "
                                          r"\(masked_lm, language_modeling\)"):
        check(_zero_shot(tmp_path))


def test_config_errors_come_before_tensorflow_is_imported():
    result, _ = _cli("task=zero_shot_text", "model=transformer", "task.labels=[]")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "TF_NOT_IMPORTED" in output, output
    assert "task.labels must be a non-empty list" in output, output


@pytest.mark.parametrize("model,override,message", [
    ("transformer", "task.verbalizers.positive=[superb,good]",
     r"task.verbalizers.positive: 'good' is not one token of the vocabulary .* \(\d+ wordpiece "
     "tokens, lower case\), and the .MASK. predicts one token"),
    ("transformer", "task.prompt='{} It was'", r"a masked_lm run: task.prompt needs a \[MASK\]"),
    ("lstm", "task.num_samples=3", "is a run of model=transformer; task=zero_shot_text uses its "
                                   "network as it is: set model=transformer"),
    ("transformer", "model.hidden_dim=64",
     "model.hidden_dim=64 has no effect with task=zero_shot_text"),
    ("transformer", "trainer.freeze_epochs=1",
     "trainer.freeze_epochs=1 has no effect: task=zero_shot_text trains nothing"),
])
def test_what_the_run_asks_is_checked_before_tensorflow(mlm_run, model, override, message):
    with pytest.raises(ConfigError, match=message):
        check(_zero_shot(mlm_run, override, model=model))


def test_a_word_vocabulary_needs_the_mask_apart(mlm_run, tmp_path):
    """Whole-word runs split on spaces: "[MASK]." is one unknown word, not the mask."""
    from pipelines.tasks import build_task

    run = shutil.copytree(mlm_run, tmp_path / "word_run")
    manifest = json.loads((run / "pretraining.json").read_text())
    manifest["tokenizer"] = "word"
    (run / "pretraining.json").write_text(json.dumps(manifest))
    task = build_task(_zero_shot(run))
    with pytest.raises(ConfigError, match=r"finds 0 \[MASK\] tokens in it, not one .*' \[MASK\] .'"):
        task.adapt(task.load())
    task = build_task(_zero_shot(run, "task.prompt='{} it was [MASK] .'"))
    task.adapt(task.load())
    assert task.spot == (1, 2)


# ----------------------------------------------------------------------------- scores
def _by_hand(task, model, text):
    """(W,) log-probabilities of the verbalizer words at the [MASK] of the prompt filled with
    `text` cut to its last `task.keep` tokens, through the run's own packing."""
    import tensorflow as tf

    from pipelines.tasks.masked_lm import MASK_ID

    pieces = task.text_ids.tokenize(tf.constant([text])).to_list()[0][-task.keep:]
    vocabulary = task.text_ids.vocabulary
    kept = " ".join(vocabulary[i] for i in pieces).replace(" ##", "")
    ids = task.text_ids(tf.constant([str(task.task_cfg.prompt).format(kept)])).numpy()
    (position,) = np.flatnonzero(ids[0] == MASK_ID)
    positions = np.zeros((1, task.max_predictions), "int32")
    positions[0, 0] = position
    logits = model({"token_ids": ids, "segment_ids": np.zeros_like(ids),
                    "mask_positions": positions})["mlm"].numpy()[0, 0].astype("float64")
    log_probs = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    return log_probs[task.word_ids]


def test_cloze_scores_are_the_verbalizers_log_probabilities_at_the_mask(adapted):
    import tensorflow as tf
    from scipy.special import logsumexp

    task, model = adapted
    assert task.text_ids.vocabulary[task.word_ids[0]] == "terrible" and len(task.word_ids) == 6
    words = np.stack([_by_hand(task, model, text) for text in TEXTS])  # (3, 6)
    np.testing.assert_allclose(task.label_scores(model, tf.constant(TEXTS)).numpy(),
                               np.stack([words[:, :3].mean(-1), words[:, 3:].mean(-1)], -1),
                               atol=1e-4)
    token_ids, position = (x.numpy() for x in task._cloze(tf.constant(TEXTS)))
    assert (token_ids[2] != 0).all() and token_ids[2, position[2]] == 4  # cut, mask kept
    for setting, expected in (("aggregate", "logsumexp"), ("calibrate", True)):
        task.task_cfg[setting] = expected
        scores = task.label_scores(model, tf.constant(TEXTS)).numpy()
        task.task_cfg[setting] = OmegaConf.select(_cfg("task=zero_shot_text").task, setting)
        if setting == "aggregate":
            reference = np.stack([logsumexp(words[:, :3], -1), logsumexp(words[:, 3:], -1)], -1)
        else:
            empty = _by_hand(task, model, "")
            reference = (np.stack([words[:, :3].mean(-1), words[:, 3:].mean(-1)], -1)
                         - [empty[:3].mean(), empty[3:].mean()])
        np.testing.assert_allclose(scores, reference, atol=1e-4)


def test_the_whole_path_scores_baselines_and_serves_in_a_fresh_process(mlm_run, tmp_path,
                                                                       capsys):
    """No training: metrics with chance and the lexicon, samples, and an export that gives
    the in-process scores in a process that imports only TensorFlow and tensorflow_text."""
    import keras

    from pipelines.predict import main
    from pipelines.run import execute
    from pipelines.tasks.zero_shot_text import lexicon_predictions

    cfg = _zero_shot(mlm_run, "data.limit=48")
    try:
        result = execute(cfg, tmp_path)
    finally:
        keras.backend.clear_session()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "macro_f1", "chance_accuracy", "lexicon_accuracy",
                            "lexicon_macro_f1"}
    assert not (tmp_path / "checkpoints").exists()  # nothing trained
    texts, labels = result.task.load().evaluation
    truth = result.task.label_ids(labels)
    assert metrics["chance_accuracy"] == pytest.approx(np.bincount(truth).max() / len(truth))
    vader = lexicon_predictions(texts, negative=0, positive=1)
    assert metrics["lexicon_accuracy"] == pytest.approx((vader == truth).mean())
    assert metrics["lexicon_accuracy"] > metrics["chance_accuracy"]  # it knows "superb", "not"
    assert len(result.task.samples) == 20

    expected = result.task.serve_in_process(result.model, TEXTS)
    assert expected["scores"].shape == (3, 2)
    np.testing.assert_allclose(expected["scores"].sum(-1), 1.0, atol=1e-6)
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 - WordPiece ops
        serve = tf.saved_model.load({str(tmp_path / "saved_model")!r}).signatures["serving_default"]
        out = serve(text=tf.constant({TEXTS!r}))
        assert not [m for m in sys.modules if m.startswith(("pipelines", "layers", "keras_hub"))]
        print(json.dumps({{"scores": out["scores"].numpy().tolist(),
                          "label": [x.decode() for x in out["label"].numpy()]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=180, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(served["scores"], expected["scores"], atol=1e-5)
    assert served["label"] == [x.decode() for x in expected["label"]]

    capsys.readouterr()
    assert main([str(tmp_path / "saved_model"), TEXTS[0]]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert row["input"] == TEXTS[0] and row["label"] == expected["label"][0].decode()
    np.testing.assert_allclose(row["scores"], expected["scores"][0], atol=1e-5)


# ----------------------------------------------------------------------------- language model
@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["wordpiece", "sentencepiece"])
def test_continuation_scores_of_a_language_model_run(tokenizer, tmp_path):
    """A word's score is the summed log-probability of its continuation's tokens after
    [START] and the prompt, the tokenizer learned again from the run's config; the run
    serves the whole path too."""
    import keras
    import tensorflow as tf

    from pipelines.run import execute
    from pipelines.tasks import build_task

    run = _save_run(_cfg("task=language_modeling", "model=gru", "model.units=16",
                         "model.embedding_dim=8", *QUICK, "task.sequence_length=16",
                         "task.vocabulary_size=200", f"task.tokenizer={tokenizer}",
                         "export.enabled=false"), tmp_path / "lm")
    words = ["task.verbalizers.negative=[red]", "task.verbalizers.positive=[blue boxes]"]
    cfg = _cfg("task=zero_shot_text", "model=gru", f"model.init_from={run}", *QUICK, *words,
               "task.prompt='{} it was [MASK] .'", "data.limit=24")
    check(cfg)
    task = build_task(cfg)
    task.adapt(task.load())
    model = task.build_model()
    texts = ["a dog runs in the park", "two young men are outside near many bushes . " * 3]
    tokenizer_ = task.lm.tokenizer
    expected = []
    for text in texts:
        row = []
        for ending in (" red .", " blue boxes ."):
            context = tokenizer_.tokenize(tf.constant([f"{text} it was"])).to_list()[0]
            full = tokenizer_.tokenize(tf.constant([f"{text} it was{ending}"])).to_list()[0]
            ids = ([task.lm.start_id] + full)[-16:]
            logits = model(tf.constant([ids + [0] * (16 - len(ids))])).numpy()[0]
            log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            scored = range(len(ids) - (len(full) - len(context)), len(ids))
            row.append(sum(log_probs[t - 1, ids[t]] for t in scored))
        expected.append(row)
    np.testing.assert_allclose(task.label_scores(model, tf.constant(texts)).numpy(), expected,
                               atol=1e-4)
    try:
        result = execute(cfg, tmp_path / "zero_shot")
    finally:
        keras.backend.clear_session()
    assert set(result.metrics) >= {"accuracy", "macro_f1", "chance_accuracy"}
    assert (tmp_path / "zero_shot" / "saved_model" / "saved_model.pb").is_file()
