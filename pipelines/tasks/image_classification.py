"""`task=image_classification`: an image in, a class out. Metrics: `accuracy` and, with 5
or more classes, `top5_accuracy` (scikit-learn).

Raw inputs are uint8 images (H, W, 3), as a list of arrays (any sizes) or one array
(N, H, W, 3), or encoded image bytes; targets are label strings. Every image is resized to `task.image_size` with
the same op in training and in serving (`resize`), and the model normalises pixels itself
(a `Normalization` layer holding the training split's per-channel mean and variance), so
the SavedModel takes encoded image bytes of any size and needs no client-side preprocessing.
A streamed training folder (`data.streaming=true`) is a list of files, read and decoded by
the same ops in tf.data; its label names come from the list, its pixel statistics from the
sampled images' own files.
"""
from __future__ import annotations

import logging
import pathlib

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import accuracy_score, confusion_matrix, top_k_accuracy_score

import layers
from pipelines.data import Splits
from pipelines.data.images import (decode, decode_images, decode_pixels, pixel_statistics,
                                   resize)
from pipelines.data.streaming import StreamingSplit, example_dataset
from pipelines.tasks.base import Task, label_names, name_ids

log = logging.getLogger(__name__)


def augment(images: tf.Tensor, flip: bool = False, crop: bool = False,
            brightness: float = 0.0, seed: int | None = None) -> tf.Tensor:
    """Random training augmentation of a batch (B, S, S, 3) float32 in [0, 255], per image.

    flip: mirror left-right with probability 1/2. crop: pad by S / 8 (reflected) and cut
    an S x S window at a random offset. brightness: add a shift drawn from
    U(-brightness, brightness) * 255. Shapes stay static (B, S, S, 3).
    """
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    dynamic_batch = tf.shape(images)[0]
    make_seed = (lambda k: None) if seed is None else (lambda k: seed + k)
    if flip:
        flipped = tf.random.uniform([dynamic_batch], seed=make_seed(1)) < 0.5  # (B,)
        images = tf.where(flipped[:, None, None, None], tf.reverse(images, axis=[2]), images)
    if crop:
        pad = max(height // 8, 1)
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        offsets = tf.random.uniform([dynamic_batch, 2], 0, 2 * pad + 1, tf.int32,
                                    seed=make_seed(2))  # (B, 2)
        rows = offsets[:, :1] + tf.range(height)[None, :]  # (B, S)
        columns = offsets[:, 1:] + tf.range(width)[None, :]  # (B, S)
        images = tf.gather(padded, rows, axis=1, batch_dims=1)  # (B, S, S + 2p, 3)
        images = tf.gather(images, columns, axis=2, batch_dims=1)  # (B, S, S, 3)
    if brightness:
        shift = tf.random.uniform([dynamic_batch, 1, 1, 1], -brightness, brightness,
                                  seed=make_seed(3)) * 255.0
        images = tf.clip_by_value(images + shift, 0.0, 255.0)
    images.set_shape([batch, height, width, 3])
    return images


def classification_scores(truth: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """`accuracy` of the argmax of `probabilities` (N, C) against the class ids `truth` (N,),
    and with C >= 5 `top5_accuracy` (scikit-learn)."""
    num_classes = probabilities.shape[-1]
    metrics = {"accuracy": float(accuracy_score(truth, probabilities.argmax(-1)))}
    if num_classes >= 5:
        metrics["top5_accuracy"] = (1.0 if num_classes == 5 else float(
            top_k_accuracy_score(truth, probabilities, k=5, labels=np.arange(num_classes))))
    return metrics


class ImageClassification(Task):
    """An image in, a label out, from a CNN or ViT backbone with a dense head."""

    name = "image_classification"

    # -------------------------------------------------------------- data
    def adapt(self, splits: Splits) -> None:
        images = splits.train[0]
        self.image_size = int(self.task_cfg.image_size)
        self.label_names = label_names(splits)
        self.label_index = {name: i for i, name in enumerate(self.label_names)}
        # Per-channel statistics of a seeded sample of the resized training images.
        mean, variance = pixel_statistics(images, prepare=self._pixels)
        self.mean, self.variance = np.array(mean), np.array(variance)
        augment_cfg = self.task_cfg.augment
        log.info("%d classes, images resized to %d x %d, augmentation flip=%s crop=%s "
                 "brightness=%s", len(self.label_names), self.image_size, self.image_size,
                 augment_cfg.flip, augment_cfg.crop, augment_cfg.brightness)

    def _stack(self, images) -> np.ndarray:
        """Raw images -> one array (N, H, W, 3): as they are when they share a shape (resized
        in the tf.data pipeline), else each resized to (S, S) here (float32)."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return images
        if any(isinstance(image, bytes) for image in images):  # encoded: the serving decoder
            images = [tf.io.decode_image(image, channels=3, expand_animations=False).numpy()
                      if isinstance(image, bytes) else image for image in images]
        shapes = {np.shape(image) for image in images}
        for index, image in enumerate(images[:1] if len(shapes) == 1 else images):
            if np.ndim(image) != 3 or np.shape(image)[-1] != 3:
                raise ValueError(f"image {index} has shape {np.shape(image)}; expected "
                                 "(height, width, 3)")
        if len(shapes) == 1:
            return np.stack(images)
        size = self.image_size
        return np.stack([resize(image, size).numpy() for image in images])

    def _pixels(self, images) -> np.ndarray:
        """Raw images -> float32 (N, S, S, 3), as the model sees them."""
        stacked = self._stack(images)
        out = [resize(stacked[i:i + 256], self.image_size).numpy()
               for i in range(0, len(stacked), 256)]
        return np.concatenate(out) if out else np.zeros((0, self.image_size,
                                                         self.image_size, 3), np.float32)

    def _ids(self, labels) -> np.ndarray:
        return np.array([self.label_index[label] for label in labels], dtype="int32")

    def dataset(self, pair, training, batch_size):
        size, options = self.image_size, self.task_cfg.augment
        streamed = isinstance(pair, StreamingSplit)
        # Encoded images from their files, decoded here: resized one by one, or by the batch
        # when the folder's images all have one size (the same pixels, a few times faster).
        resized = streamed and pair.shape is None
        if streamed:
            def read(image, label):
                if resized:
                    image = decode(image, size)  # (S, S, 3) float32
                else:
                    image = decode_pixels(image, pair.shape)  # (H, W, 3) uint8
                return image, label  # the label's id is looked up by the batch

            ds = example_dataset(pair, training, self.seed).map(
                read, num_parallel_calls=tf.data.AUTOTUNE)
        else:
            images, labels = pair
            ds = tf.data.Dataset.from_tensor_slices((self._stack(images), self._ids(labels)))
            if training:
                ds = ds.shuffle(len(labels), seed=self.seed,
                                reshuffle_each_iteration=True).repeat()
        ds = ds.batch(batch_size, drop_remainder=training)

        def prepare(x, y):
            if streamed:
                y = name_ids(y, self.label_names)  # (B,)
            if not resized:
                x = resize(x, size)  # (B, S, S, 3) float32
            if training:
                x = augment(x, flip=options.flip, crop=options.crop,
                            brightness=float(options.brightness))
            return x, y

        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    # -------------------------------------------------------------- model
    def build_model(self) -> keras.Model:
        factory = self.backbone
        size = self.image_size
        images = keras.Input((size, size, 3), name="images")  # float32 pixels in [0, 255]
        x = keras.layers.Normalization(mean=self.mean, variance=self.variance,
                                       name="normalize")(images)
        x = factory.image_encoder((size, size, 3))(x)  # (B, D)
        x = layers.Dropout(getattr(factory, "dropout", 0.0))(x)
        logits = keras.layers.Dense(len(self.label_names), dtype="float32", name="head")(x)
        return keras.Model(images, logits, name=self.model_name)

    def loss(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    def stats(self, y_true, y_pred):
        correct = tf.cast(tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32),
                                   tf.cast(y_true, tf.int32)), tf.float32)
        return {"accuracy": (tf.reduce_sum(correct), tf.cast(tf.size(correct), tf.float32))}

    # -------------------------------------------------------------- results
    def predict_probabilities(self, model, images, batch_size=256) -> np.ndarray:
        """Raw images -> softmax probabilities (N, classes)."""
        size = self.image_size
        ds = tf.data.Dataset.from_tensor_slices(self._stack(images)).batch(batch_size)
        ds = ds.map(lambda x: resize(x, size))
        forward = tf.function(lambda x: tf.nn.softmax(tf.cast(model(x, training=False),
                                                              tf.float32)),
                              reduce_retracing=True, autograph=False)
        out = [forward(x).numpy() for x in ds]
        return np.concatenate(out) if out else np.zeros((0, len(self.label_names)), np.float32)

    def evaluate(self, model, pair, batch_size):
        images, labels = pair
        probabilities = self.predict_probabilities(model, images, batch_size)
        truth, predicted = self._ids(labels), probabilities.argmax(-1)
        self._evaluated = (truth, predicted)
        self.samples = [
            {"index": i, "label": labels[i], "predicted": self.label_names[predicted[i]],
             "probability": float(probabilities[i, predicted[i]])}
            for i in range(min(int(self.task_cfg.num_samples), len(labels)))
        ]
        return classification_scores(truth, probabilities)

    def pictures(self, model, splits, directory) -> list:
        """The confusion matrix of the evaluation split (rows: truth, columns: prediction)."""
        from matplotlib.figure import Figure

        truth, predicted = getattr(self, "_evaluated", (None, None))
        if truth is None:
            images, labels = splits.evaluation
            truth = self._ids(labels)
            predicted = self.predict_probabilities(model, images).argmax(-1)
        num_classes = len(self.label_names)
        matrix = confusion_matrix(truth, predicted, labels=np.arange(num_classes))
        side = min(max(4.0, 0.45 * num_classes + 2.0), 20.0)
        figure = Figure(figsize=(side, side))
        axes = figure.add_subplot()
        axes.imshow(matrix, cmap="Blues")
        ticks = np.arange(num_classes)
        fontsize = 9 if num_classes <= 20 else 6
        axes.set_xticks(ticks, self.label_names, rotation=90, fontsize=fontsize)
        axes.set_yticks(ticks, self.label_names, fontsize=fontsize)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        accuracy = np.trace(matrix) / max(matrix.sum(), 1)
        axes.set_title(f"confusion matrix ({splits.evaluation_name}, accuracy {accuracy:.3f})")
        if num_classes <= 20:
            threshold = matrix.max() / 2 if matrix.size else 0
            for (row, column), count in np.ndenumerate(matrix):
                axes.text(column, row, str(count), ha="center", va="center", fontsize=fontsize,
                          color="white" if count > threshold else "black")
        figure.tight_layout()
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "confusion_matrix.png"
        figure.savefig(path, dpi=100)
        return [path]

    # ------------------------------------------------------------------ serving
    def serving_fn(self, model):
        names = tf.constant(self.label_names)
        size = self.image_size

        def serve(image_bytes):
            logits = model(decode_images(image_bytes, size), training=False)  # (B, C)
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
            label = tf.gather(names, tf.argmax(probabilities, axis=-1))
            return {"label": label, "probabilities": probabilities}

        return serve

    def serving_signature(self):
        return [tf.TensorSpec([None], tf.string, name="image_bytes")]
