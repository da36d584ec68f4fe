"""task=visual_qa: questions of a hand-made scene and of the generated splits, config errors
before TF, the fused model's shapes for every fusion and both image encoders, per-type
accuracy, one run of the whole path (train, evaluate, export) whose SavedModel serves in
process, in a fresh process that imports only TensorFlow, and through `pipelines.predict
--feed`, and (slow) the CLI smoke runs."""
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
from pipelines.data.scene_questions import plural, question_type, scene_questions
from pipelines.data.scenes import KINDS, Shape
from pipelines.data.synthetic import SyntheticSource
from pipelines.tasks import build_task
from tests.conftest import REPO

register_schemas()
TINY_TASK = ["task.image_size=32", "task.fusion_dim=8", "task.text_tower_options.lstm.units=4",
             "task.text_tower_options.lstm.embedding_dim=4", "data.limit=24"]
SMALL = {"cnn": ["model.filters=[4,8]"],
         "vit": ["model.hidden_dim=8", "model.intermediate_dim=8", "model.num_layers=1",
                 "model.patch_size=8"]}
TINY = [*SMALL["cnn"], *TINY_TASK]


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=visual_qa", "model=cnn", "logger=none",
                                            "trainer.verbose=false", *overrides])


def _shape(kind, colour, size="small"):
    return Shape(kind, colour, size, 10.0, 10.0, 5.0, 50)


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- questions
def test_questions_of_a_hand_made_scene_are_the_well_defined_ones():
    # Two circles (no "what colour is the circle?"), every colour once.
    shapes = [_shape("circle", "red", "large"), _shape("circle", "blue"),
              _shape("triangle", "green")]
    pairs = scene_questions(shapes, np.random.default_rng(0))
    assert pairs[:-1] == [
        ("what colour is the largest shape?", "red"),
        ("what colour is the triangle?", "green"),
        ("what shape is the largest object?", "circle"),
        ("what shape is the red object?", "circle"),
        ("what shape is the blue object?", "circle"),
        ("what shape is the green object?", "triangle"),
        ("how many shapes?", "three"),
        ("how many circles?", "two"),
        ("how many triangles?", "one"),
    ]
    absent, answer = pairs[-1]
    assert answer == "zero" and absent in {f"how many {plural(k)}?"
                                           for k in ("square", "diamond", "cross", "star")}
    # Two red shapes: no "what shape is the red object?"; a lone star is asked about.
    shapes = [_shape("square", "red", "large"), _shape("star", "red")]
    pairs = dict(scene_questions(shapes, np.random.default_rng(0)))
    assert "what shape is the red object?" not in pairs
    assert pairs["what colour is the star?"] == "red" and pairs["how many stars?"] == "one"
    assert pairs["how many shapes?"] == "two"


def test_question_types_and_plurals():
    assert [question_type(q) for q in ("what colour is the star?", "What color is it?",
                                       "what shape is the red object?", "how many crosses?",
                                       "is it red?")] == ["colour", "colour", "shape", "count",
                                                          "other"]
    assert [plural(k) for k in KINDS] == ["circles", "squares", "triangles", "diamonds",
                                          "crosses", "stars"]


def test_generated_questions_are_answered_by_their_scenes_and_keep_their_prefix():
    source = SyntheticSource(limit=30)
    splits, shapes = source.read("image_questions"), source.scene_shapes()
    for name in ("train", "validation", "test"):
        images, questions = getattr(splits, name)
        assert len(images) == len(questions) == len(shapes[name]) == 30
        for scene, pairs in zip(shapes[name], questions):
            kinds = [s.kind for s in scene]
            for question, answer in pairs:
                if question.startswith("how many ") and question != "how many shapes?":
                    kind = next(k for k in KINDS if question == f"how many {plural(k)}?")
                    assert answer == ("zero", "one", "two", "three")[kinds.count(kind)]
                elif question == "what colour is the largest shape?":
                    assert answer == scene[0].colour
    # The first scenes' questions do not depend on how many scenes are drawn.
    more = SyntheticSource(limit=40).read("image_questions")
    assert more.test[1][:30] == splits.test[1]


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("override,message", [
    ("task.question_types=[size]", r"task.question_types must be .* from colour, shape, count; "
                                   r"received task.question_types=\['size'\]"),
    ("task.question_types=[]", "task.question_types must be a non-empty list"),
    ("task.fusion_dim=0", "task.fusion_dim must be >= 1"),
    ("task.dropout=1.0", r"task.dropout must be in \[0, 1\)"),
    ("task.text_tower=cnn", "task.text_tower=cnn is not a text encoder; valid: gru, lstm, transformer"),
    ("data=files", "task=visual_qa reads the format image_questions .* which data=files cannot "
                   "read .* data=synthetic generates it"),
])
def test_bad_config_is_one_clear_error(override, message):
    extra = ["data.train=x"] if override == "data=files" else []
    with pytest.raises(ConfigError, match=message):
        check(_cfg(override, *extra))


def test_config_errors_come_before_tensorflow_is_imported():
    script = textwrap.dedent(f"""
        import sys
        from hydra import compose, initialize_config_dir
        from pipelines.config import ConfigError, check, register_schemas
        register_schemas()
        with initialize_config_dir({str(REPO / "conf")!r}, version_base="1.3"):
            cfg = compose("config", overrides=["task=visual_qa", "model=vit", "data=tfds",
                                               "data.name=mnist"])
        try:
            check(cfg)
        except ConfigError:
            assert "tensorflow" not in sys.modules
            print("refused")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.stdout.strip() == "refused", out.stderr[-2000:]


# ----------------------------------------------------------------------------- model
@pytest.mark.parametrize("model,fusion", [("cnn", "film"), ("cnn", "product"),
                                          ("cnn", "concat"), ("vit", "film")])
def test_two_inputs_one_output_for_every_fusion(model, fusion):
    cfg = _cfg(f"model={model}", *SMALL[model], *TINY_TASK, f"task.fusion={fusion}")
    check(cfg)
    task = build_task(cfg)
    splits = task.load()
    task.adapt(splits)
    model = task.build_model()
    assert set(model.input) == {"image", "question"} and len(model.outputs) == 1
    x, y = next(iter(task.dataset(splits.train, training=False, batch_size=4)))
    assert x["image"].shape == (4, 32, 32, 3) and x["question"].shape == (4, 12)
    logits = model(x)
    assert logits.shape == (4, len(task.answers)) and logits.dtype == tf.float32
    assert task.loss(y, logits).shape == (4,)


def test_a_training_batch_brings_k_questions_of_each_image_encoded_once():
    task = build_task(_cfg(*TINY, "task.questions_per_image=4"))
    splits = task.load()
    task.adapt(splits)
    x, y = next(iter(task.dataset(splits.train, training=True, batch_size=8)))
    assert x["image"].shape == (2, 32, 32, 3) and x["question"].shape == (8, 12)
    assert y["answer"].shape == y["type"].shape == (8,)
    images, rows = task.images(splits.train), task.examples(splits.train)
    for i, image in enumerate(x["image"].numpy()):  # the image's own questions, 4 different
        (index,) = [n for n in range(len(images)) if (images[n] == image).all()]
        own = {tuple(ids) for ids in rows["ids"][rows["image"] == index]}
        group = [tuple(ids) for ids in x["question"].numpy()[4 * i:4 * i + 4]]
        assert set(group) <= own and len(set(group)) == min(4, len(own))
    # The model repeats each image's features for its questions: the same logits as the
    # images given one per question.
    model = task.build_model()
    repeated = tf.repeat(x["image"], 4, axis=0)
    np.testing.assert_allclose(model(x).numpy(),
                               model({"image": repeated, "question": x["question"]}).numpy(),
                               atol=1e-5)
    with pytest.raises(ValueError, match="trainer.batch_size=6 must be a multiple of "
                                         "task.questions_per_image=4"):
        task.dataset(splits.train, training=True, batch_size=6)


def test_stats_count_each_question_type_apart():
    task = build_task(_cfg(*TINY))
    task.adapt(task.load())
    y = {"answer": tf.constant([0, 1, 2, 3]), "type": tf.constant([0, 0, 2, 2])}
    logits = tf.one_hot([0, 2, 2, 2], len(task.answers))  # right, wrong, right, wrong
    stats = {k: (float(t), float(c)) for k, (t, c) in task.stats(y, logits).items()}
    assert stats == {"accuracy": (2.0, 4.0), "colour_accuracy": (1.0, 2.0),
                     "shape_accuracy": (0.0, 0.0), "count_accuracy": (1.0, 2.0)}


def test_question_types_keep_only_their_questions():
    task = build_task(_cfg("data.limit=10", "task.question_types=[count]"))
    splits = task.load()
    assert {question_type(q) for pairs in splits.train[1] for q, _ in pairs} == {"count"}
    assert len(splits.train[0]) == 10  # every scene has count questions


# ----------------------------------------------------------------------------- whole path
QUESTIONS = ["what colour is the largest shape?", "how many circles?"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run of the whole path (2 steps, export), two PNGs, what the task serves."""
    from pipelines.run import execute

    tmp_path = tmp_path_factory.mktemp("visual_qa")
    cfg = _cfg(*TINY, "trainer.epochs=1", "trainer.steps_per_epoch=2", "trainer.eval_steps=1",
               "trainer.batch_size=8")
    check(cfg)
    result = execute(cfg, tmp_path / "run")
    images = [_png(result.task.images(result.task.load().test)[0]),
              _png(np.full((40, 30, 3), 90, np.uint8))]
    files = []
    for name, data in zip("ab", images):
        (tmp_path / f"{name}.png").write_bytes(data)
        files.append(tmp_path / f"{name}.png")
    expected = result.task.serve_in_process(result.model, {"image_bytes": images,
                                                           "question": QUESTIONS})
    return result, files, images, expected


def test_the_whole_path_reports_accuracy_per_question_type_and_serves_its_export(run):
    result, files, images, expected = run
    assert list(result.metrics) == ["accuracy", "colour_accuracy", "shape_accuracy",
                                    "count_accuracy", "prior_accuracy"]
    assert all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert json.loads((result.run_dir / "metrics.json").read_text()) == result.metrics
    samples = json.loads((result.run_dir / "samples.json").read_text())
    assert {"question", "answer", "predicted"} <= set(samples[0])
    assert expected["probabilities"].shape == (2, len(result.task.answers))
    np.testing.assert_allclose(expected["probabilities"].sum(-1), 1.0, atol=1e-5)
    served = tf.saved_model.load(str(result.run_dir / "saved_model")).signatures[
        "serving_default"](image_bytes=tf.constant(images), question=tf.constant(QUESTIONS))
    assert served["answer"].numpy().tolist() == expected["answer"].tolist()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected["probabilities"],
                               atol=1e-5)


def test_predict_feeds_the_question_beside_the_images(run, capsys):
    from pipelines.predict import main

    result, files, _, expected = run
    saved_model = str(result.run_dir / "saved_model")
    with pytest.raises(SystemExit, match="also takes question: pass --feed question=VALUE"):
        main([saved_model, str(files[0])])
    with pytest.raises(SystemExit, match="has no input questions; its inputs: image_bytes, question"):
        main([saved_model, str(files[0]), "--feed", "questions=how many?"])
    assert main([saved_model, *map(str, files),
                 *[arg for q in QUESTIONS for arg in ("--feed", f"question={q}")]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [row["question"] for row in rows] == QUESTIONS
    assert [row["answer"] for row in rows] == [a.decode() for a in expected["answer"]]
    np.testing.assert_allclose([row["probabilities"] for row in rows],
                               expected["probabilities"], atol=1e-5)
    assert main([saved_model, *map(str, files), "--feed", f"question={QUESTIONS[0]}"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [row["question"] for row in rows] == [QUESTIONS[0]] * 2


@pytest.mark.slow
def test_export_serves_in_a_fresh_process_that_imports_only_tensorflow(run):
    result, files, _, expected = run
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        loaded = tf.saved_model.load({str(result.run_dir / "saved_model")!r})
        images = tf.constant([open(p, "rb").read() for p in {[str(f) for f in files]!r}])
        out = loaded.signatures["serving_default"](image_bytes=images,
                                                    question=tf.constant({QUESTIONS!r}))
        assert not [m for m in sys.modules if m.startswith(("pipelines", "keras_hub"))]
        print(json.dumps({{"answer": [x.decode() for x in out["answer"].numpy()],
                          "probabilities": out["probabilities"].numpy().tolist()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    assert served["answer"] == [a.decode() for a in expected["answer"]]
    np.testing.assert_allclose(served["probabilities"], expected["probabilities"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "vit"])
def test_smoke_run_through_the_cli_under_a_minute(model, tmp_path):
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pipelines", "task=visual_qa", f"model={model}",
                          "debug=smoke", "logger=none", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    seconds = time.monotonic() - start
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"accuracy", "colour_accuracy", "shape_accuracy", "count_accuracy"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert (tmp_path / "saved_model" / "saved_model.pb").is_file()
    assert seconds < 60, seconds
