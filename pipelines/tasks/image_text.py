"""`task=image_text`: a CLIP-style dual encoder (Radford et al., 2021), trained contrastively
on image-caption pairs. Metrics: image->text and text->image recall@1/5/10, zero-shot
accuracy against label prompts, and on generated scenes with `task.holdout_pairs` the
accuracy on seen and unseen colour-shape pairs and their harmonic mean.

Two backbones. The image tower is the `model=` group (`cnn` or `vit`: the `image_encoder`
role); the text tower is the model group that `task.text_tower` names (`transformer`, `lstm`
or `gru`: the `sequence_encoder` role), read from its yaml in `conf/model/` and changed by
`task.text_tower_options` (e.g. `task.text_tower_options.hidden_dim=64`), then built by the
same `pipelines.tasks.build_backbone` as the image tower. Each tower ends in its own linear
projection to `task.embedding_dim` and an L2 normalisation; the logits of a batch are the
cosine similarities times a learnable logit scale (1 / temperature, initialised at
1 / `task.temperature`, clipped at `task.max_logit_scale` as CLIP does).

Raw examples are (image, captions) from the `image_captions` readers (generated scenes, COCO
JSON, Flickr8k tokens). A training batch is B images and B captions, one random caption of
each image per visit; the loss is symmetric InfoNCE per example (B,): the mean of the
image->text and text->image cross-entropies, where identical captions in a batch count as
matches of each other (generated scenes repeat "one shape on a noisy background"). Under
a `distribute=` strategy the negatives are those of each replica's share of the batch (no
all-gather across replicas, unlike CLIP's large-batch training).

Zero-shot: every image is classified against `task.prompt` filled with each of
`task.labels` ("a photo of a {}"). The truth of an image: on generated scenes its largest
shape ("red circle" when the labels are colour-shape pairs, "circle" when they are shape
names); elsewhere the one label that its captions name (images naming none or several are
left out; `zero_shot_images` counts the rest). `task.labels=null` means every colour-shape
pair of the scene vocabulary on generated scenes, and no zero-shot metric elsewhere.
`task.holdout_pairs` ("red circle", ...) removes every scene that contains one of the pairs
from the training and validation splits (the model never sees them, nor is it selected on
them); the test split keeps every scene, and its images are reported by whether their
largest shape's pair was held out (`zero_shot_unseen`) or not (`zero_shot_seen`).

Export: `serving_default(image_bytes [batch], labels [n]) -> scores [batch, n]` (softmax
over the labels' prompts), `label [batch]`; `embed_image(image_bytes) -> embedding` and
`embed_text(text) -> embedding` (unit vectors, [batch, embedding_dim]) for retrieval.
"""
from __future__ import annotations

import logging
import math
import re

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import layers
from pipelines.config import check_image_text
from pipelines.data import Splits
from pipelines.data.images import decode_images, pixel_statistics
from pipelines.data.scenes import parse_pairs
from pipelines.tasks import build_backbone, group_config
from pipelines.tasks.base import Task, plain
from pipelines.tasks.captioning import caption_table, check_captions, stack_images
from pipelines.tasks.generation import WordTokenizer

log = logging.getLogger(__name__)

__all__ = ["DualEncoder", "ImageText", "contrastive_loss", "recall_at", "text_tower_config"]


def text_tower_config(task_cfg):
    """The text tower's model group: `conf/model/<task.text_tower>.yaml` (plain YAML, its
    `defaults` list dropped) with `task.text_tower_options.<text_tower>` merged in."""
    name = str(task_cfg.text_tower)
    return group_config(name, task_cfg.text_tower_options.get(name, {}))


def contrastive_loss(text_ids, logits):
    """Symmetric InfoNCE per example (B,) over the (B, B) image-text logits; captions with
    the same ids (B, T) are all targets of each other's images, and the other way round."""
    same = tf.reduce_all(tf.equal(text_ids[:, None, :], text_ids[None, :, :]), axis=-1)
    targets = tf.cast(same, tf.float32)  # (B, B), symmetric, 1 on the diagonal
    targets /= tf.reduce_sum(targets, axis=-1, keepdims=True)
    logits = tf.cast(logits, tf.float32)
    image_to_text = tf.nn.softmax_cross_entropy_with_logits(targets, logits)  # (B,)
    text_to_image = tf.nn.softmax_cross_entropy_with_logits(targets, tf.transpose(logits))
    return 0.5 * (image_to_text + text_to_image)


def recall_at(similarity: np.ndarray, matches: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
    """Recall@k of queries (rows of `similarity` (Q, C)) whose best-ranked match (`matches`,
    bool (Q, C)) is among the k most similar candidates."""
    best = np.where(matches, similarity, -np.inf).max(axis=1)  # (Q,) the best match's score
    rank = (similarity > best[:, None]).sum(axis=1)  # candidates strictly above it
    return {k: float((rank < k).mean()) for k in ks}


@keras.saving.register_keras_serializable(package="pipelines")
class DualEncoder(keras.Model):
    """Two towers to unit embeddings and a learnable logit scale (CLIP).

    Args:
        image_tower: pixels (B, S, S, 3) in [0, 255] -> unit vectors (B, E).
        text_tower: ids (B, T), 0 = padding -> unit vectors (B, E).
        temperature: the initial temperature (logit scale 1 / temperature).
        max_logit_scale: the logit scale's upper bound (100 in CLIP).

    Call arguments:
        inputs: {"image": (B, S, S, 3) float32, "text": (B, T) int32}.

    Returns:
        float32 logits (B, B): image i against caption j.
    """

    def __init__(self, image_tower, text_tower, temperature: float = 0.07,
                 max_logit_scale: float = 100.0, **kwargs):
        # The logit scale and the similarities stay float32 under mixed precision (the
        # towers compute in their own policy and end in float32 projections).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0.0 < temperature or not 1.0 / temperature <= max_logit_scale:
            raise ValueError(f"task.temperature must be > 0 with 1 / temperature <= "
                             f"task.max_logit_scale; received temperature={temperature}, "
                             f"max_logit_scale={max_logit_scale}")
        self.image_tower, self.text_tower = image_tower, text_tower
        self.temperature, self.max_logit_scale = temperature, max_logit_scale
        self.log_scale = self.add_weight(
            shape=(), name="log_logit_scale",
            initializer=keras.initializers.Constant(math.log(1.0 / temperature)))

    def logit_scale(self):
        """exp(log scale), clipped at `max_logit_scale` (no gradient beyond it)."""
        return ops.exp(ops.minimum(self.log_scale, math.log(self.max_logit_scale)))

    def embed_image(self, images, training=False):
        return ops.cast(self.image_tower(images, training=training), "float32")  # (B, E)

    def embed_text(self, ids, training=False):
        return ops.cast(self.text_tower(ids, training=training), "float32")  # (B, E)

    def call(self, inputs, training=False):
        image = self.embed_image(inputs["image"], training)  # (B, E)
        text = self.embed_text(inputs["text"], training)  # (B, E)
        return self.logit_scale() * ops.matmul(image, ops.transpose(text))  # (B, B)


class ImageText(Task):
    """Images and captions into one embedding space; zero-shot classification by prompts."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        check_image_text(config)
        self.holdout = set(parse_pairs(list(config.holdout_pairs)))
        self.text_backbone = build_backbone(text_tower_config(config))
        self._shapes: dict[int, list] = {}
        self._images: dict[int, np.ndarray] = {}

    @property
    def model_name(self) -> str:
        return f"{self.name}_{self.backbone.name}_{self.text_backbone.name}"

    # ------------------------------------------------------------------ data
    def load(self) -> Splits:
        """The caption splits; on generated scenes also each scene's shapes, and the scenes
        with a held-out pair removed from train and validation."""
        splits = super().load()
        scene_shapes = getattr(self.data, "scene_shapes", None)
        if self.holdout and scene_shapes is None:
            raise ValueError(f"task.holdout_pairs needs generated scenes (data=synthetic); "
                             f"data={self.data.name} has no colour-shape pairs")
        if scene_shapes is None:
            return splits
        shapes = scene_shapes()
        pairs = {}
        for name in ("train", "validation", "test"):
            pair = getattr(splits, name)
            if pair is None:
                continue
            records = shapes[name]
            if name != "test" and self.holdout:
                keep = [i for i, scene in enumerate(records)
                        if not {(s.colour, s.kind) for s in scene} & self.holdout]
                log.info("image_text: %d of %d %s scenes hold none of the held-out pairs %s",
                         len(keep), len(records), name, sorted(self.holdout))
                pair = ([pair[0][i] for i in keep], [pair[1][i] for i in keep])
                records = [records[i] for i in keep]
            self._shapes[id(pair[0])] = records
            pairs[name] = pair
        return Splits(**pairs)

    def adapt(self, splits: Splits) -> None:
        check_captions(splits, "image_text")
        cfg = self.task_cfg
        self.image_size, self.text_length = int(cfg.image_size), int(cfg.text_length)
        texts = [caption for references in splits.train[1] for caption in references]
        self.tokenizer = WordTokenizer(texts, int(cfg.vocabulary_size), bool(cfg.lowercase))
        self.pixel_mean, self.pixel_variance = pixel_statistics(self.images(splits.train))
        self.labels = self.zero_shot_labels(splits)
        log.info("image_text: %d-word vocabulary from %d captions; zero-shot labels: %s",
                 self.tokenizer.vocabulary_size(), len(texts),
                 "none" if self.labels is None else len(self.labels))

    def zero_shot_labels(self, splits: Splits) -> list[str] | None:
        """`task.labels`, or every colour-shape pair on generated scenes, or None."""
        if self.task_cfg.labels is not None:
            return [str(label) for label in self.task_cfg.labels]
        if id(splits.evaluation[0]) in self._shapes:
            from pipelines.data.scenes import COLOURS, KINDS

            return [f"{colour} {kind}" for colour in COLOURS for kind in KINDS]
        return None

    def images(self, pair) -> np.ndarray:
        """The split's images as uint8 (N, S, S, 3), resized once."""
        key = id(pair[0])
        if key not in self._images:
            self._images[key] = stack_images(pair[0], self.image_size)
        return self._images[key]

    def encode_text(self, texts) -> tf.Tensor:
        """Strings (N,) -> ids (N, text_length), 0 = padding, longer texts cut."""
        ids = self.tokenizer.tokenize(texts)[:, : self.text_length]
        return ids.to_tensor(shape=[None, self.text_length])

    def dataset(self, pair, training, batch_size):
        images = self.images(pair)
        table, counts = caption_table(pair[1], self.encode_text)
        if training:
            ds = tf.data.Dataset.from_tensor_slices((images, table, counts))
            ds = ds.shuffle(len(images), seed=self.seed, reshuffle_each_iteration=True).repeat()

            def pick(image, captions, count):  # one random caption per visit
                return image, captions[tf.random.uniform([], 0, count, tf.int32)]

            ds = ds.map(plain(pick), num_parallel_calls=tf.data.AUTOTUNE)
        else:  # the validation loss: each image against its first caption
            ds = tf.data.Dataset.from_tensor_slices((images, table[:, 0]))
        ds = ds.batch(batch_size, drop_remainder=training)
        ds = ds.map(plain(lambda image, text: ({"image": tf.cast(image, tf.float32),
                                                "text": text}, text)),
                    num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    # ------------------------------------------------------------------ model
    def build_model(self) -> keras.Model:
        size, dim = self.image_size, int(self.task_cfg.embedding_dim)
        images = keras.Input((size, size, 3), name="image")  # float32 pixels in [0, 255]
        x = keras.layers.Normalization(mean=self.pixel_mean, variance=self.pixel_variance,
                                       name="normalize")(images)
        x = self.backbone.image_encoder((size, size, 3))(x)  # (B, D)
        x = layers.Dropout(getattr(self.backbone, "dropout", 0.0))(x)
        x = keras.layers.Dense(dim, use_bias=False, dtype="float32", name="image_projection")(x)
        image_tower = keras.Model(images, keras.layers.UnitNormalization(name="image_unit")(x),
                                  name="image_tower")  # (B, E)
        ids = keras.Input((self.text_length,), dtype="int32", name="text")
        y = self.text_backbone.text_encoder(self.tokenizer.vocabulary_size(),
                                            self.text_length)(ids)  # (B, H)
        y = keras.layers.Dense(dim, use_bias=False, dtype="float32", name="text_projection")(y)
        text_tower = keras.Model(ids, keras.layers.UnitNormalization(name="text_unit")(y),
                                 name="text_tower")  # (B, E)
        model = DualEncoder(image_tower, text_tower, float(self.task_cfg.temperature),
                            float(self.task_cfg.max_logit_scale), name=self.model_name)
        model({"image": tf.zeros((2, size, size, 3)),
               "text": tf.ones((2, self.text_length), tf.int32)})
        return model

    def loss(self, y_true, y_pred):
        return contrastive_loss(y_true, y_pred)

    def stats(self, y_true, y_pred):
        """In-batch image->text accuracy: the top caption is one of the image's matches."""
        same = tf.reduce_all(tf.equal(y_true[:, None, :], y_true[None, :, :]), axis=-1)
        top = tf.argmax(y_pred, axis=-1, output_type=tf.int32)  # (B,)
        correct = tf.cast(tf.gather(same, top, axis=1, batch_dims=1), tf.float32)
        return {"accuracy": (tf.reduce_sum(correct), tf.cast(tf.size(correct), tf.float32))}

    # ------------------------------------------------------------------ results
    def _embed(self, fn, inputs, batch_size=256) -> np.ndarray:
        out = [fn(inputs[start:start + batch_size]).numpy()
               for start in range(0, len(inputs), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, int(self.task_cfg.embedding_dim)))

    def embed_images(self, model, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> unit vectors (N, E)."""
        fn = tf.function(lambda x: model.embed_image(tf.cast(x, tf.float32)),
                         reduce_retracing=True, autograph=False)
        return self._embed(fn, images)

    def embed_texts(self, model, texts: list[str]) -> np.ndarray:
        """Strings -> unit vectors (N, E)."""
        fn = tf.function(lambda t: model.embed_text(self.encode_text(t)),
                         reduce_retracing=True, autograph=False)
        return self._embed(fn, np.array(texts, dtype=object))

    def prompts(self, labels: list[str]) -> list[str]:
        return [str(self.task_cfg.prompt).replace("{}", label) for label in labels]

    def truth(self, pair, labels: list[str]) -> np.ndarray:
        """Each image's label index (-1: none), see the module docstring."""
        shapes = self._shapes.get(id(pair[0]))
        index = {label: i for i, label in enumerate(labels)}
        if shapes is not None:
            from pipelines.data.scenes import KINDS

            by_kind = all(label in KINDS for label in labels)
            return np.array([index.get(scene[0].kind if by_kind
                                       else f"{scene[0].colour} {scene[0].kind}", -1)
                             for scene in shapes], np.int64)
        patterns = [re.compile(rf"\b{re.escape(label.lower())}\b") for label in labels]
        out = []
        for references in pair[1]:
            text = " ".join(references).lower()
            named = [i for i, pattern in enumerate(patterns) if pattern.search(text)]
            out.append(named[0] if len(named) == 1 else -1)
        return np.array(out, np.int64)

    def evaluate(self, model, pair, batch_size):
        images = self.embed_images(model, self.images(pair))  # (N, E)
        captions = [caption for references in pair[1] for caption in references]
        owner = np.repeat(np.arange(len(pair[1])), [len(refs) for refs in pair[1]])  # (M,)
        texts = self.embed_texts(model, captions)  # (M, E)
        similarity = images @ texts.T  # (N, M)
        matches = owner[None, :] == np.arange(len(images))[:, None]  # (N, M)
        metrics = {}
        if self.labels is not None:
            metrics.update(self.zero_shot(model, pair, images))
        for k, value in recall_at(similarity, matches).items():
            metrics[f"image_to_text_recall_at_{k}"] = value
        for k, value in recall_at(similarity.T, matches.T).items():
            metrics[f"text_to_image_recall_at_{k}"] = value
        return metrics

    def zero_shot(self, model, pair, images: np.ndarray) -> dict:
        """Accuracy of the prompts' nearest label; seen/unseen/harmonic with holdout pairs."""
        truth = self.truth(pair, self.labels)
        scores = images @ self.embed_texts(model, self.prompts(self.labels)).T  # (N, L)
        predicted = scores.argmax(-1)
        valid = truth >= 0
        correct = predicted == truth
        self.samples = [{"index": int(i), "label": self.labels[truth[i]],
                         "predicted": self.labels[predicted[i]]}
                        for i in np.flatnonzero(valid)[: int(self.task_cfg.num_samples)]]
        metrics = {"zero_shot_accuracy": float(correct[valid].mean()) if valid.any() else 0.0,
                   "zero_shot_images": float(valid.sum())}
        shapes = self._shapes.get(id(pair[0]))
        if self.holdout and shapes is not None:
            unseen = np.array([(scene[0].colour, scene[0].kind) in self.holdout
                               for scene in shapes]) & valid
            seen_acc = float(correct[valid & ~unseen].mean()) if (valid & ~unseen).any() else 0.0
            unseen_acc = float(correct[unseen].mean()) if unseen.any() else 0.0
            harmonic = (2 * seen_acc * unseen_acc / (seen_acc + unseen_acc)
                        if seen_acc + unseen_acc else 0.0)
            metrics = {"zero_shot_harmonic": harmonic, "zero_shot_unseen": unseen_acc,
                       "zero_shot_seen": seen_acc, "zero_shot_unseen_images": float(unseen.sum()),
                       **metrics}
        return metrics

    # ------------------------------------------------------------------ serving
    def serving_fn(self, model):
        size, parts = self.image_size, str(self.task_cfg.prompt).split("{}")

        def serve(image_bytes, labels):
            images = model.embed_image(decode_images(image_bytes, size))  # (B, E)
            pieces = [parts[0]]
            for part in parts[1:]:
                pieces += [labels, part]
            prompts = tf.strings.join(pieces)  # (n,)
            texts = model.embed_text(self.encode_text(prompts))  # (n, E)
            scores = tf.nn.softmax(model.logit_scale() * tf.matmul(images, texts,
                                                                   transpose_b=True))
            return {"scores": scores, "label": tf.gather(labels, tf.argmax(scores, axis=-1))}

        return serve

    def serving_signature(self):
        return [tf.TensorSpec([None], tf.string, name="image_bytes"),
                tf.TensorSpec([None], tf.string, name="labels")]

    def extra_signatures(self, model) -> dict:
        """`embed_image(image_bytes)` and `embed_text(text)` -> unit `embedding`s."""
        size = self.image_size

        def embed_image(image_bytes):
            return {"embedding": model.embed_image(decode_images(image_bytes, size))}

        def embed_text(text):
            return {"embedding": model.embed_text(self.encode_text(text))}

        return {"embed_image": (embed_image, [tf.TensorSpec([None], tf.string,
                                                            name="image_bytes")]),
                "embed_text": (embed_text, [tf.TensorSpec([None], tf.string, name="text")])}

    def trackables(self) -> list:
        return self.tokenizer.trackables()
