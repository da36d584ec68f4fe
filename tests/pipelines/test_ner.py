"""NER in-process: seqeval metrics, padding independence, learning, fresh-process export."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from seqeval.metrics import f1_score

from pipelines.config import register_schemas
from pipelines.data.splits import Splits
from pipelines.run import execute
from pipelines.tasks.ner import Ner
from pipelines.tasks import build_task
from tests.conftest import REPO

register_schemas()


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=ner", "logger=none", "trainer.verbose=false",
                                            *overrides])


def _toy_task(*overrides):
    tokens = [["john", "lives", "in", "new", "york"], ["acme", "corp", "hired", "mary"]]
    tags = [["B-PER", "O", "O", "B-LOC", "I-LOC"], ["B-ORG", "I-ORG", "O", "B-PER"]]
    task = build_task(_cfg("model=lstm", "model.units=8", "model.embedding_dim=8", "task.max_length=6",
                    *overrides))
    splits = Splits((tokens * 4, tags * 4), (tokens, tags))
    task.adapt(splits)
    return task, splits


def test_targets_mark_padding_and_loss_ignores_it():
    task, splits = _toy_task()
    x, y = next(iter(task.dataset(splits.validation, training=False, batch_size=2)))
    assert x.shape == (2, 6) and y.shape == (2, 6)
    np.testing.assert_array_equal(x.numpy() == 0, y.numpy() == 0)  # pads agree
    model = task.build_model()
    logits = model(x).numpy()
    changed = logits.copy()
    changed[y.numpy() == 0] = 1e3  # anything at padded positions
    np.testing.assert_allclose(task.loss(y, logits).numpy(), task.loss(y, changed).numpy(), atol=1e-6)


def test_padding_never_changes_a_prediction():
    task, _ = _toy_task()
    model = task.build_model()
    alone = task.predict_tags(model, [["mary", "lives"]])
    together = task.predict_tags(model, [["mary", "lives"], ["john", "in", "new", "york", "acme", "corp"]])
    assert alone[0] == together[0]
    assert len(task.predict_tags(model, [["w"] * 9])[0]) == 9  # longer than max_length: O-filled


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


@pytest.mark.parametrize("model", ["lstm", pytest.param("transformer", marks=pytest.mark.slow)])
def test_learns_synthetic_ner_and_export_matches(model, tmp_path):
    extra = (["model.units=32", "model.embedding_dim=32"] if model == "lstm"
             else ["model.hidden_dim=32", "model.intermediate_dim=64", "model.num_heads=2"])
    cfg = _cfg(f"model={model}", *extra, "data.num_train=2000", "data.num_validation=200",
               "data.num_test=200", "trainer.epochs=3", "trainer.batch_size=32",
               "trainer.learning_rate=0.005", "trainer.early_stopping_patience=null")
    result = execute(cfg, tmp_path)
    assert set(result.metrics) == {"f1", "precision", "recall"}
    assert result.metrics["f1"] > 0.6, result.metrics

    texts = ["president washington arrived in new york on friday .", "hello"]
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
