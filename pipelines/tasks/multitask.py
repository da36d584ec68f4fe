"""`task=multitask`: one image encoder, several heads, each with its own target, loss, weight
and metric, declared in `task.heads` (`pipelines.config.Head`, `HEAD_KINDS`).

Raw examples come from the `labelled_scenes` format: an image and every target of its scene
(`{"label", "mask", "captions"}`; on generated scenes `SyntheticSource.labelled_scenes`). A
head's kind decides which target it learns and what it reuses of the single-task modules:
- `classification`: the label (the largest shape's kind); pooled features (global average of
  a CNN's grid, a ViT's class token), dropout, a dense layer; the loss, `accuracy` and
  `top5_accuracy` of task=image_classification (`classification_scores`);
- `segmentation`: the mask of shape kinds; from the encoder's grid (a ViT's tokens laid out
  on their patch grid) one `layers.UpBlock` per doubling back to the image size, each with
  the normalised image at that scale as its skip (the U-Net's up path, over the shared
  encoder), a 1 x 1 conv to the classes; task=segmentation's losses (`task.heads.<name>.loss`:
  cross_entropy, dice, both) and metrics (`mask_scores`: mean_iou, pixel_accuracy, dice);
- `caption`: the captions (one drawn per training visit, the first one for the validation
  loss); the encoder's grid as the memory of a sequence decoder (`GridMemory`: a ReLU
  projection to `memory_dim` and a learned embedding per location), the decoder of the model
  group `task.heads.<name>.decoder` names (lstm, gru, transformer: the `sequence_decoder`
  role, `decoder_options.<group>` changing its keys), in `EncoderDecoder`; task=captioning's
  tokenizers, caption loss, beam search (`decode.*`) and BLEU (`bleu4`, `bleu1`).

The model maps `{"image", "<caption head>_in" (teacher forcing)}` to `{head name: logits}`;
its layer `image_features` (pixels -> `{"features": the unpooled encoder output, "pixels":
normalised}`) runs once for all heads in evaluation and serving. The training loss is the sum
of the heads' losses times their weights; `stats` logs each head's loss and accuracy
statistic with its name in front. Metrics: `objective`, the heads' `metric`s (BLEU / 100)
averaged with their weights, first (the run's objective and the default monitor,
`val_objective`), then every head's metrics with its name in front (`shape_accuracy`,
`mask_mean_iou`, `caption_bleu4`, ...). Training has no augmentation: a flip would make the
captions' "left of" false.

Export: `serving_default(image_bytes [batch])` returns every head's outputs at once: a
classification head `<name>` (label) and `<name>_probabilities`, a segmentation head `<name>`
(int32 mask at `task.image_size`; with 2 classes also `<name>_foreground`, the class-1
probability), a caption head `<name>` (string).
"""
from __future__ import annotations

import logging
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import layers
from pipelines.config import HEAD_KINDS, check_multitask, head_kind, option_value
from pipelines.data import Splits
from pipelines.data.images import VOID, decode_images, pixel_statistics
from pipelines.metrics import caption_bleu
from pipelines.models.seq2seq import EncoderDecoder
from pipelines.models.vit import ClassToken
from pipelines.tasks import build_backbone, group_config
from pipelines.tasks.base import Task, label_names, plain
from pipelines.tasks.captioning import caption_loss, caption_table, check_captions, stack_images
from pipelines.tasks.generation import TargetText, learn_tokenizer, token_accuracy
from pipelines.tasks.image_classification import ImageClassification, classification_scores
from pipelines.tasks.segmentation import (mask_classes, mask_loss, mask_scores, pixel_accuracy,
                                          prepare_masks)

log = logging.getLogger(__name__)

__all__ = ["GridMemory", "Multitask", "TokenGrid", "column"]

# The target each kind learns, in a `labelled_scenes` target dict.
TARGETS = {"classification": "label", "segmentation": "mask", "caption": "captions"}


def column(splits: Splits, key: str) -> Splits:
    """The splits with one target of each example: (images, [target[key], ...])."""
    def pick(pair):
        return None if pair is None else (pair[0], [target[key] for target in pair[1]])

    return Splits(pick(splits.train), pick(splits.validation), pick(splits.test))


def check_targets(splits: Splits, keys: set[str]) -> None:
    """Every example of every split has a dict target holding `keys`; a ValueError names the
    split and example otherwise."""
    for name in ("train", "validation", "test"):
        pair = getattr(splits, name)
        for index, target in enumerate(pair[1] if pair is not None else []):
            if not isinstance(target, dict) or not keys <= set(target):
                raise ValueError(f"task=multitask needs a dict with {sorted(keys)} per image; "
                                 f"the {name} split's example {index} has {target!r:.200}")


def grid_side(tokens: int) -> tuple[int, int]:
    """(side, offset) of a token sequence laid out on a square grid: `tokens` locations, or
    a class token first (offset 1) and side x side locations after it."""
    for offset in (0, 1):
        side = math.isqrt(tokens - offset)
        if side > 0 and side * side == tokens - offset:
            return side, offset
    raise ValueError(f"image features of {tokens} tokens are not a square grid (with or "
                     "without a class token first)")


@keras.saving.register_keras_serializable(package="pipelines")
class TokenGrid(keras.layers.Layer):
    """Tokens on their patch grid: (B, offset + side * side, D) -> (B, side, side, D), the
    first `offset` tokens (a class token) left out.

    Args:
        side: the grid's side.
        offset: tokens before the grid's (0 or 1).
    """

    def __init__(self, side: int, offset: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.side, self.offset = side, offset

    def call(self, tokens):
        return ops.reshape(tokens[:, self.offset:], (-1, self.side, self.side, tokens.shape[-1]))

    def compute_output_shape(self, tokens_shape):
        return (tokens_shape[0], self.side, self.side, tokens_shape[-1])

    def get_config(self):
        return {**super().get_config(), "side": self.side, "offset": self.offset}


@keras.saving.register_keras_serializable(package="pipelines")
class GridMemory(keras.layers.Layer):
    """Image features -> the `encoded` dict a sequence decoder reads
    (`pipelines.models.seq2seq`): a feature map (B, h, w, F) becomes its h * w locations,
    tokens (B, N, F) stay; a ReLU projection to `dim` and a learned embedding per location
    (as `GridEncoder`'s), so that "left of" can be read off the memory.

    Args:
        dim: D, the memory's width.

    Call arguments:
        features: (B, h, w, F) or (B, N, F).

    Returns:
        {"memory": (B, N, D), "summary": (B, D), the mean over the locations}.
    """

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim

    def build(self, features_shape):
        self.locations = math.prod(features_shape[1:-1])
        self.projection = keras.layers.Dense(self.dim, activation="relu", name="projection")
        self.projection.build((None, self.locations, features_shape[-1]))
        self.position = layers.LearnedPositionalEmbedding(self.locations, name="position")
        self.position.build((None, self.locations, self.dim))

    def call(self, features):
        x = ops.reshape(features, (-1, self.locations, features.shape[-1]))  # (B, N, F)
        x = self.projection(x)  # (B, N, D)
        x = x + self.position(x)
        return {"memory": x, "summary": ops.mean(x, axis=1)}

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


# ----------------------------------------------------------------------------- heads
class Head:
    """One head of the task: its target's columns and examples, its network over the shared
    features, loss, statistics, outputs (what the export serves) and metrics."""

    scale = 1.0  # its metrics' full scale (BLEU: 100): the objective divides by it

    def __init__(self, name: str, cfg, task: "Multitask"):
        self.name, self.cfg, self.task = name, cfg, task
        self.kind = head_kind(name, cfg)
        spec = HEAD_KINDS[self.kind]
        self.weight = float(cfg.weight)
        self.metric = str(cfg.metric or spec.metrics[0])
        self.loss_kind = str(cfg.loss or spec.losses[0])
        self.target = TARGETS[self.kind]

    def adapt(self, splits: Splits) -> None:
        """Fits the head's label names, classes or tokenizer on the training targets."""

    def columns(self, pair) -> dict[str, np.ndarray]:
        """{column: array (N, ...)} of the split's targets, for `dataset`."""
        raise NotImplementedError

    def example(self, rows: dict, training: bool) -> tuple[dict, tf.Tensor]:
        """A batch of `columns` rows -> (extra model inputs, the head's target)."""
        return {}, rows[self.name]

    def network(self, shared: dict) -> keras.Model:
        """The head's network over `shared` ({"features", "pixels"}), named by the head."""
        raise NotImplementedError

    def model_inputs(self) -> dict[str, keras.KerasTensor]:
        """Model inputs besides the image (teacher-forced ids)."""
        return {}

    def call(self, network, shared: dict, inputs: dict):
        return network(shared["features"])

    def loss(self, y_true, y_pred):
        raise NotImplementedError

    def stats(self, y_true, y_pred) -> dict:
        raise NotImplementedError

    def outputs(self, model: keras.Model, shared: dict) -> dict:
        """{output: tensor (B, ...)}: what the export serves for this head."""
        raise NotImplementedError

    def metric_names(self) -> list[str]:
        return list(HEAD_KINDS[self.kind].metrics)

    def score(self, outputs: dict[str, np.ndarray], pair) -> dict[str, float]:
        """The head's metrics (unprefixed) of its `outputs` on the split `pair`."""
        raise NotImplementedError

    def sample(self, outputs: dict[str, np.ndarray], target, index: int) -> dict:
        return {}


class ClassificationHead(Head):
    def adapt(self, splits):
        self.label_names = label_names(column(splits, self.target))
        self.label_index = {label: i for i, label in enumerate(self.label_names)}

    def columns(self, pair):
        return {self.name: np.array([self.label_index[t[self.target]] for t in pair[1]],
                                    np.int32)}

    def network(self, shared):
        features = keras.Input(tuple(shared["features"].shape[1:]), name="features")
        if len(features.shape) == 4:
            x = keras.layers.GlobalAveragePooling2D(name="pooling")(features)  # (B, F)
        elif grid_side(features.shape[1])[1]:
            x = ClassToken(name="class_token")(features)  # (B, F)
        else:
            x = keras.layers.GlobalAveragePooling1D(name="pooling")(features)
        x = layers.Dropout(getattr(self.task.backbone, "dropout", 0.0))(x)
        logits = keras.layers.Dense(len(self.label_names), dtype="float32", name="logits")(x)
        return keras.Model(features, logits, name=self.name)  # (B, classes)

    # task=image_classification's cross-entropy and accuracy (neither reads its task)
    loss = ImageClassification.loss
    stats = ImageClassification.stats

    def outputs(self, model, shared):
        logits = model.get_layer(self.name)(shared["features"], training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)  # (B, classes)
        return {self.name: tf.gather(tf.constant(self.label_names),
                                     tf.argmax(probabilities, axis=-1)),
                f"{self.name}_probabilities": probabilities}

    def metric_names(self):
        return ["accuracy", *(["top5_accuracy"] if len(self.label_names) >= 5 else [])]

    def score(self, outputs, pair):
        truth = self.columns(pair)[self.name]
        return classification_scores(truth, outputs[f"{self.name}_probabilities"])

    def sample(self, outputs, target, index):
        return {self.name: outputs[self.name][index].decode("utf-8"),
                f"{self.name}_truth": target[self.target]}


class SegmentationHead(Head):
    def adapt(self, splits):
        self._masks: dict[int, tuple] = {}
        self.num_classes = mask_classes(
            self.masks(splits.train),
            {name: self.masks(getattr(splits, name)) for name in ("validation", "test")
             if getattr(splits, name) is not None}, self.task.data.ignore_index)

    def masks(self, pair) -> np.ndarray:
        """The split's masks, uint8 (N, S, S), resized once, VOID where ignored
        (`prepare_masks`)."""
        key = id(pair[1])  # the entry keeps the list alive: its id is not reused meanwhile
        if key not in self._masks:
            self._masks[key] = (pair[1], prepare_masks([t[self.target] for t in pair[1]],
                                                       self.task.image_size,
                                                       self.task.data.ignore_index))
        return self._masks[key][1]

    def columns(self, pair):
        return {self.name: self.masks(pair)}

    def example(self, rows, training):
        return {}, tf.cast(rows[self.name], tf.int32)

    def network(self, shared):
        features = keras.Input(tuple(shared["features"].shape[1:]), name="features")
        pixels = keras.Input(tuple(shared["pixels"].shape[1:]), name="pixels")
        x = features
        if len(x.shape) == 3:  # tokens: laid out on their patch grid
            side, offset = grid_side(x.shape[1])
            x = TokenGrid(side, offset, name="token_grid")(x)  # (B, side, side, F)
        size, side = pixels.shape[1], x.shape[1]
        steps = round(math.log2(size / side))
        if side * 2 ** steps != size:
            raise ValueError(f"a segmentation head upsamples the encoder's {side} x {side} grid "
                             f"by doublings to task.image_size={size}: the image must be the "
                             "grid times a power of 2")
        for level in reversed(range(steps)):  # (B, S / 2^level, S / 2^level, filters)
            skip = (keras.layers.AveragePooling2D(2 ** level, name=f"pixels_{level}")(pixels)
                    if level else pixels)
            x = layers.UpBlock(int(self.cfg.filters), name=f"up_{level}")(x, skip)
        logits = keras.layers.Conv2D(self.num_classes, 1, dtype="float32", name="logits")(x)
        return keras.Model({"features": features, "pixels": pixels}, logits, name=self.name)

    def call(self, network, shared, inputs):
        return network({"features": shared["features"], "pixels": shared["pixels"]})

    def loss(self, y_true, y_pred):
        return mask_loss(y_true, y_pred, self.loss_kind, self.num_classes)

    def stats(self, y_true, y_pred):
        return pixel_accuracy(y_true, y_pred)

    def outputs(self, model, shared):
        logits = model.get_layer(self.name)(
            {"features": shared["features"], "pixels": shared["pixels"]}, training=False)
        outputs = {self.name: tf.argmax(logits, axis=-1, output_type=tf.int32)}  # (B, S, S)
        if self.num_classes == 2:
            outputs[f"{self.name}_foreground"] = tf.nn.softmax(
                tf.cast(logits, tf.float32), axis=-1)[..., 1]
        return outputs

    def score(self, outputs, pair):
        truth = self.masks(pair)
        valid = truth != VOID
        self.accuracies = [float((right & keep).sum() / max(keep.sum(), 1)) for right, keep in
                           zip(outputs[self.name] == truth, valid)]  # per image, for samples
        return mask_scores(truth, outputs[self.name], outputs.get(f"{self.name}_foreground"),
                           self.num_classes)[0]

    def sample(self, outputs, target, index):
        return {f"{self.name}_pixel_accuracy": round(self.accuracies[index], 4)}


class CaptionTarget(TargetText):
    """A caption head's tokenizer, targets and search (`generation.TargetText`); `backbone`
    is its decoder's factory, as a generation task's."""

    def __init__(self, decode_cfg, backbone):
        self.decode_cfg, self.backbone = decode_cfg, backbone


class CaptionHead(Head):
    scale = 100.0  # BLEU

    def __init__(self, name, cfg, task):
        super().__init__(name, cfg, task)
        decoder = str(cfg.decoder)
        self.decoder_backbone = build_backbone(group_config(decoder,
                                                            cfg.decoder_options.get(decoder)))
        self.text = CaptionTarget(task.decode_cfg, self.decoder_backbone)
        self.input_name = f"{name}_in"

    def adapt(self, splits):
        captions = column(splits, self.target)
        check_captions(captions, "multitask")
        texts = [caption for references in captions.train[1] for caption in references]
        self.text.set_target(learn_tokenizer(option_value(self.cfg.tokenizer), texts,
                                             int(self.cfg.vocabulary_size),
                                             bool(self.cfg.lowercase), None, self.task.seed),
                             int(self.cfg.caption_length))
        log.info("multitask head %s: %s vocabulary of %d tokens from %d captions", self.name,
                 option_value(self.cfg.tokenizer), self.text.tokenizer.vocabulary_size(),
                 len(texts))

    def references(self, pair) -> list[list[str]]:
        return [[self.text.tokenizer.normalize(r) for r in t[self.target]] for t in pair[1]]

    def columns(self, pair):
        table, counts = caption_table([t[self.target] for t in pair[1]],
                                      self.text.encode_targets)
        return {self.name: table, f"{self.name}_count": counts}  # (N, K, L + 1), (N,)

    def example(self, rows, training):
        table, counts = rows[self.name], rows[f"{self.name}_count"]  # (B, K, L + 1), (B,)
        if training:  # one reference per visit, drawn at random
            draw = tf.random.uniform(tf.shape(counts), 0.0, 1.0)
            chosen = tf.minimum(tf.cast(draw * tf.cast(counts, tf.float32), tf.int32),
                                counts - 1)
        else:  # the validation loss: each image's first caption
            chosen = tf.zeros_like(counts)
        full = tf.gather(table, chosen, axis=1, batch_dims=1)  # (B, L + 1)
        return {self.input_name: full[:, :-1]}, full[:, 1:]

    def model_inputs(self):
        return {self.input_name: keras.Input((self.text.target_length,), dtype="int32",
                                             name=self.input_name)}

    def network(self, shared):
        return EncoderDecoder(GridMemory(int(self.cfg.memory_dim), name="memory"),
                              self.decoder_backbone.decoder(self.text.tokenizer.vocabulary_size(),
                                                            self.text.target_length),
                              source_key="features", name=self.name)

    def call(self, network, shared, inputs):
        return network({"features": shared["features"], "target_in": inputs[self.input_name]})

    def loss(self, y_true, y_pred):
        return caption_loss(y_true, y_pred)

    def stats(self, y_true, y_pred):
        return token_accuracy(y_true, y_pred)

    def outputs(self, model, shared):
        ids = self.text.generate_ids(model.get_layer(self.name), shared["features"])
        return {self.name: self.text.detokenize(ids)}  # (B,) strings

    def score(self, outputs, pair):
        hypotheses = [c.decode("utf-8") for c in outputs[self.name]]
        return caption_bleu(hypotheses, self.references(pair))

    def sample(self, outputs, target, index):
        return {self.name: outputs[self.name][index].decode("utf-8"),
                f"{self.name}_references": list(target[self.target])}


HEADS = {"classification": ClassificationHead, "segmentation": SegmentationHead,
         "caption": CaptionHead}


# ----------------------------------------------------------------------------- task
class Multitask(Task):
    """One image encoder, the heads of `task.heads` on it, trained on their weighted losses."""

    # Per-epoch validation metrics (`val_objective`, ...) read this many validation scenes.
    VALIDATION_SAMPLE = 200

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        check_multitask(config)
        self.heads = [HEADS[head_kind(name, head)](name, head, self)
                      for name, head in config.heads.items()]
        self._images: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ data
    def load(self) -> Splits:
        splits = super().load()
        check_targets(splits, {head.target for head in self.heads})
        return splits

    def adapt(self, splits: Splits) -> None:
        self.image_size = int(self.task_cfg.image_size)
        self.pixel_mean, self.pixel_variance = pixel_statistics(self.images(splits.train))
        for head in self.heads:
            head.adapt(splits)
        log.info("multitask: heads %s", ", ".join(
            f"{head.name} ({head.kind}, weight {head.weight:g}, metric {head.metric})"
            for head in self.heads))

    def images(self, pair) -> np.ndarray:
        """The split's images as uint8 (N, S, S, 3), resized once."""
        key = id(pair[0])  # the entry keeps the list alive: its id is not reused meanwhile
        if key not in self._images:
            self._images[key] = (pair[0], stack_images(pair[0], self.image_size))
        return self._images[key][1]

    def dataset(self, pair, training, batch_size):
        columns = {"image": self.images(pair)}
        for head in self.heads:
            columns.update(head.columns(pair))
        ds = tf.data.Dataset.from_tensor_slices(columns)
        if training:
            ds = ds.shuffle(len(columns["image"]), seed=self.seed,
                            reshuffle_each_iteration=True).repeat()
        ds = ds.batch(batch_size, drop_remainder=training)

        def split(rows):
            x, y = {"image": tf.cast(rows["image"], tf.float32)}, {}
            for head in self.heads:
                inputs, y[head.name] = head.example(rows, training)
                x.update(inputs)
            return x, y

        return ds.map(plain(split), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    # ------------------------------------------------------------------ model
    def build_model(self) -> keras.Model:
        size = self.image_size
        images = keras.Input((size, size, 3), name="image")  # float32 pixels in [0, 255]
        pixels = keras.layers.Normalization(mean=self.pixel_mean, variance=self.pixel_variance,
                                            name="normalize")(images)
        # The unpooled encoder output: (B, h, w, D) (CNN) or (B, 1 + N, D) (ViT).
        features = self.backbone.image_encoder((size, size, 3), pooled=False)(pixels)
        shared = keras.Model(images, {"features": features, "pixels": pixels},
                             name="image_features")(images)
        inputs, outputs = {"image": images}, {}
        for head in self.heads:
            extra = head.model_inputs()
            inputs.update(extra)
            outputs[head.name] = head.call(head.network(shared), shared, extra)
        return keras.Model(inputs, outputs, name=f"{self.name}_{self.backbone.name}")

    def head_losses(self, y_true, y_pred) -> dict[str, tf.Tensor]:
        """{head: its per-example loss (B,)}."""
        return {head.name: head.loss(y_true[head.name], y_pred[head.name])
                for head in self.heads}

    def loss(self, y_true, y_pred):
        """Per example (B,): the heads' losses times their weights, summed."""
        losses = self.head_losses(y_true, y_pred)
        return tf.add_n([head.weight * losses[head.name] for head in self.heads])

    def stats(self, y_true, y_pred):
        """Each head's loss and accuracy statistic, with its name in front."""
        stats = {}
        for head in self.heads:
            head_loss = head.loss(y_true[head.name], y_pred[head.name])
            stats[f"{head.name}_loss"] = (tf.reduce_sum(head_loss),
                                          tf.cast(tf.size(head_loss), tf.float32))
            stats.update({f"{head.name}_{name}": value for name, value in
                          head.stats(y_true[head.name], y_pred[head.name]).items()})
        return stats

    # ------------------------------------------------------------------ results
    def predict(self, model, images: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """uint8 (N, S, S, 3) -> every head's outputs (as served), each image encoded once;
        one traced function per model (per-epoch validation and the final evaluation share it)."""
        if getattr(self, "_predict", (None,))[0] is not model:
            self._predict = (model, tf.function(self.serve_pixels(model), reduce_retracing=True,
                                                autograph=False))
        serve = self._predict[1]
        parts = [{k: v.numpy() for k, v in serve(tf.cast(images[start:start + batch_size],
                                                         tf.float32)).items()}
                 for start in range(0, max(len(images), 1), batch_size)]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def objective(self, metrics: dict[str, float]) -> float:
        """The heads' metrics on a 0-1 scale, averaged with their weights."""
        total = sum(head.weight for head in self.heads)
        return sum(head.weight * metrics[f"{head.name}_{head.metric}"] / head.scale
                   for head in self.heads) / total

    def evaluate(self, model, pair, batch_size):
        outputs = self.predict(model, self.images(pair), max(batch_size, 64))
        metrics = {}
        for head in self.heads:
            scores = head.score(outputs, pair)
            if head.metric not in scores:
                raise ValueError(f"task.heads.{head.name}.metric={head.metric} is not reported "
                                 f"here (it reports {', '.join(scores)})")
            metrics.update({f"{head.name}_{name}": value for name, value in scores.items()})
        self.samples = [{"index": index, **{key: value for head in self.heads
                                            for key, value in head.sample(outputs, target,
                                                                          index).items()}}
                        for index, target in enumerate(pair[1][:int(self.task_cfg.num_samples)])]
        return {"objective": self.objective(metrics), **metrics}

    @property
    def validation_metric_names(self) -> list[str]:
        return ["objective", *(f"{head.name}_{name}" for head in self.heads
                               for name in head.metric_names())]

    def validation_metrics(self, model, pair, batch_size) -> dict:
        """`evaluate` on the first `VALIDATION_SAMPLE` validation scenes (captions are
        decoded), every epoch when `task.monitor` names a metric (`val_objective`)."""
        if getattr(self, "_validation", (None,))[0] is not pair:  # one sample, kept
            self._validation = (pair, (pair[0][:self.VALIDATION_SAMPLE],
                                       pair[1][:self.VALIDATION_SAMPLE]))
        samples = getattr(self, "samples", None)
        metrics = self.evaluate(model, self._validation[1], batch_size)
        self.samples = samples
        return metrics

    # ------------------------------------------------------------------ serving
    def serve_pixels(self, model):
        """Pixels (B, S, S, 3) float32 -> every head's outputs: the shared features once,
        then each head."""
        shared_features = model.get_layer("image_features")

        def serve(pixels):
            shared = shared_features(pixels, training=False)
            outputs = {}
            for head in self.heads:
                outputs.update(head.outputs(model, shared))
            return outputs

        return serve

    def serving_fn(self, model):
        size, serve = self.image_size, self.serve_pixels(model)

        def serve_bytes(image_bytes):
            return serve(decode_images(image_bytes, size))  # (B, S, S, 3) float32

        return serve_bytes

    def serving_signature(self):
        return [tf.TensorSpec([None], tf.string, name="image_bytes")]

    def trackables(self) -> list:
        return [trackable for head in self.heads if isinstance(head, CaptionHead)
                for trackable in head.text.tokenizer.trackables()]
