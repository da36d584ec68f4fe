"""The segmentation task: masks stay in register, void pixels never count, the U-Net learns,
its SavedModel serves the same masks, and the file and TFDS readers pair what they should."""
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from PIL import Image

from pipelines.config import register_schemas
from pipelines.data import Splits
from pipelines.data.files import DataFileError, FilesSource
from pipelines.run import execute
from pipelines.tasks.segmentation import VOID, Segmentation, foreground_scores
from pipelines.tasks import build_task
from tests.conftest import REPO

register_schemas()


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=segmentation", "model=unet", "logger=none",
                                            "trainer.verbose=false", *overrides])


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _striped(count, size=16, seed=0):
    """Images whose red minus green channel is 20 x the mask label; masks are asymmetric."""
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 4, (count, size, size)).astype(np.uint8)
    images = np.zeros((count, size, size, 3), np.uint8)
    images[..., 1] = 60
    images[..., 0] = 60 + 20 * masks
    images[..., 2] = rng.integers(0, 255, (count, size, size))
    return list(images), list(masks)


def _task(*overrides, splits):
    task = build_task(_cfg(*overrides))
    task.adapt(splits)
    return task


# ----------------------------------------------------------------------------- data and loss
def test_augmentation_keeps_masks_in_register():
    images, masks = _striped(32)
    task = _task("task.image_size=16", "task.augment=true",
                 splits=Splits((images, masks), (images[:4], masks[:4])))
    flipped = unflipped = 0
    for x, y in task.dataset((images, masks), training=True, batch_size=8).take(12):
        x, y = x.numpy(), y.numpy()
        # Brightness shifts every channel alike, so red - green still encodes the label.
        np.testing.assert_array_equal(np.rint((x[..., 0] - x[..., 1]) / 20), y)
        for mask in y:
            index = next(i for i, m in enumerate(masks) if (m == mask).all() or (m[:, ::-1] == mask).all())
            flipped += int((masks[index][:, ::-1] == mask).all())
            unflipped += int((masks[index] == mask).all())
    assert flipped > 10 and unflipped > 10  # the flip happens, and not always


@pytest.mark.parametrize("kind", ["cross_entropy", "dice", "both"])
def test_void_and_ignore_index_pixels_never_change_the_loss(kind):
    images, masks = _striped(4)
    masks[0][:4] = 3  # the label that data.ignore_index=3 turns into void
    task = _task("task.image_size=16", f"task.loss={kind}", "data.ignore_index=3",
                 splits=Splits((images, masks), (images, masks)))
    _, y = task.prepare((images, masks))
    assert task.num_classes == 3 and (y[0][:4] == VOID).all()
    logits = tf.random.normal((4, 16, 16, 3), seed=1)
    changed = tf.where(tf.constant(y == VOID)[..., None], 50.0 * tf.random.normal((4, 16, 16, 3)), logits)
    base = task.loss(tf.constant(y), logits).numpy()
    np.testing.assert_allclose(task.loss(tf.constant(y), changed).numpy(), base, rtol=1e-5)
    all_void = np.full_like(y, VOID)
    assert np.isfinite(task.loss(tf.constant(all_void), logits).numpy()).all()


def test_dice_loss_is_zero_for_a_confident_perfect_prediction():
    images, masks = _striped(2)
    task = _task("task.image_size=16", "task.loss=dice", splits=Splits((images, masks), (images, masks)))
    _, y = task.prepare((images, masks))
    logits = 100.0 * tf.one_hot(y, task.num_classes)
    np.testing.assert_allclose(task.loss(tf.constant(y), logits).numpy(), 0.0, atol=1e-5)
    assert (task.loss(tf.constant(y), -logits).numpy() > 0.9).all()


@pytest.mark.parametrize("monitor,mode", [("val_loss", "min"), ("loss", "min"),
                                          ("val_accuracy", "max"), ("val_bleu", "max")])
def test_monitor_mode_is_min_for_a_loss_and_max_for_a_metric(monitor, mode):
    assert build_task(_cfg(f"task.monitor={monitor}")).monitor_mode == mode


# ----------------------------------------------------------------------------- binary metrics
def test_binary_f1_and_auc_count_only_pixels_inside_the_region_and_not_ignored(tmp_path):
    # One 4 x 4 image: the region mask leaves out row 0, data.ignore_index=2 one more pixel.
    # The 11 valid pixels: vessels (1) with p(1) 0.9 0.8 0.6 0.3, background with 0.7 0.4 0.2
    # 0.1 0.1 0.05 0.05. Argmax: TP 3, FP 1 (0.7), FN 1 (0.3): F1 = 6 / 8. AUC: of the 4 x 7
    # (vessel, background) pairs, the vessel ranks higher in 7 + 7 + 6 + 5 = 25.
    truth = np.array([[1, 1, 0, 0], [1, 0, 0, 2], [1, 0, 1, 0], [0, 1, 0, 0]], np.uint8)
    region = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], np.uint8) * 255
    probability = np.array([[0.01, 0.01, 0.99, 0.99],   # outside: all wrong, would count
                            [0.9, 0.7, 0.4, 0.99],      # (1, 3) ignored, wrong
                            [0.8, 0.2, 0.6, 0.1],
                            [0.1, 0.3, 0.05, 0.05]])
    root = tmp_path / "drive"
    for folder, array in (("images", np.zeros((4, 4, 3))), ("masks", truth), ("fov", region)):
        (root / folder).mkdir(parents=True)
        Image.fromarray(array.astype(np.uint8)).save(root / folder / "01.png")
    pair = FilesSource(train=str(root), validation=str(root), region_dir="fov",
                       ignore_index=2).read("image_masks").validation
    task = _task("task.image_size=4", "data.ignore_index=2", splits=Splits(pair, pair))
    assert task.num_classes == 2 and (task.prepare(pair)[1] != VOID).sum() == 11
    logits = np.stack([np.zeros((4, 4)), np.log(probability / (1 - probability))], -1)[None]
    metrics = task.evaluate(lambda x, training: tf.constant(logits, tf.float32), pair, 8)
    assert set(metrics) == {"mean_iou", "pixel_accuracy", "dice", "f1", "auc"}
    np.testing.assert_allclose(metrics["f1"], 6 / 8)
    np.testing.assert_allclose(metrics["auc"], 25 / 28)
    np.testing.assert_allclose(metrics["pixel_accuracy"], 9 / 11)
    np.testing.assert_allclose(metrics["dice"], (6 / 8 + 12 / 14) / 2)  # both classes, as before


def test_auc_subsamples_huge_pixel_counts_deterministically_and_is_left_out_when_undefined():
    rng = np.random.default_rng(1)
    masks = rng.integers(0, 2, (4, 64, 64)).astype(np.uint8)
    masks[0, :8] = VOID
    foreground = np.clip(0.3 * masks + rng.uniform(0, 0.7, masks.shape), 0, 1)
    confusion = np.array([[10, 0], [0, 10]])
    full = foreground_scores(confusion, masks, foreground)["auc"]
    small = [foreground_scores(confusion, masks, foreground, max_pixels=5000)["auc"]
             for _ in range(2)]
    assert small[0] == small[1] != full and abs(small[0] - full) < 0.02
    all_background = np.where(masks == VOID, VOID, 0).astype(np.uint8)
    scores = foreground_scores(np.array([[10, 0], [0, 0]]), all_background, foreground)
    assert scores == {"f1": 0.0}


# ----------------------------------------------------------------------------- learning + export
def _serve_in_fresh_process(saved_model, images: list[bytes]):
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        serve = tf.saved_model.load({str(saved_model)!r}).signatures["serving_default"]
        out = serve(image_bytes=tf.constant({images!r}))
        assert not any(m.startswith(("pipelines", "layers")) for m in sys.modules), "package imported"
        print(json.dumps({{"mask": out["mask"].numpy().tolist(), "dtype": out["mask"].dtype.name}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd="/", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_export_serves_the_same_masks_in_a_fresh_process(tmp_path):
    cfg = _cfg("debug=smoke", "task.image_size=32", "model.filters=4", "model.depth=2",
               "data.limit=64", "task.num_pictures=2")
    result = execute(cfg, tmp_path)
    assert set(result.metrics) == {"mean_iou", "pixel_accuracy", "dice"}
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["overlay_0.png", "overlay_1.png"]
    rng = np.random.default_rng(3)
    images = [_png(rng.integers(0, 255, (40, 56, 3))), _png(rng.integers(0, 255, (32, 32, 3))),
              _png(rng.integers(0, 255, (70, 20)))]  # any size, grey too
    expected = result.task.serve_in_process(result.model, images)["mask"]
    served = _serve_in_fresh_process(tmp_path / "saved_model", images)
    assert served["dtype"] == "int32" and np.array(served["mask"]).shape == (3, 32, 32)
    np.testing.assert_array_equal(served["mask"], expected)


@pytest.mark.slow
def test_unet_learns_synthetic_scenes(tmp_path):
    # The default sizes for 7 of the default 10 epochs (about 5 minutes on 2 CPU cores).
    cfg = _cfg("data.num_validation=100", "data.num_test=200", "trainer.epochs=7",
               "trainer.early_stopping_patience=null",
               "export.enabled=false", "task.num_pictures=0")
    result = execute(cfg, tmp_path)
    # Background is ~0.89 of the pixels: all-background scores mean IoU ~0.13, and telling
    # shapes from background without their kinds ~0.25.
    assert result.metrics["mean_iou"] > 0.6, result.metrics


# ----------------------------------------------------------------------------- files
def _write_folder(root, masks, suffix=".png", mask_mode="L"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, mask in enumerate(masks):
        Image.fromarray(np.full(mask.shape + (3,), 40 * index, np.uint8)).save(root / "images" / f"im{index}{suffix}")
        Image.fromarray(mask.astype(np.uint8), mode=mask_mode).save(root / "masks" / f"im{index}.png")


def test_images_and_masks_folders_pair_by_stem_and_binary_masks_become_0_1(tmp_path):
    binary = [np.where(np.eye(6, dtype=bool), 255, 0) for _ in range(3)]
    _write_folder(tmp_path / "bin", binary, suffix=".jpg")
    splits = FilesSource(train=str(tmp_path / "bin"), validation=str(tmp_path / "bin")).read("image_masks")
    assert len(splits.train[0]) == 3 and isinstance(splits.train[0][0], bytes)
    np.testing.assert_array_equal(splits.train[1][0], np.eye(6, dtype=np.uint8))
    # Class indices stay as they are, also from a palette image; 255 is kept as void with
    # data.ignore_index=255.
    indexed = [np.arange(36).reshape(6, 6) % 5 for _ in range(2)]
    _write_folder(tmp_path / "idx", indexed, mask_mode="L")
    palette = Image.fromarray(indexed[0].astype(np.uint8), mode="P")
    palette.putpalette([c for i in range(256) for c in (i * 7 % 256, 0, 0)])
    palette.save(tmp_path / "idx" / "masks" / "im1.png")
    splits = FilesSource(train=str(tmp_path / "idx"), validation=str(tmp_path / "idx")).read("image_masks")
    np.testing.assert_array_equal(splits.train[1][1], indexed[0])
    voids = [np.where(np.eye(4, dtype=bool), 255, 0) for _ in range(2)]
    _write_folder(tmp_path / "void", voids)
    splits = FilesSource(train=str(tmp_path / "void"), validation=str(tmp_path / "void"),
                         ignore_index=255).read("image_masks")
    assert set(np.unique(splits.train[1][0])) == {0, 255}


def test_folder_errors_name_the_file(tmp_path):
    _write_folder(tmp_path / "a", [np.zeros((4, 4)), np.zeros((4, 4))])
    (tmp_path / "a" / "masks" / "im1.png").unlink()
    with pytest.raises(DataFileError, match=r"im1.png: no mask with the pairing key 'im1' in .*masks"):
        FilesSource(train=str(tmp_path / "a")).read("image_masks")
    _write_folder(tmp_path / "b", [np.zeros((4, 4))])
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(
        tmp_path / "b" / "masks" / "im0.png")
    with pytest.raises(DataFileError, match=r"im0.png: expected a single-channel mask"):
        FilesSource(train=str(tmp_path / "b")).read("image_masks")
    _write_folder(tmp_path / "c", [np.zeros((4, 4))])
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "c" / "masks" / "im0.png")
    with pytest.raises(DataFileError, match=r"mask size \(5, 4\) differs from its image"):
        FilesSource(train=str(tmp_path / "c")).read("image_masks")
    with pytest.raises(DataFileError, match=r"data.mask_dir=labels: no such folder"):
        FilesSource(train=str(tmp_path / "c"), mask_dir="labels").read("image_masks")


def test_drive_pairs_by_key_binarises_and_voids_outside_the_field_of_view(shared_data):
    root = shared_data("semantic_segmentation/drive/training")
    splits = FilesSource(train=str(root), mask_dir="1st_manual", region_dir="mask",
                         pair_key=r"^(\d+)_", validation_fraction=0.2).read("image_masks")
    assert len(splits.train[0]) == 16 and len(splits.validation[0]) == 4
    mask = splits.train[1][0]
    assert mask.shape == (584, 565) and set(np.unique(mask)) == {0, 1, VOID}
    vessel_share = (mask == 1).sum() / (mask != VOID).sum()
    assert 0.05 < vessel_share < 0.25  # ~13% of field-of-view pixels are vessel
    assert (mask[0, 0] == VOID) and Image.open(io.BytesIO(splits.train[0][0])).format == "TIFF"


def test_camvid_with_ignore_index_trains_and_scores_eleven_classes(shared_data, tmp_path):
    root = shared_data("semantic_segmentation/camvid_segnet_val")
    cfg = _cfg("data=files", f"data.train={root}", "data.image_dir=val", "data.mask_dir=valannot",
               "data.ignore_index=11", "data.limit=24", "task.image_size=32", "model.filters=4",
               "model.depth=2", "trainer.epochs=1", "trainer.steps_per_epoch=2",
               "trainer.batch_size=8", "export.enabled=false", "task.num_pictures=1")
    result = execute(cfg, tmp_path)
    assert result.task.num_classes == 11  # Unlabelled (11) is void, not a class
    assert set(result.metrics) == {"mean_iou", "pixel_accuracy", "dice"}
    assert all(0 <= v <= 1 for v in result.metrics.values())


# ----------------------------------------------------------------------------- tfds
def test_tfds_oxford_iiit_pet_keeps_images_encoded_and_labels_as_they_are():
    import tensorflow_datasets as tfds

    from pipelines.data.tfds_source import TfdsSource

    rng = np.random.default_rng(0)
    examples = [{"image": _png(rng.integers(0, 255, (20, 30, 3))),
                 "segmentation_mask": _png(rng.integers(1, 4, (20, 30))), "label": 3}
                for _ in range(10)]
    signature = {"image": tf.TensorSpec([], tf.string), "segmentation_mask": tf.TensorSpec([], tf.string),
                 "label": tf.TensorSpec([], tf.int64)}

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        splits = TfdsSource(name="oxford_iiit_pet", download=False).read("image_masks")
    assert len(splits.train[0]) + len(splits.validation[0]) == 10 and len(splits.test[0]) == 10
    task = _task("task.image_size=16", splits=splits)
    images, masks = task.prepare(splits.test)
    assert images.shape == (10, 16, 16, 3) and set(np.unique(masks)) <= {1, 2, 3}
    assert task.num_classes == 4
