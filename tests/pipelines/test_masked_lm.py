"""`task=masked_lm`: masks drawn 80/10/10 and afresh every epoch, the tied head, learning on
generated text, the fill-mask export in a fresh process, and the clear errors."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pipelines.config import ConfigError, check, register_schemas
from tests.conftest import REPO

register_schemas()
SMALL = ["model.hidden_dim=32", "model.num_heads=2", "model.intermediate_dim=64",
         "model.num_layers=1", "task.max_length=24", "task.vocabulary_size=300"]


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=masked_lm", "model=transformer", "logger=none",
                                             "trainer.verbose=false", *overrides])


def _task(*overrides):
    from pipelines.tasks import build_task

    task = build_task(_cfg(*SMALL, "data.limit=256", *overrides))
    splits = task.load()
    task.adapt(splits)
    return task, splits


def test_masks_are_80_10_10_of_15_percent_and_fresh_every_epoch():
    import tensorflow as tf

    from pipelines.tasks.masked_lm import CLS_ID, MASK_ID, PAD_ID, SEP_ID

    tf.random.set_seed(0)
    task, splits = _task("trainer.batch_size=256", "task.length_buckets=null",
                         "task.max_predictions=24")
    stream = iter(task.dataset(splits.train, training=True, batch_size=256))
    epochs = [next(stream) for _ in range(4)]  # 256 lines, batches of 256: a batch per epoch
    chosen, replaced, kept, real = 0, {"mask": 0, "random": 0, "kept": 0}, 0, 0
    originals = []
    for x, y in epochs:
        ids, positions = x["token_ids"].numpy(), x["mask_positions"].numpy()
        truth, weights = y["mask_ids"].numpy(), y["mask_weights"].numpy()
        restored = ids.copy()
        for row in range(len(ids)):
            for slot in np.flatnonzero(weights[row]):
                position = positions[row, slot]
                assert truth[row, slot] not in (PAD_ID, CLS_ID, SEP_ID)  # never a special token
                got = ids[row, position]
                replaced["mask" if got == MASK_ID else "kept" if got == truth[row, slot]
                         else "random"] += 1
                restored[row, position] = truth[row, slot]
        real += int(np.isin(restored, [PAD_ID, CLS_ID, SEP_ID], invert=True).sum())
        chosen += int(weights.sum())
        originals.append({tuple(r): tuple(sorted(p[w > 0])) for r, p, w in
                          zip(restored, positions, weights)})
    # tf-text's selector rounds each sequence's share (>= 1 token): ~0.18 on these short lines
    assert 0.14 < chosen / real < 0.20
    assert 0.76 < replaced["mask"] / chosen < 0.84
    assert 0.07 < replaced["random"] / chosen < 0.13
    assert 0.07 < replaced["kept"] / chosen < 0.13
    # The same sequences in the next epochs, masked at other positions.
    first, later = originals[0], originals[1]
    same = [seq for seq in first if seq in later]
    assert len(same) > 200
    assert sum(first[seq] != later[seq] for seq in same) > 0.9 * len(same)


def test_next_sentence_pairs_follow_documents_and_take_segments():
    task, splits = _task("task.next_sentence=true")
    texts, documents = splits.train
    first, second, is_next = task._pairs(texts, documents, seed=0)
    assert 0.3 < is_next.mean() < 0.55  # half of the lines that have a next line in their document
    for i in np.flatnonzero(is_next)[:50]:
        assert second[i] == texts[i + 1] and documents[i + 1] == documents[i]
    x, y = next(iter(task.dataset(splits.train, training=True, batch_size=16)))
    segments, ids = x["segment_ids"].numpy(), x["token_ids"].numpy()
    assert set(np.unique(segments)) == {0, 1} and (segments[:, 0] == 0).all()
    assert ((ids == 3).sum(1) == 2).all()  # [SEP] after A and after B


def test_the_head_is_tied_to_the_token_embedding():
    task, _ = _task()
    model = task.build_model()
    encoder = model.get_layer("transformer_encoder")
    table = encoder.get_layer("embedding").token_embedding.embeddings
    head = model.get_layer("mlm_head")
    assert head.token_embedding.embeddings is table
    assert sum(tuple(w.shape) == tuple(table.shape) for w in model.weights) == 1
    assert encoder.get_layer("embedding").segment_embedding.embeddings.shape[0] == 2


def _serve_in_fresh_process(saved_model, texts):
    """The export in a process that imports only TensorFlow and tensorflow_text."""
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 - WordPiece ops
        serve = tf.saved_model.load({str(saved_model)!r}).signatures["serving_default"]
        out = serve(text=tf.constant({texts!r}))
        assert not any(m.startswith(("pipelines", "layers")) for m in sys.modules), "package imported"
        print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()}}, default=lambda b: b.decode()))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_learns_generated_text_and_fill_mask_serves_in_a_fresh_process(tmp_path):
    """Perplexity falls well below the vocabulary's on held-out generated text; the export
    fills [MASK] with the same top-k tokens and scores as the in-process model."""
    import keras

    from pipelines.run import execute

    cfg = _cfg(*SMALL, "data.num_train=4000", "data.num_validation=256", "data.num_test=256",
               "trainer.epochs=3", "trainer.steps_per_epoch=80", "trainer.batch_size=64",
               "trainer.learning_rate=0.003")
    try:
        result = execute(cfg, tmp_path)
    finally:
        keras.backend.clear_session()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"masked_accuracy", "perplexity"}
    history = json.loads((tmp_path / "checkpoints" / "trainer_state.json").read_text())["history"]
    losses = [epoch["val_masked_nll"] for epoch in history]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.3, losses
    vocabulary = result.task.vocabulary_size  # uniform guessing: perplexity = vocabulary
    assert metrics["perplexity"] < vocabulary / 3 and metrics["masked_accuracy"] > 0.1, metrics
    manifest = json.loads((tmp_path / "pretraining.json").read_text())
    assert manifest["vocabulary"][:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert manifest["tokenizer"] == "wordpiece" and manifest["sequence_length"] == 24

    texts = ["the old teacher found two [MASK] boxes", "no mask here", "[MASK] [MASK] boy"]
    served = _serve_in_fresh_process(tmp_path / "saved_model", texts)
    expected = result.task.serve_in_process(result.model, texts)
    assert served["tokens"] == np.asarray(expected["tokens"]).astype(str).tolist()
    np.testing.assert_allclose(served["scores"], expected["scores"], atol=1e-5)
    tokens, scores = np.array(served["tokens"]), np.array(served["scores"])
    assert tokens.shape == (3, result.task.max_predictions, 5)
    assert (tokens[0, 0] != "").all() and (tokens[0, 1:] == "").all()  # one mask, the rest empty
    assert (tokens[1] == "").all() and (scores[1] == 0).all()
    assert (tokens[2, :2] != "").all()
    assert (np.diff(scores[0, 0]) <= 0).all() and 0 < scores[0, 0].sum() <= 1 + 1e-6


def test_a_corpus_shorter_than_a_batch_names_the_file(tmp_path):
    from pipelines.data.files import DataFileError
    from pipelines.tasks import build_task

    corpus = tmp_path / "tiny.txt"
    corpus.write_text("one line\n\nanother line\n" * 5)
    task = build_task(_cfg("data=files", f"data.train={corpus}", f"data.validation={corpus}",
                           "trainer.batch_size=64"))
    with pytest.raises(DataFileError, match=r"tiny\.txt.*fewer than one batch"):
        task.load()
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    task = build_task(_cfg("data=files", f"data.train={blank}"))
    with pytest.raises(DataFileError, match=r"blank\.txt.*no text"):
        task.load()


def test_exclude_texts_drops_the_scored_sentences(tmp_path):
    from pipelines.tasks import build_task

    corpus, scored = tmp_path / "corpus.txt", tmp_path / "scored.txt"
    corpus.write_text("".join(f"line number {i}\n" for i in range(100)) + "The  Scored one\n")
    scored.write_text("the scored ONE\nline number 7\n")
    task = build_task(_cfg("data=files", f"data.train={corpus}", f"data.validation={corpus}",
                           f"task.exclude_texts={scored}", "trainer.batch_size=8"))
    splits = task.load()
    for texts in (splits.train[0], splits.validation[0]):
        assert len(texts) == 99 and "line number 7" not in texts
        assert not any("scored" in t.lower() for t in texts)


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_recurrent_models_are_refused_listing_the_transformer(model):
    with pytest.raises(ConfigError, match="Valid models for masked_lm: transformer"):
        check(_cfg(f"model={model}"))
