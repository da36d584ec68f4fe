"""task=image_text: config errors before TF, the symmetric InfoNCE loss and recall@k against
NumPy, held-out colour-shape pairs leave train and validation, zero-shot truths, the
SavedModel (serving_default, embed_image, embed_text) in a fresh process that imports only
TensorFlow, `pipelines.predict --labels`, and (slow) smoke runs and learning."""
import io
import json
import math
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from PIL import Image

from pipelines.config import ConfigError, check, register_schemas
from pipelines.data.scenes import COLOURS, KINDS, parse_pairs
from pipelines.export import serve_in_process
from pipelines.tasks import build_task
from pipelines.tasks.image_text import contrastive_loss, recall_at
from tests.conftest import REPO

register_schemas()
HOLDOUT = "task.holdout_pairs=[red circle,blue-star]"
TINY = ["model.filters=[4,8]", "task.embedding_dim=8", "task.image_size=32",
        "task.text_tower_options.transformer.hidden_dim=16",
        "task.text_tower_options.transformer.intermediate_dim=16",
        "task.text_tower_options.transformer.num_layers=1", "data.limit=60"]


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=image_text", "model=cnn", "logger=none",
                                            "trainer.verbose=false", *overrides])


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- config, no TF
@pytest.mark.parametrize("override,message", [
    ("task.labels=[]", r"task.labels must be null or a non-empty list .* received task.labels=\[\]"),
    ("task.labels=[cat,' ']", "non-empty label names"),
    ("task.prompt=a photo of a cat", "task.prompt must hold {} .* received task.prompt='a photo of a cat'"),
    ("task.holdout_pairs=[pink circle]",
     "'pink circle' is not a colour-shape pair .* colours: red, green, blue, yellow, purple, "
     "orange, white; shapes: circle, square, triangle, diamond, cross, star"),
    ("task.holdout_pairs=[red]", "'red' is not a colour-shape pair"),
    ("task.text_tower=cnn", "task.text_tower=cnn is not a text encoder; valid: gru, lstm, transformer"),
    ("+task.text_tower_options.lstm.hidden=3", r"task.text_tower_options.lstm has keys \['hidden'\]"),
])
def test_bad_config_is_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        check(_cfg(override))


def test_holdout_pairs_need_generated_scenes():
    with pytest.raises(ConfigError, match="task.holdout_pairs needs generated scenes"):
        check(_cfg(HOLDOUT, "data=files", "data.train=x.json"))


def test_config_errors_come_before_tensorflow_is_imported():
    script = textwrap.dedent(f"""
        import sys
        from hydra import compose, initialize_config_dir
        from pipelines.config import ConfigError, check, register_schemas
        register_schemas()
        with initialize_config_dir({str(REPO / "conf")!r}, version_base="1.3"):
            cfg = compose("config", overrides=["task=image_text", "model=vit", "task.labels=[]"])
        try:
            check(cfg)
        except ConfigError:
            assert "tensorflow" not in sys.modules
            print("refused")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.stdout.strip() == "refused", out.stderr[-2000:]


def test_parse_pairs_accepts_spaces_dashes_and_underscores():
    assert parse_pairs(["red circle", "Blue-star", "white_cross"]) == [
        ("red", "circle"), ("blue", "star"), ("white", "cross")]


# ----------------------------------------------------------------------------- loss, recall
def test_contrastive_loss_is_symmetric_infonce_with_duplicate_captions_as_matches():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 4)).astype(np.float32)
    ids = np.array([[5, 6, 0], [7, 0, 0], [5, 6, 0], [8, 9, 4]], np.int32)  # rows 0, 2 equal

    def log_softmax(x):
        return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)

    targets = np.array([[.5, 0, .5, 0], [0, 1, 0, 0], [.5, 0, .5, 0], [0, 0, 0, 1]])
    expected = 0.5 * (-(targets * log_softmax(logits)).sum(-1)
                      - (targets * log_softmax(logits.T)).sum(-1))
    got = contrastive_loss(tf.constant(ids), tf.constant(logits)).numpy()
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Distinct captions: the diagonal's cross-entropy, both ways.
    ids = np.arange(4, dtype=np.int32)[:, None] + 4
    plain = 0.5 * (-np.diag(log_softmax(logits)) - np.diag(log_softmax(logits.T)))
    np.testing.assert_allclose(contrastive_loss(tf.constant(ids), tf.constant(logits)).numpy(),
                               plain, rtol=1e-5)


def test_recall_at_k_counts_the_best_ranked_match():
    similarity = np.array([[0.9, 0.1, 0.5, 0.2],   # match 2 ranks second
                           [0.3, 0.8, 0.1, 0.7],   # match 3 ranks second, match 1 first
                           [0.9, 0.8, 0.7, 0.1]])  # match 3 ranks last
    matches = np.array([[0, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 1]], bool)
    assert recall_at(similarity, matches, ks=(1, 2, 4)) == {1: 1 / 3, 2: 2 / 3, 4: 1.0}


def test_mixed_precision_keeps_float32_logits_and_a_finite_loss():
    import keras

    task = build_task(_cfg(*TINY))
    task.adapt(task.load())
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = task.build_model()
        ids = task.encode_text(tf.constant(["a red circle", "two shapes on a noisy background"]))
        logits = model({"image": tf.zeros((2, 32, 32, 3)), "text": ids})
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert logits.dtype == tf.float32 and logits.shape == (2, 2)
    assert np.isfinite(contrastive_loss(ids, logits).numpy()).all()
    # The initial logit scale is 1 / temperature; cosine similarities bound the logits.
    assert np.abs(logits.numpy()).max() <= 1 / 0.07 + 1e-3


# ----------------------------------------------------------------------------- data
def test_held_out_pairs_leave_train_and_validation_and_the_test_keeps_every_scene():
    task = build_task(_cfg(HOLDOUT, "data.limit=300"))
    splits = task.load()
    held = {("red", "circle"), ("blue", "star")}
    for name in ("train", "validation"):
        scenes = task._shapes[id(getattr(splits, name)[0])]
        assert len(scenes) == len(getattr(splits, name)[1]) < 300
        assert not any((s.colour, s.kind) in held for scene in scenes for s in scene)
    test_scenes = task._shapes[id(splits.test[0])]
    assert len(test_scenes) == 300
    assert any((s.colour, s.kind) in held for scene in test_scenes for s in scene)
    for scene, captions in zip(test_scenes, splits.test[1]):  # records align with captions
        assert any(scene[0].colour in c and scene[0].kind in c for c in captions), captions


def test_zero_shot_truth_from_scenes_and_from_captions():
    task = build_task(_cfg("data.limit=20"))
    splits = task.load()
    pairs = [f"{c} {k}" for c in COLOURS for k in KINDS]
    scenes = task._shapes[id(splits.test[0])]
    truth = task.truth(splits.test, pairs)
    assert [pairs[i] for i in truth] == [f"{s[0].colour} {s[0].kind}" for s in scenes]
    assert [KINDS[i] for i in task.truth(splits.test, list(KINDS))] == [s[0].kind for s in scenes]
    # Not scenes: the one label its captions name; none or several -> -1.
    pair = ([b"", b"", b""], [["A dog on a sofa", "a brown dog"], ["a cat and a dog"], ["a car"]])
    assert task.truth(pair, ["cat", "dog"]).tolist() == [1, -1, -1]


# ----------------------------------------------------------------------------- export
LABELS = ["red circle", "blue star", "green square"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An untrained tiny model's SavedModel, two PNGs and what serve_in_process gives."""
    tmp_path = tmp_path_factory.mktemp("image_text_export")
    task = build_task(_cfg(*TINY))
    splits = task.load()
    task.adapt(splits)
    model = task.build_model()
    path = tmp_path / "saved_model"
    task.export(model, str(path))
    images = [_png(splits.test[0][0]), _png(np.full((40, 30, 3), 90, np.uint8))]
    for name, data in zip("ab", images):
        (tmp_path / f"{name}.png").write_bytes(data)
    expected = task.serve_in_process(model, {"image_bytes": images, "labels": LABELS})
    return path, [tmp_path / "a.png", tmp_path / "b.png"], expected, (task, model, images)


def test_export_serves_in_a_fresh_process_that_imports_only_tensorflow(exported):
    path, files, expected, (task, model, images) = exported
    assert expected["scores"].shape == (2, 3) and expected["label"].shape == (2,)
    np.testing.assert_allclose(expected["scores"].sum(-1), 1.0, atol=1e-5)
    texts = ["a red circle", "two shapes on a noisy background"]
    image_embedding = serve_in_process(task, model, images, "embed_image")["embedding"]
    text_embedding = serve_in_process(task, model, texts, "embed_text")["embedding"]
    assert image_embedding.shape == (2, 8) and text_embedding.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(text_embedding, axis=-1), 1.0, atol=1e-5)
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        loaded = tf.saved_model.load({str(path)!r})
        images = tf.constant([open(p, "rb").read() for p in {[str(f) for f in files]!r}])
        out = loaded.signatures["serving_default"](image_bytes=images,
                                                    labels=tf.constant({LABELS!r}))
        image = loaded.signatures["embed_image"](image_bytes=images)["embedding"]
        text = loaded.signatures["embed_text"](text=tf.constant({texts!r}))["embedding"]
        assert not [m for m in sys.modules if m.startswith(("pipelines", "keras_hub"))]
        print(json.dumps({{"scores": out["scores"].numpy().tolist(),
                          "label": [x.decode() for x in out["label"].numpy()],
                          "image": image.numpy().tolist(), "text": text.numpy().tolist()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(served["scores"], expected["scores"], atol=1e-5)
    assert served["label"] == [x.decode() for x in expected["label"]]
    np.testing.assert_allclose(served["image"], image_embedding, atol=1e-5)
    np.testing.assert_allclose(served["text"], text_embedding, atol=1e-5)


def test_predict_needs_labels_for_a_zero_shot_export(exported, capsys):
    from pipelines.predict import main

    path, files, expected, _ = exported
    with pytest.raises(SystemExit, match="pass --labels"):
        main([str(path), str(files[0])])
    assert main([str(path), str(files[0]), "--labels", " red circle,blue star ,green square"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert row["labels"] == LABELS and row["label"] == expected["label"][0].decode()
    np.testing.assert_allclose(row["scores"], expected["scores"][0], atol=1e-5)


@pytest.mark.slow
def test_predict_cli_prints_one_json_object_per_image(exported):
    path, files, expected, _ = exported
    cli = subprocess.run([sys.executable, "-m", "pipelines.predict", str(path),
                          *map(str, files), "--labels", ",".join(LABELS)],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert cli.returncode == 0, cli.stderr[-3000:]
    rows = [json.loads(line) for line in cli.stdout.strip().splitlines()]
    assert [row["input"] for row in rows] == list(map(str, files))
    for row, scores, label in zip(rows, expected["scores"], expected["label"]):
        assert row["labels"] == LABELS and row["label"] == label.decode()
        np.testing.assert_allclose(row["scores"], scores, atol=1e-5)


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "vit"])
def test_smoke_run_through_the_cli_under_a_minute(model, tmp_path):
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pipelines", "task=image_text", f"model={model}",
                          "debug=smoke", "logger=none", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    seconds = time.monotonic() - start
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"zero_shot_accuracy", "image_to_text_recall_at_5",
            "text_to_image_recall_at_5"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert (tmp_path / "saved_model" / "saved_model.pb").is_file()
    assert seconds < 60, seconds


@pytest.mark.slow
def test_a_short_run_learns_colour_shape_pairs_far_above_chance(tmp_path):
    from pipelines.run import execute

    cfg = _cfg("task.image_size=32", "model.filters=[16,32,64]", "data.num_train=2000",
               "data.num_validation=100", "data.num_test=300", "trainer.epochs=3",
               "trainer.steps_per_epoch=50", "trainer.batch_size=64", "export.enabled=false",
               'task.prompt="the largest shape is a {}"')
    metrics = execute(cfg, tmp_path).metrics
    # Chance: 1 / 42 over the colour-shape pairs; 4 of ~1,200 captions in the top 10 ~ 0.03.
    assert metrics["zero_shot_accuracy"] > 4 / 42, metrics
    assert metrics["image_to_text_recall_at_10"] > 0.1, metrics
