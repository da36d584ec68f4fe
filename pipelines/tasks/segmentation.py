"""`task=segmentation`: a class per pixel. Metrics: `mean_iou`, `pixel_accuracy`, `dice`;
with exactly 2 classes also `f1` and `auc` of the foreground class 1 (the vessel-segmentation
literature's scores, e.g. DRIVE).

Raw examples are (image, mask) pairs: uint8 images (H, W, 3) of any size and masks (H, W)
of class indices. The label 255 is void everywhere (a source marks pixels outside a region
of interest with it), and `data.ignore_index` names one more label to leave out; both are
excluded from the loss and from the metrics, which come from one confusion matrix
(`pipelines.metrics`); `f1` and `auc` use the same valid pixels (inside the region, not
ignored). All metrics are scored at `task.image_size`, not at the images' native
resolution. Images are resized to `task.image_size` (bilinear, antialiased) and
masks likewise with nearest neighbours, once, before training.

The export decodes encoded JPEG/PNG bytes, resizes them in the graph in the same way and
returns the argmax mask, int32 (B, image_size, image_size).
"""
from __future__ import annotations

import logging
import pathlib

import keras
import numpy as np
import tensorflow as tf

from pipelines.data import Splits
from pipelines.data.images import VOID, decode_images, pixel_statistics, resize_image, resize_mask
from pipelines.metrics import confusion_matrix, per_class_dice, per_class_iou, segmentation_scores
from pipelines.config import option_value
from pipelines.tasks.base import Task, plain

log = logging.getLogger(__name__)


class Segmentation(Task):
    """An image in, a mask of class indices out, by a U-Net."""

    # ------------------------------------------------------------------ data
    def adapt(self, splits: Splits) -> None:
        self.image_size = int(self.task_cfg.image_size)
        self.ignore_index = self.data.ignore_index
        self._prepared: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        images, masks = self.prepare(splits.train)
        self.num_classes = mask_classes(
            masks, {name: self.prepare(pair)[1] for name, pair in
                    (("validation", splits.validation), ("test", splits.test)) if pair is not None},
            self.ignore_index)
        counts = np.bincount(masks[masks != VOID].ravel(), minlength=self.num_classes)
        self.pixel_mean, self.pixel_variance = pixel_statistics(images)
        log.info("segmentation: %d classes, pixel shares %s", self.num_classes,
                 np.round(counts / counts.sum(), 3).tolist())

    def prepare(self, pair) -> tuple[np.ndarray, np.ndarray]:
        """(images, masks) lists -> uint8 (N, S, S, 3) and uint8 (N, S, S), VOID for ignored
        pixels; computed once per split."""
        key = id(pair[0])
        if key not in self._prepared:
            size = self.image_size
            images = np.stack([resize_image(image, size) for image in pair[0]]).astype(np.uint8)
            self._prepared[key] = (images, prepare_masks(pair[1], size, self.ignore_index))
        return self._prepared[key]

    def augment(self, image, mask):
        """Random horizontal flip of image and mask together, and a random brightness shift
        of at most `task.brightness` (pixel values, 0-255 scale) on the image.

        The mask rides along as a fourth channel through the flip, so the two cannot drift
        apart (tested)."""
        stacked = tf.concat([tf.cast(image, tf.float32), tf.cast(mask, tf.float32)[..., None]], -1)
        stacked = tf.image.random_flip_left_right(stacked)  # (S, S, 4)
        image, mask = stacked[..., :3], tf.cast(stacked[..., 3], tf.uint8)
        brightness = float(self.task_cfg.brightness)
        if brightness:
            shift = tf.random.uniform([], -brightness, brightness)
            image = tf.clip_by_value(image + shift, 0.0, 255.0)
        return image, mask

    def dataset(self, pair, training, batch_size):
        images, masks = self.prepare(pair)
        ds = tf.data.Dataset.from_tensor_slices((images, masks))
        if training:
            ds = ds.shuffle(len(images), seed=self.seed, reshuffle_each_iteration=True).repeat()
            if self.task_cfg.augment:
                ds = ds.map(plain(self.augment), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=training)
        ds = ds.map(plain(lambda x, y: (tf.cast(x, tf.float32), tf.cast(y, tf.int32))),
                    num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    # ------------------------------------------------------------------ model
    def build_model(self) -> keras.Model:
        return self.backbone.segmenter(self.image_size, self.num_classes,
                                                 mean=self.pixel_mean, variance=self.pixel_variance)

    def loss(self, y_true, y_pred):
        """Per image: cross-entropy averaged over its valid pixels, soft Dice (1 - mean over
        classes of (2 |P.Y| + 1) / (|P| + |Y| + 1) on valid pixels), or their sum."""
        return mask_loss(y_true, y_pred, option_value(self.task_cfg.loss), self.num_classes)

    def stats(self, y_true, y_pred):
        """Pixel accuracy on valid pixels: monitoring only; the result is `evaluate`."""
        return pixel_accuracy(y_true, y_pred)

    # ------------------------------------------------------------------ results
    def predict_masks(self, model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 (N, S, S, 3) -> int32 (N, S, S) argmax masks."""
        return self.predict(model, images, batch_size)[0]

    def predict(self, model, images: np.ndarray, batch_size: int = 64,
                foreground: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 (N, S, S, 3) -> int32 (N, S, S) argmax masks, and with `foreground` the
        float32 (N, S, S) softmax probability of class 1 (else None), in one pass."""
        def forward(x):
            logits = model(x, training=False)
            outputs = [tf.argmax(logits, -1, output_type=tf.int32)]
            if foreground:
                outputs.append(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)[..., 1])
            return outputs

        forward = tf.function(forward, reduce_retracing=True, autograph=False)
        parts = [[t.numpy() for t in forward(tf.cast(images[start:start + batch_size],
                                                     tf.float32))]
                 for start in range(0, len(images), batch_size)]
        shape = (0, self.image_size, self.image_size)
        masks = np.concatenate([p[0] for p in parts]) if parts else np.zeros(shape, np.int32)
        if not foreground:
            return masks, None
        return masks, (np.concatenate([p[1] for p in parts]) if parts
                       else np.zeros(shape, np.float32))

    def evaluate(self, model, pair, batch_size):
        images, masks = self.prepare(pair)
        binary = self.num_classes == 2
        predicted, foreground = self.predict(model, images, batch_size, foreground=binary)
        scores, self.samples = mask_scores(masks, predicted, foreground, self.num_classes)
        return scores

    def pictures(self, model, splits, directory):
        """`overlay_<i>.png`: image | truth | prediction, classes in fixed colours."""
        from PIL import Image

        count = min(int(self.task_cfg.num_pictures), len(splits.validation[0]))
        if count == 0:
            return []
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        images, masks = self.prepare(splits.validation)
        images, masks = images[:count], masks[:count]
        predicted = self.predict_masks(model, images)
        scale = max(1, 192 // self.image_size)
        paths = []
        for index in range(count):
            row = np.concatenate([images[index], overlay(images[index], masks[index]),
                                  overlay(images[index], predicted[index])], axis=1)
            picture = Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale),
                                                  Image.NEAREST)
            path = directory / f"overlay_{index}.png"
            picture.save(path)
            paths.append(path)
        return paths

    # ------------------------------------------------------------------ serving
    def serving_fn(self, model):
        size = self.image_size

        def serve(image_bytes):
            pixels = decode_images(image_bytes, size)  # (B, S, S, 3) float32
            logits = model(pixels, training=False)  # (B, S, S, C)
            return {"mask": tf.argmax(logits, axis=-1, output_type=tf.int32)}

        return serve

    def serving_signature(self):
        return [tf.TensorSpec([None], tf.string, name="image_bytes")]


def prepare_masks(masks, size: int, ignore_index: int | None) -> np.ndarray:
    """Masks of class indices (any sizes) -> uint8 (N, size, size), nearest-neighbour resized,
    `ignore_index` pixels set to VOID; a ValueError for labels above VOID."""
    masks = np.stack([resize_mask(mask, size) for mask in masks]).astype(np.int64)
    if ignore_index is not None:
        masks[masks == ignore_index] = VOID
    if masks.max(initial=0) > VOID:
        raise ValueError(f"mask labels must be below {VOID}; found {masks.max()}")
    return masks.astype(np.uint8)


def mask_classes(train: np.ndarray, others: dict[str, np.ndarray],
                 ignore_index: int | None) -> int:
    """The number of classes (at least 2) of the prepared training masks: their largest
    label + 1; a ValueError when they hold no labelled pixel, or when the masks of another
    split (`others`: {split name: masks}) hold a label above it."""
    labels = np.unique(train[train != VOID])
    if labels.size == 0:
        raise ValueError("the training masks hold no labelled pixel (all void or "
                         f"data.ignore_index={ignore_index})")
    num_classes = max(int(labels.max()) + 1, 2)
    for split_name, masks in others.items():
        unknown = [int(v) for v in np.unique(masks) if v != VOID and v >= num_classes]
        if unknown:
            raise ValueError(
                f"the {split_name} masks have labels {unknown[:5]} above the largest "
                f"training label {num_classes - 1}; set data.ignore_index or check the masks")
    return num_classes


def mask_loss(y_true, y_pred, kind: str, num_classes: int):
    """Per image (B,), over its valid (not VOID) pixels: `kind` "cross_entropy" (averaged over
    them), "dice" (soft Dice, `soft_dice_loss`) or "both" (their sum)."""
    valid = tf.cast(tf.not_equal(y_true, VOID), tf.float32)  # (B, S, S)
    labels = tf.where(tf.not_equal(y_true, VOID), tf.cast(y_true, tf.int32), 0)
    total = 0.0
    if kind in ("cross_entropy", "both"):
        pixel_loss = keras.losses.sparse_categorical_crossentropy(labels, y_pred,
                                                                  from_logits=True)
        total += (tf.reduce_sum(pixel_loss * valid, axis=[1, 2])
                  / tf.maximum(tf.reduce_sum(valid, axis=[1, 2]), 1.0))
    if kind in ("dice", "both"):
        total += soft_dice_loss(labels, y_pred, valid, num_classes)
    return total


def pixel_accuracy(y_true, y_pred) -> dict:
    """{"accuracy": (correct valid pixels, valid pixels)}: monitoring statistics."""
    valid = tf.cast(tf.not_equal(y_true, VOID), tf.float32)
    correct = tf.cast(tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32),
                               tf.cast(y_true, tf.int32)), tf.float32)
    return {"accuracy": (tf.reduce_sum(correct * valid), tf.reduce_sum(valid))}


def mask_scores(masks: np.ndarray, predicted: np.ndarray, foreground: np.ndarray | None,
                num_classes: int) -> tuple[dict[str, float], list[dict]]:
    """The segmentation metrics of argmax masks against the true ones (VOID left out):
    `segmentation_scores`, with 2 classes also `foreground_scores` of the class-1
    probabilities `foreground`; and the per-class IoU rows of samples.json."""
    confusion = confusion_matrix(masks, predicted, num_classes, ignore_index=VOID)
    samples = [{"class": c, "iou": None if np.isnan(v) else round(float(v), 4)}
               for c, v in enumerate(per_class_iou(confusion))]
    scores = segmentation_scores(confusion)
    if num_classes == 2:
        scores.update(foreground_scores(confusion, masks, foreground))
    return scores, samples


# ROC AUC reads at most this many valid pixels: beyond (e.g. many large images), a seeded
# random subset of this size stands for them, so that sklearn's sort stays fast and small;
# its sampling error is about 1e-4 at this size (Hanley-McNeil, AUC 0.98, 13% positives).
AUC_MAX_PIXELS = 5_000_000


def foreground_scores(confusion: np.ndarray, masks: np.ndarray, foreground: np.ndarray,
                      max_pixels: int = AUC_MAX_PIXELS) -> dict[str, float]:
    """The binary-segmentation literature's scores of class 1 (DRIVE's vessels) over the
    valid pixels (masks != VOID: inside the region, not `data.ignore_index`):

    - `f1`: 2 TP / (2 TP + FP + FN) of class 1 from the (2, 2) `confusion` (the argmax
      masks), i.e. its Dice; 0 when class 1 is in neither truth nor prediction (as sklearn's
      `f1_score`).
    - `auc`: `sklearn.metrics.roc_auc_score` of the class-1 probabilities `foreground`
      (same shape as `masks`) against the true masks. Over `max_pixels` valid pixels it
      scores a deterministic random subset of that many (seed 0). Left out, with a warning,
      when the valid truth holds only one class (undefined; JSON has no NaN).
    """
    from sklearn.metrics import roc_auc_score

    scores = {"f1": float(np.nan_to_num(per_class_dice(confusion)[1]))}
    valid = np.asarray(masks) != VOID
    truth = np.asarray(masks)[valid] == 1
    probability = np.asarray(foreground, np.float32)[valid]
    if truth.size > max_pixels:
        keep = np.random.default_rng(0).choice(truth.size, max_pixels, replace=False)
        truth, probability = truth[keep], probability[keep]
    if truth.all() or not truth.any():
        log.warning("auc left out of the metrics: the evaluated pixels hold only class %d",
                    int(truth.any()))
    else:
        scores["auc"] = float(roc_auc_score(truth, probability))
    return scores


def soft_dice_loss(labels, logits, valid, num_classes: int):
    """1 - mean over classes of the smoothed soft Dice, per image (B,); only `valid` pixels."""
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)  # (B, S, S, C)
    weights = valid[..., None]  # (B, S, S, 1)
    truth = tf.one_hot(labels, num_classes) * weights
    probabilities = probabilities * weights
    intersection = tf.reduce_sum(probabilities * truth, axis=[1, 2])  # (B, C)
    sizes = tf.reduce_sum(probabilities, axis=[1, 2]) + tf.reduce_sum(truth, axis=[1, 2])
    return 1.0 - tf.reduce_mean((2.0 * intersection + 1.0) / (sizes + 1.0), axis=-1)


_PALETTE = np.array([
    [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
], np.float32)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 (S, S, 3) with each class's colour blended in; class 0 and void stay as is."""
    colours = _PALETTE[np.asarray(mask, np.int64) % len(_PALETTE)]  # (S, S, 3)
    painted = (mask != 0) & (mask != VOID)
    blended = image.astype(np.float32)
    blended[painted] = (1 - alpha) * blended[painted] + alpha * colours[painted]
    return np.clip(blended, 0, 255).astype(np.uint8)
