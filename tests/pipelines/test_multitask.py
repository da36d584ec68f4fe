"""task=multitask: config errors before TF, the scenes with every target, the weighted loss
equal to the configured combination of the heads' losses, one head per output for both image
encoders, the single-head controls, one run of the whole path whose metrics name every head
and whose SavedModel serves every head's outputs in a fresh process that imports only
TensorFlow and through `pipelines.predict`, and (slow) the CLI smoke runs."""
import io
import json
import math
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from PIL import Image

from pipelines.config import ConfigError, check, register_schemas
from pipelines.data.synthetic import SyntheticSource
from pipelines.tasks import build_task
from pipelines.tasks.captioning import caption_loss
from pipelines.tasks.segmentation import mask_loss
from tests.conftest import REPO

register_schemas()
TINY_TASK = ["task.image_size=32", "task.heads.mask.filters=4", "task.heads.caption.memory_dim=8",
             "task.heads.caption.caption_length=12",
             "task.heads.caption.decoder_options.lstm.units=8",
             "task.heads.caption.decoder_options.lstm.embedding_dim=8", "data.limit=24"]
SMALL = {"cnn": ["model.filters=[4,8]"],
         "vit": ["model.hidden_dim=8", "model.intermediate_dim=8", "model.num_layers=1",
                 "model.num_heads=2", "model.patch_size=8"]}
TINY = [*SMALL["cnn"], *TINY_TASK]
CONTROL = {"shape": ["~task.heads.mask", "~task.heads.caption"],
           "mask": ["~task.heads.shape", "~task.heads.caption"],
           "caption": ["~task.heads.shape", "~task.heads.mask"]}


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=multitask", "model=cnn", "logger=none",
                                            "trainer.verbose=false", *overrides])


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- config, no TF
@pytest.mark.parametrize("overrides,message", [
    (["~task.heads.shape", "~task.heads.mask", "~task.heads.caption"],
     r"task.heads is empty: task=multitask needs at least one head"),
    (["task.heads.caption.kind=captions"], "task.heads.caption.kind=captions is not a head kind; "
                                           "kinds: classification, segmentation, caption"),
    (["task.heads.shape.kind=null"], "task.heads.shape has no kind, and its name shape is not a "
                                     "head kind"),
    (["task.heads.mask.weight=0"], r"task.heads.mask.weight must be > 0 .* received "
                                   r"task.heads.mask.weight=0.0"),
    (["task.heads.shape.weight=-1"], "task.heads.shape.weight must be > 0"),
    (["task.heads.mask.metric=bleu4"], "task.heads.mask.metric=bleu4 is not a metric of a "
                                       "segmentation head; its metrics: mean_iou, pixel_accuracy"),
    (["task.heads.mask.loss=focal"], "task.heads.mask.loss=focal is not a loss of a segmentation "
                                     "head; its losses: cross_entropy, dice, both"),
    (["task.heads.shape.filters=8"], "task.heads.shape.filters has no effect on a classification "
                                     "head"),
    (["task.heads.caption.decoder=cnn"], "task.heads.caption.decoder=cnn is not a caption "
                                         "decoder; valid: gru, lstm, transformer"),
    (["+task.heads.caption.decoder_options.lstm.num_layers=2"],
     r"decoder_options.lstm has keys \['num_layers'\] that a caption decoder does not read"),
    (["task.monitor=val_shape_mean_iou"], "task.monitor=val_shape_mean_iou is not logged by "
                                          "these heads; it can monitor: val_loss"),
    (["data=files", "data.train=x"], "task=multitask reads the format labelled_scenes .* which "
                                     "data=files cannot read"),
])
def test_bad_config_is_one_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check(_cfg(*overrides))


def test_a_head_without_kind_is_of_the_kind_its_name_says_and_controls_drop_heads():
    check(_cfg("task.heads.caption.kind=null"))
    cfg = _cfg(*CONTROL["caption"], "task.monitor=val_caption_bleu4")
    check(cfg)
    assert list(cfg.task.heads) == ["caption"]


def test_the_experiment_header_commands_compose_the_run_and_its_single_head_controls():
    import shlex

    text = (REPO / "conf" / "experiment" / "scenes_multitask.yaml").read_text()
    commands = [shlex.split(line.split("#", 1)[1], comments=True)
                for line in text.splitlines() if "python -m pipelines experiment=" in line]
    heads = []
    for command in commands:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=command[3:])
        check(cfg)
        heads.append(list(cfg.task.heads))
        assert (cfg.trainer.epochs, cfg.trainer.steps_per_epoch) == (8, 100)  # one budget
    assert heads == [["shape", "mask", "caption"], ["shape"], ["mask"], ["caption"]]


def test_config_errors_come_before_tensorflow_is_imported():
    script = textwrap.dedent(f"""
        import sys
        from hydra import compose, initialize_config_dir
        from pipelines.config import ConfigError, check, register_schemas
        register_schemas()
        with initialize_config_dir({str(REPO / "conf")!r}, version_base="1.3"):
            cfg = compose("config", overrides=["task=multitask", "model=vit",
                                               "task.heads.caption.weight=0"])
        try:
            check(cfg)
        except ConfigError:
            assert "tensorflow" not in sys.modules
            print("refused")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.stdout.strip() == "refused", out.stderr[-2000:]


# ----------------------------------------------------------------------------- data
def test_labelled_scenes_hold_every_target_of_the_same_scenes():
    source = SyntheticSource(limit=12)
    scenes = source.read("labelled_scenes")
    masks, captions = source.read("image_masks"), source.read("image_captions")
    labels = SyntheticSource(num_train=12, num_validation=12, num_test=12).read("labelled_images")
    for name in ("train", "validation", "test"):
        images, targets = getattr(scenes, name)
        assert len(images) == 12 and set(targets[0]) == {"label", "mask", "captions"}
        np.testing.assert_array_equal(np.stack(images), np.stack(getattr(masks, name)[0]))
        np.testing.assert_array_equal(np.stack([t["mask"] for t in targets]),
                                      np.stack(getattr(masks, name)[1]))
        assert [t["captions"] for t in targets] == getattr(captions, name)[1]
        assert [t["label"] for t in targets] == list(getattr(labels, name)[1])


# ----------------------------------------------------------------------------- model and loss
@pytest.fixture(scope="module")
def tiny():
    """The tiny task, adapted, its model and one validation batch."""
    task = build_task(_cfg(*TINY, "task.heads.mask.weight=2", "task.heads.caption.weight=0.25"))
    splits = task.load()
    task.adapt(splits)
    keras.utils.set_random_seed(0)
    model = task.build_model()
    x, y = next(iter(task.dataset(splits.validation, training=False, batch_size=4)))
    return task, model, x, y


def test_the_weighted_loss_is_the_configured_combination_of_the_head_losses(tiny):
    task, model, x, y = tiny
    logits = model(x, training=False)
    shape = keras.losses.sparse_categorical_crossentropy(y["shape"], logits["shape"],
                                                         from_logits=True).numpy()
    mask = mask_loss(y["mask"], logits["mask"], "cross_entropy",
                     task.heads[1].num_classes).numpy()
    caption = caption_loss(y["caption"], logits["caption"]).numpy()
    loss = task.loss(y, logits).numpy()
    assert loss.shape == (4,)
    np.testing.assert_allclose(loss, 1.0 * shape + 2.0 * mask + 0.25 * caption, rtol=1e-6)
    stats = {k: (float(t), float(c)) for k, (t, c) in task.stats(y, logits).items()}
    assert set(stats) == {f"{head}_{name}" for head in ("shape", "mask", "caption")
                          for name in ("loss", "accuracy")}
    np.testing.assert_allclose(stats["mask_loss"], (mask.sum(), 4.0), rtol=1e-6)
    assert stats["mask_accuracy"][1] == 4 * 32 * 32  # every pixel of the 4 scenes


def test_one_output_per_head_with_static_shapes(tiny):
    task, model, x, y = tiny
    assert set(model.input) == {"image", "caption_in"}
    assert x["image"].shape == (4, 32, 32, 3) and x["caption_in"].shape == (4, 12)
    logits = model(x)
    classes, vocabulary = len(task.heads[0].label_names), task.heads[2].text.tokenizer.vocabulary_size()
    assert logits["shape"].shape == (4, classes)
    assert logits["mask"].shape == (4, 32, 32, task.heads[1].num_classes)
    assert logits["caption"].shape == (4, 12, vocabulary)
    assert all(v.dtype == tf.float32 for v in logits.values())
    train_x, train_y = next(iter(task.dataset(task.load().train, training=True, batch_size=8)))
    assert train_x["image"].shape == (8, 32, 32, 3) and train_y["caption"].shape == (8, 12)


def test_the_vit_tokens_feed_every_head():
    task = build_task(_cfg("model=vit", *SMALL["vit"], *TINY_TASK))
    splits = task.load()
    task.adapt(splits)
    model = task.build_model()  # 32 / 8: a 4 x 4 grid of tokens after the class token
    x, _ = next(iter(task.dataset(splits.test, training=False, batch_size=2)))
    logits = model(x)
    assert logits["mask"].shape == (2, 32, 32, task.heads[1].num_classes)
    assert model.get_layer("mask").get_layer("token_grid").output.shape == (None, 4, 4, 8)
    outputs = task.predict(model, task.images(splits.test)[:3])
    assert outputs["caption"].shape == (3,) and outputs["mask"].shape == (3, 32, 32)


def test_a_control_is_the_same_task_with_one_head():
    task = build_task(_cfg(*TINY, *CONTROL["mask"], "task.monitor=val_mask_mean_iou"))
    splits = task.load()
    task.adapt(splits)
    model = task.build_model()
    assert list(model.output) == ["mask"] and set(model.input) == {"image"}
    x, y = next(iter(task.dataset(splits.validation, training=False, batch_size=2)))
    np.testing.assert_allclose(task.loss(y, model(x)).numpy(),
                               mask_loss(y["mask"], model(x)["mask"], "cross_entropy",
                                         task.heads[0].num_classes).numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------- whole path
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run of the whole path (2 steps, export), two PNGs, what the task serves."""
    from pipelines.run import execute

    tmp_path = tmp_path_factory.mktemp("multitask")
    cfg = _cfg(*TINY, "trainer.epochs=1", "trainer.steps_per_epoch=2", "trainer.eval_steps=1",
               "trainer.batch_size=8", "decode.beam_size=2")
    check(cfg)
    result = execute(cfg, tmp_path / "run")
    images = [_png(result.task.images(result.task.load().test)[0]),
              _png(np.full((40, 30, 3), 90, np.uint8))]
    files = []
    for name, data in zip("ab", images):
        (tmp_path / f"{name}.png").write_bytes(data)
        files.append(tmp_path / f"{name}.png")
    return result, files, result.task.serve_in_process(result.model, images)


def test_metrics_name_every_head_and_the_objective_is_their_weighted_mean(run):
    result, _, _ = run
    metrics = result.metrics
    assert list(metrics) == ["objective", "shape_accuracy", "shape_top5_accuracy",
                             "mask_mean_iou", "mask_pixel_accuracy", "mask_dice",
                             "caption_bleu4", "caption_bleu1"]
    expected = (1.0 * metrics["shape_accuracy"] + 1.0 * metrics["mask_mean_iou"]
                + 0.5 * metrics["caption_bleu4"] / 100) / 2.5
    assert metrics["objective"] == pytest.approx(expected)
    assert json.loads((result.run_dir / "metrics.json").read_text()) == metrics
    history = json.loads((result.run_dir / "checkpoints" / "trainer_state.json").read_text())["history"]
    assert {"val_objective", "val_caption_bleu4", "val_mask_loss", "train_shape_accuracy"} <= set(history[0])
    samples = json.loads((result.run_dir / "samples.json").read_text())
    assert {"shape", "shape_truth", "mask_pixel_accuracy", "caption", "caption_references"} <= set(samples[0])


def test_export_serves_every_head_in_a_fresh_process_that_imports_only_tensorflow(run):
    result, files, expected = run
    assert set(expected) == {"shape", "shape_probabilities", "mask", "caption"}
    assert expected["mask"].shape == (2, 32, 32) and expected["mask"].dtype == np.int32
    np.testing.assert_allclose(expected["shape_probabilities"].sum(-1), 1.0, atol=1e-5)
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        loaded = tf.saved_model.load({str(result.run_dir / "saved_model")!r})
        serve = loaded.signatures["serving_default"]
        assert list(serve.structured_input_signature[1]) == ["image_bytes"]
        images = tf.constant([open(p, "rb").read() for p in {[str(f) for f in files]!r}])
        out = serve(image_bytes=images)
        assert not [m for m in sys.modules if m.startswith(("pipelines", "keras_hub"))]
        print(json.dumps({{"shape": [x.decode() for x in out["shape"].numpy()],
                          "shape_probabilities": out["shape_probabilities"].numpy().tolist(),
                          "mask": out["mask"].numpy().tolist(),
                          "caption": [x.decode() for x in out["caption"].numpy()]}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=180, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    served = json.loads(out.stdout.strip().splitlines()[-1])
    assert served["shape"] == [x.decode() for x in expected["shape"]]
    assert served["caption"] == [x.decode() for x in expected["caption"]]
    np.testing.assert_allclose(served["shape_probabilities"], expected["shape_probabilities"],
                               atol=1e-5)
    np.testing.assert_array_equal(served["mask"], expected["mask"])


def test_predict_prints_every_head_per_image(run, capsys):
    from pipelines.predict import main

    result, files, expected = run
    assert main([str(result.run_dir / "saved_model"), *map(str, files)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [row["input"] for row in rows] == [str(f) for f in files]
    assert [row["shape"] for row in rows] == [x.decode() for x in expected["shape"]]
    assert [row["caption"] for row in rows] == [x.decode() for x in expected["caption"]]
    np.testing.assert_array_equal(rows[0]["mask"], expected["mask"][0])


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn", "vit"])
def test_smoke_run_through_the_cli_under_a_minute(model, tmp_path):
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pipelines", "task=multitask", f"model={model}",
                          "debug=smoke", "logger=none", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    seconds = time.monotonic() - start
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"objective", "shape_accuracy", "mask_mean_iou", "caption_bleu4"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert (tmp_path / "saved_model" / "saved_model.pb").is_file()
    assert seconds < 60, seconds
