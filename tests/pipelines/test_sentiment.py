"""The sentiment task in-process: it learns, and its SavedModel serves the same outputs."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pipelines.config import register_schemas
from pipelines.run import execute
from tests.conftest import REPO

register_schemas()


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["logger=none", "trainer.verbose=false", *overrides])


def _serve_in_fresh_process(saved_model, texts):
    """Loads the export in a process that imports only TensorFlow, never this package."""
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        serve = tf.saved_model.load({str(saved_model)!r}).signatures["serving_default"]
        out = serve(text=tf.constant({texts!r}))
        assert not any(m.startswith(("pipelines", "layers")) for m in sys.modules), "package imported"
        print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()}}, default=lambda b: b.decode()))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["lstm", pytest.param("gru", marks=pytest.mark.slow)])
def test_learns_synthetic_sentiment_and_export_matches(model, tmp_path):
    cfg = _cfg(f"model={model}", "model.units=32", "model.embedding_dim=32",
               "data.num_train=2048", "data.num_validation=256", "data.num_test=256",
               "trainer.epochs=4", "trainer.learning_rate=0.01", "trainer.batch_size=32",
               "trainer.early_stopping_patience=null")
    result = execute(cfg, tmp_path)
    assert set(result.metrics) == {"accuracy", "macro_f1"}
    assert result.metrics["accuracy"] > 0.85, result.metrics  # chance is 0.5; bag of words < 0.7
    assert json.loads((tmp_path / "metrics.json").read_text()) == result.metrics

    texts = ["the plot was not bad", "although the film was good , the ending was awful",
             "honestly the music felt truly wonderful", ""]
    expected = result.task.serve_in_process(result.model, texts)
    served = _serve_in_fresh_process(tmp_path / "saved_model", texts)
    assert served["label"] == [label.decode() for label in expected["label"]]
    np.testing.assert_allclose(served["probabilities"], expected["probabilities"], atol=1e-5)
    assert np.array(served["probabilities"]).shape == (4, 2)


def test_unknown_label_in_validation_is_a_clear_error(tmp_path):
    (tmp_path / "train.txt").write_text("".join(f"{i % 2} words {i}\n" for i in range(64)))
    (tmp_path / "dev.txt").write_text("1 fine\n7 odd\n")
    cfg = _cfg("data=files", f"data.train={tmp_path / 'train.txt'}",
               f"data.validation={tmp_path / 'dev.txt'}", "trainer.batch_size=8")
    with pytest.raises(ValueError, match=r"validation split has labels \['7'\] that never occur in train"):
        execute(cfg, tmp_path / "run")
