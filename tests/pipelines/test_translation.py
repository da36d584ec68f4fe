"""Translation in-process: cached decoding steps equal the full pass, padding changes no
prediction, the metrics are sacrebleu's, a model learns, and the export serves strings."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from hydra import compose, initialize_config_dir

from pipelines.config import register_schemas
from pipelines.data.splits import Splits
from pipelines.run import execute
from pipelines.tasks.translation import Translation
from pipelines.tasks import build_task
from tests.conftest import REPO

register_schemas()
SMALL = ["model.hidden_dim=32", "model.intermediate_dim=64", "model.num_heads=2"]


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=translation", "logger=none",
                                            "trainer.verbose=false", *overrides])


def _toy_task(model, *overrides):
    src = ["the red cat sees a dog", "a big dog runs", "the small bird sings", "my cat eats fish"]
    tgt = ["le chat rouge voit un chien", "un grand chien court", "le petit oiseau chante",
           "mon chat mange poisson"]
    extra = SMALL if model == "transformer" else ["model.units=16", "model.embedding_dim=16"]
    task = build_task(_cfg(f"model={model}", "task.source_length=12", "task.target_length=12",
                            *extra, *overrides))
    splits = Splits((src * 8, tgt * 8), (src, tgt))
    task.adapt(splits)
    return task, splits


@pytest.mark.parametrize("model", ["transformer", "gru", "lstm"])
def test_incremental_steps_equal_the_full_teacher_forced_pass(model):
    task, splits = _toy_task(model)
    network = task.build_model()
    x, _ = next(iter(task.dataset(splits.validation, training=False, batch_size=4)))
    full = network(x, training=False).numpy()  # (B, T, V)
    state = network.encode(x["source"])
    for t in range(6):
        logits, state = network.step(x["target_in"][:, t], state, t)
        np.testing.assert_allclose(logits.numpy(), full[:, t], atol=1e-4)


@pytest.mark.parametrize("model", ["transformer", "gru"])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_batch_padding_never_changes_a_translation(model, beam_size):
    task, _ = _toy_task(model, f"decode.beam_size={beam_size}")
    network = task.build_model()
    alone = task.translate(network, ["a big dog"])
    together = task.translate(network, ["a big dog", "the small red cat sees my big dog runs"])
    assert alone[0] == together[0]


def test_recurrent_translator_leaves_the_attention_plateau_on_one_batch():
    # With keras's uniform(+-0.05) token tables the encoder memory starts tiny, attention
    # stays uniform and a recurrent translator sits near the target-LM loss for hundreds of
    # steps (measured here: 1.78 after 60 steps, from 2.99); with the N(0, 1) tables
    # (pipelines.models.seq2seq._rnn_embedding) one batch of 32 pairs is fit (0.05).
    task = build_task(_cfg("model=lstm", "model.units=64", "model.embedding_dim=64",
                           "model.dropout=0", "data.num_train=200", "data.num_validation=10",
                           "data.num_test=10", "task.vocabulary_size=300"))
    splits = task.load()
    task.adapt(splits)
    network = task.build_model()
    x, y = next(iter(task.dataset(splits.train, training=True, batch_size=32)))
    optimizer = tf.keras.optimizers.Adam(5e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(task.loss(y, network(x, training=True)))
        gradients = tape.gradient(loss, network.trainable_variables)
        optimizer.apply_gradients(zip(gradients, network.trainable_variables))
        return loss

    losses = [float(step()) for _ in range(60)]
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def test_targets_are_start_tokens_end_and_padding():
    task, splits = _toy_task("gru")
    x, y = next(iter(task.dataset(splits.validation, training=False, batch_size=4)))
    assert x["target_in"].shape == (4, 12) and y.shape == (4, 12)
    assert np.all(x["target_in"][:, 0].numpy() == task.start_id)
    np.testing.assert_array_equal(x["target_in"][:, 1:].numpy(), y[:, :-1].numpy())
    first = y[0].numpy()
    end = list(first).index(task.end_id)
    assert np.all(first[end + 1:] == 0)
    assert task.detokenize(y[:1]).numpy()[0].decode() == "le chat rouge voit un chien"


def test_metrics_are_sacrebleus(monkeypatch):
    task, _ = _toy_task("gru")
    hypotheses = ["le chat rouge voit un chien", "un chien court", "le oiseau chante", "mon chat"]
    references = ["le chat rouge voit un chien", "un grand chien court", "le petit oiseau chante",
                  "mon chat mange poisson"]
    monkeypatch.setattr(task, "translate", lambda model, texts, batch_size=128: hypotheses)
    metrics = task.evaluate(None, (["x"] * 4, references), 4)
    assert metrics["bleu"] == sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert metrics["chrf"] == sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert 0 < metrics["bleu"] < 100


def _serve_in_fresh_process(saved_model, texts):
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        import tensorflow_text  # WordPiece ops
        serve = tf.saved_model.load({str(saved_model)!r}).signatures["serving_default"]
        out = serve(text=tf.constant({texts!r}))
        assert not any(m.startswith(("pipelines", "layers")) for m in sys.modules)
        print(json.dumps([t.decode() for t in out["translation"].numpy()]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd="/", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["transformer", "lstm"])
def test_export_serves_the_same_translations_in_a_fresh_process(model, tmp_path):
    extra = SMALL if model == "transformer" else ["model.units=16", "model.embedding_dim=16"]
    cfg = _cfg(f"model={model}", *extra, "debug=smoke", "trainer.steps_per_epoch=20",
               "data.limit=64", "task.vocabulary_size=300", "decode.beam_size=2",
               "trainer.eval_bleu_every=1", "task.monitor=val_bleu")
    result = execute(cfg, tmp_path)
    history = json.loads((tmp_path / "checkpoints" / "trainer_state.json").read_text())["history"]
    assert 0 <= history[0]["val_bleu"] <= 100  # per-epoch validation BLEU, monitored
    sources = [row["source"] for row in json.loads((tmp_path / "samples.json").read_text())[:4]]
    expected = [t.decode() for t in result.task.serve_in_process(result.model, sources)["translation"]]
    assert _serve_in_fresh_process(tmp_path / "saved_model", sources) == expected


@pytest.mark.slow
@pytest.mark.parametrize("model", ["transformer", "gru"])
def test_learns_synthetic_translation(model, tmp_path):
    extra = (["model.hidden_dim=64", "model.intermediate_dim=128", "trainer.epochs=3"]
             if model == "transformer"  # the GRU needs more steps (BLEU 57 after 10 epochs)
             else ["model.units=64", "model.embedding_dim=64", "trainer.epochs=10"])
    cfg = _cfg(f"model={model}", *extra,
               "data.num_train=3000", "data.num_validation=100", "data.num_test=100",
               "trainer.batch_size=32", "trainer.early_stopping_patience=null",
               "task.vocabulary_size=1000", "decode.beam_size=2")
    result = execute(cfg, tmp_path)
    assert set(result.metrics) == {"bleu", "chrf"}
    assert result.metrics["bleu"] > 15, result.metrics  # an untrained model scores ~0
