"""`task=visual_qa`: an image and a question in, the answer out (two inputs, one output).
Metrics: answer accuracy overall (`accuracy`) and per question type (`colour_accuracy`,
`shape_accuracy`, `count_accuracy`), beside `prior_accuracy`, the accuracy of answering every
question with the most frequent training answer of its type (what the question's type alone
gets right).

Raw examples are (image, [(question, answer), ...]) from the `image_questions` format: on
generated scenes (`data=synthetic`) "what colour is the triangle?", "what shape is the red
object?", "how many circles?" with answers from the scene's own shapes, asked only where the
scene defines the answer (`pipelines.data.scene_questions`). A question's type is read from
its first words (`scene_questions.question_type`); `task.question_types` keeps those types
and leaves the others out. Every (image, question, answer) is one training example.

Two backbones, as in `task=image_text`: the image encoder is the `model=` group (`cnn`, `vit`:
the `image_encoder` role); the question encoder is the model group `task.text_tower` names
(`lstm`, `gru`, `transformer`: the `sequence_encoder` role, changed by
`task.text_tower_options.<group>`) over the ids of a `TextVectorization` adapted on the
training questions (a tiny vocabulary), projected to `task.fusion_dim`. `task.fusion`:
- `film` (default): the question scales and shifts the channels of every image location
  (FiLM, Perez et al., 2018) before a per-location layer, then mean- and max-pooling over the
  locations (the CNN's feature map, the ViT's tokens): the question decides which shape's
  colour or which kind's count reaches the answer;
- `product`: the pooled image features times the question features (Antol et al., 2015);
- `concat`: the two side by side.
Then a hidden layer and the answer classifier over the training answers.

Answers of the evaluation split that training never saw count as wrong (the classifier
cannot name them) and are left out of the validation loss.

Export: `serving_default(image_bytes [batch], question [batch]) -> answer [batch],
probabilities [batch, answers]`.
"""
from __future__ import annotations

import collections
import logging

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import layers
from pipelines.config import check_visual_qa, option_value
from pipelines.data import Splits
from pipelines.data.images import decode_images, pixel_statistics
from pipelines.data.scene_questions import question_type
from pipelines.tasks import build_backbone
from pipelines.tasks.base import Task, plain
from pipelines.tasks.captioning import stack_images
from pipelines.tasks.image_text import text_tower_config

log = logging.getLogger(__name__)

__all__ = ["FeatureModulation", "RepeatForQuestions", "VisualQa", "check_questions"]


def check_questions(splits: Splits) -> None:
    """Every image of every split has at least one (question, answer) pair of non-empty
    strings; a ValueError names the split and the image otherwise."""
    for name in ("train", "validation", "test"):
        pair = getattr(splits, name)
        if pair is None:
            continue
        for index, pairs in enumerate(pair[1]):
            if not len(pairs) or any(len(p) != 2 or not str(p[0]).strip() or not str(p[1]).strip()
                                     for p in pairs):
                raise ValueError(f"the {name} split's image {index} has the questions {pairs!r}; "
                                 "expected a non-empty list of (question, answer) pairs of "
                                 "non-empty strings")


@keras.saving.register_keras_serializable(package="pipelines")
class FeatureModulation(keras.layers.Layer):
    """FiLM: features scaled and shifted per channel by a condition (Perez et al., 2018).

    Call arguments:
        features: (B, N, F), one row per image location.
        scale: (B, F), applied as `1 + scale` (0 keeps the features).
        shift: (B, F).

    Returns:
        (B, N, F): `features * (1 + scale) + shift`, the condition broadcast over N.
    """

    def call(self, features, scale, shift):
        return features * (1.0 + scale[:, None, :]) + shift[:, None, :]  # (B, N, F)


@keras.saving.register_keras_serializable(package="pipelines")
class RepeatForQuestions(keras.layers.Layer):
    """Each image's features repeated for its questions: the question batch holds K
    consecutive questions per image, K = (question batch) / (image batch); 1 when every
    question comes with its own image (evaluation, serving).

    Call arguments:
        features: (B, ...), one row per image.
        questions: (K * B, L).

    Returns:
        (K * B, ...): row i is the features of image i // K.
    """

    def call(self, features, questions):
        repeats = ops.shape(questions)[0] // ops.shape(features)[0]
        return ops.repeat(features, repeats, axis=0)

    def compute_output_shape(self, features_shape, questions_shape):
        return (questions_shape[0], *features_shape[1:])


class VisualQa(Task):
    """Answers questions about images: an image encoder and a question encoder, fused."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        check_visual_qa(config)
        self.text_backbone = build_backbone(text_tower_config(config))
        self.types = [str(t) for t in config.question_types]
        self._images: dict[int, np.ndarray] = {}

    @property
    def model_name(self) -> str:
        return f"{self.name}_{self.backbone.name}_{self.text_backbone.name}"

    # ------------------------------------------------------------------ data
    def load(self) -> Splits:
        """The question splits with only the questions of `task.question_types` (images left
        with none are dropped), checked."""
        splits = super().load()
        check_questions(splits)
        kept = {}
        for name in ("train", "validation", "test"):
            pair = getattr(splits, name)
            if pair is None:
                continue
            images, questions = [], []
            for image, pairs in zip(*pair):
                pairs = [(str(q), str(a)) for q, a in pairs if question_type(str(q)) in self.types]
                if pairs:
                    images.append(image)
                    questions.append(pairs)
            if not images:
                raise ValueError(f"the {name} split has no question of the types "
                                 f"{self.types} (task.question_types)")
            kept[name] = (images, questions)
        return Splits(**kept)

    def train_examples(self, splits: Splits) -> int:
        return sum(len(pairs) for pairs in splits.train[1])

    def adapt(self, splits: Splits) -> None:
        cfg = self.task_cfg
        self.image_size, self.question_length = int(cfg.image_size), int(cfg.question_length)
        questions = [q for pairs in splits.train[1] for q, _ in pairs]
        self.vectorizer = keras.layers.TextVectorization(
            max_tokens=int(cfg.vocabulary_size),
            standardize="lower_and_strip_punctuation" if cfg.lowercase else "strip_punctuation",
            output_sequence_length=self.question_length, name="question_vectorization")
        self.vectorizer.adapt(tf.data.Dataset.from_tensor_slices(questions).batch(1024))
        answers = collections.Counter(a for pairs in splits.train[1] for _, a in pairs)
        if len(answers) < 2:
            raise ValueError(f"the training questions have only the answers {sorted(answers)}; "
                             "need at least 2")
        self.answers = sorted(answers)
        self.answer_index = {answer: i for i, answer in enumerate(self.answers)}
        by_type = collections.defaultdict(collections.Counter)
        for pairs in splits.train[1]:
            for q, a in pairs:
                by_type[question_type(q)][a] += 1
        # The most frequent training answer of each type (ties: the first in sorted order).
        self.prior = {kind: min(counts.items(), key=lambda item: (-item[1], item[0]))[0]
                      for kind, counts in by_type.items()}
        self.pixel_mean, self.pixel_variance = pixel_statistics(self.images(splits.train))
        log.info("visual_qa: %d training questions (%s), %d question words, %d answers",
                 len(questions), ", ".join(f"{t} {sum(by_type[t].values())}" for t in self.types),
                 self.vectorizer.vocabulary_size(), len(self.answers))

    def images(self, pair) -> np.ndarray:
        """The split's images as uint8 (N, S, S, 3), resized once."""
        key = id(pair[0])
        if key not in self._images:
            self._images[key] = stack_images(pair[0], self.image_size)
        return self._images[key]

    def encode_questions(self, questions) -> np.ndarray:
        """Strings (M,) -> ids int32 (M, question_length), 0 = padding."""
        out = [self.vectorizer(tf.constant(questions[start:start + 4096])).numpy()
               for start in range(0, len(questions), 4096)]
        return (np.concatenate(out) if out else np.zeros((0, self.question_length))).astype("int32")

    def examples(self, pair) -> dict[str, np.ndarray]:
        """One row per question: `image` (the image's index), `question` (str), `ids`,
        `answer` (index, -1: an answer training never saw), `type` (index in
        task.question_types)."""
        rows = [(index, q, a) for index, pairs in enumerate(pair[1]) for q, a in pairs]
        questions = [q for _, q, _ in rows]
        return {"image": np.array([index for index, _, _ in rows], np.int32),
                "question": np.array(questions, dtype=object),
                "ids": self.encode_questions(questions),
                "answer": np.array([self.answer_index.get(a, -1) for *_, a in rows], np.int32),
                "type": np.array([self.types.index(question_type(q)) for q in questions],
                                 np.int32)}

    def dataset(self, pair, training, batch_size):
        """Training: batch_size / K images, each with K of its questions drawn at random
        (K = `task.questions_per_image`, without repeats where an image has K), so a step
        encodes each image once for K questions; the questions of an image follow each other
        (`RepeatForQuestions`). Otherwise every question once, beside its own image."""
        if training:
            return self._training_dataset(pair, batch_size)
        images = tf.constant(self.images(pair))  # (N, S, S, 3) uint8, gathered per batch
        rows = self.examples(pair)
        known = rows["answer"] >= 0  # unseen answers: no loss (they count as wrong in evaluate)
        ds = tf.data.Dataset.from_tensor_slices(
            tuple(rows[key][known] for key in ("image", "ids", "answer", "type")))

        def split(index, ids, answer, kind):
            x = {"image": tf.cast(tf.gather(images, index), tf.float32), "question": ids}
            return x, {"answer": answer, "type": kind}

        ds = ds.batch(batch_size).map(plain(split), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def _training_dataset(self, pair, batch_size):
        k = int(self.task_cfg.questions_per_image)
        if batch_size % k:
            raise ValueError(f"trainer.batch_size={batch_size} must be a multiple of "
                             f"task.questions_per_image={k} (each image of a training batch "
                             f"brings {k} questions)")
        images, rows = self.images(pair), self.examples(pair)  # rows grouped by image, in order
        counts = np.bincount(rows["image"], minlength=len(images)).astype(np.int32)  # (N,)
        starts = (np.cumsum(counts) - counts).astype(np.int32)  # each image's first row
        ids, answers, types = (tf.constant(rows[key]) for key in ("ids", "answer", "type"))
        ds = tf.data.Dataset.from_tensor_slices((images, starts, counts))
        ds = ds.shuffle(len(images), seed=self.seed, reshuffle_each_iteration=True).repeat()

        def pick(image, start, count):  # K of the image's questions
            chosen = start + tf.gather(tf.random.shuffle(tf.range(count)), tf.range(k) % count)
            return image, tf.gather(ids, chosen), tf.gather(answers, chosen), tf.gather(types, chosen)

        def split(image, question, answer, kind):  # (B / K, S, S, 3), (B / K, K, L), (B / K, K)
            x = {"image": tf.cast(image, tf.float32),
                 "question": tf.reshape(question, [batch_size, self.question_length])}
            return x, {"answer": tf.reshape(answer, [batch_size]),
                       "type": tf.reshape(kind, [batch_size])}

        ds = ds.map(plain(pick), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size // k, drop_remainder=True)
        return ds.map(plain(split), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    # ------------------------------------------------------------------ model
    def build_model(self) -> keras.Model:
        size, fusion = self.image_size, option_value(self.task_cfg.fusion)
        images = keras.Input((size, size, 3), name="image")  # float32 pixels in [0, 255]
        question = keras.Input((self.question_length,), dtype="int32", name="question")
        x = keras.layers.Normalization(mean=self.pixel_mean, variance=self.pixel_variance,
                                       name="normalize")(images)
        # film: the unpooled encoder output, (B, h, w, D) (CNN) or (B, 1 + N, D) (ViT).
        x = self.backbone.image_encoder((size, size, 3), pooled=fusion != "film")(x)
        # Two parts, so that evaluation encodes each image once for all its questions.
        image_features = keras.Model(images, x, name="image_features")
        features = keras.Input(tuple(x.shape[1:]), name="features")
        ids = keras.Input((self.question_length,), dtype="int32", name="question")
        answerer = keras.Model({"features": features, "question": ids},
                               self._answer(features, ids), name="answerer")
        features = RepeatForQuestions(name="for_questions")(image_features(images), question)
        return keras.Model({"image": images, "question": question},
                           answerer({"features": features, "question": question}),
                           name=self.model_name)  # (B, answers)

    def _answer(self, x, question):
        """Image features and question ids -> answer logits (B, answers), by `task.fusion`."""
        cfg = self.task_cfg
        dim, fusion = int(cfg.fusion_dim), option_value(cfg.fusion)
        q = self.text_backbone.text_encoder(self.vectorizer.vocabulary_size(),
                                            self.question_length)(question)  # (B, H)
        q = keras.layers.Dense(dim, activation="relu", name="question_projection")(q)  # (B, F)
        if fusion == "film":
            if len(x.shape) == 4:
                x = keras.layers.Reshape((-1, x.shape[-1]), name="locations")(x)  # (B, N, D)
            x = keras.layers.Dense(dim, name="image_projection")(x)  # (B, N, F)
            scale = keras.layers.Dense(dim, name="film_scale")(q)  # (B, F)
            shift = keras.layers.Dense(dim, name="film_shift")(q)
            x = FeatureModulation(name="film")(x, scale, shift)
            x = keras.layers.Activation("relu")(x)
            x = keras.layers.Dense(dim, activation="relu", name="film_mixing")(x)  # (B, N, F)
            pooled = [keras.layers.GlobalAveragePooling1D(name="mean_pool")(x),  # counts
                      keras.layers.GlobalMaxPooling1D(name="max_pool")(x)]  # is it there
            fused = keras.layers.Concatenate(name="fused")([*pooled, q])  # (B, 3F)
        else:
            x = keras.layers.Dense(dim, activation="relu", name="image_projection")(x)  # (B, F)
            fused = (keras.layers.Multiply(name="fused")([x, q]) if fusion == "product"
                     else keras.layers.Concatenate(name="fused")([x, q]))
        h = keras.layers.Dense(dim, activation="relu", name="hidden")(fused)
        h = layers.Dropout(float(cfg.dropout))(h)
        return keras.layers.Dense(len(self.answers), dtype="float32", name="answer")(h)

    def loss(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true["answer"], y_pred,
                                                            from_logits=True)

    def stats(self, y_true, y_pred):
        """Answer accuracy, overall and per question type."""
        correct = tf.cast(tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32),
                                   tf.cast(y_true["answer"], tf.int32)), tf.float32)  # (B,)
        stats = {"accuracy": (tf.reduce_sum(correct), tf.cast(tf.size(correct), tf.float32))}
        for index, kind in enumerate(self.types):
            of_type = tf.cast(tf.equal(tf.cast(y_true["type"], tf.int32), index), tf.float32)
            stats[f"{kind}_accuracy"] = (tf.reduce_sum(correct * of_type), tf.reduce_sum(of_type))
        return stats

    # ------------------------------------------------------------------ results
    def predict_probabilities(self, model, pair, rows, batch_size=256) -> np.ndarray:
        """Softmax probabilities (M, answers) of the questions `rows` (`examples`); each image
        is encoded once, then answers all its questions."""
        encode = tf.function(lambda image: model.get_layer("image_features")(
            tf.cast(image, tf.float32), training=False), reduce_retracing=True, autograph=False)
        answer = tf.function(lambda features, ids: tf.nn.softmax(tf.cast(model.get_layer(
            "answerer")({"features": features, "question": ids}, training=False), tf.float32)),
            reduce_retracing=True, autograph=False)
        images = self.images(pair)
        features = [encode(images[start:start + batch_size]).numpy()
                    for start in range(0, len(images), batch_size)]
        features = np.concatenate(features) if features else None
        out = [answer(features[rows["image"][start:start + batch_size]],
                      rows["ids"][start:start + batch_size]).numpy()
               for start in range(0, len(rows["ids"]), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.answers)), np.float32)

    def evaluate(self, model, pair, batch_size):
        rows = self.examples(pair)
        probabilities = self.predict_probabilities(model, pair, rows, max(batch_size, 256))
        predicted = probabilities.argmax(-1)
        correct = predicted == rows["answer"]  # an unseen answer (-1) is never right
        answers = [a for pairs in pair[1] for _, a in pairs]
        prior = np.array([self.prior.get(question_type(q)) == a
                          for q, a in zip(rows["question"], answers)])
        unseen = int((rows["answer"] < 0).sum())
        if unseen:
            log.warning("visual_qa: %d of %d evaluation questions have answers training never "
                        "saw; they count as wrong", unseen, len(answers))
        self.samples = [{"index": int(rows["image"][i]), "question": str(rows["question"][i]),
                         "answer": answers[i], "predicted": self.answers[predicted[i]],
                         "probability": float(probabilities[i, predicted[i]])}
                        for i in range(min(int(self.task_cfg.num_samples), len(answers)))]
        metrics = {"accuracy": float(correct.mean()) if len(correct) else 0.0}
        for index, kind in enumerate(self.types):
            of_type = rows["type"] == index
            metrics[f"{kind}_accuracy"] = float(correct[of_type].mean()) if of_type.any() else 0.0
        metrics["prior_accuracy"] = float(prior.mean()) if len(prior) else 0.0
        return metrics

    # ------------------------------------------------------------------ serving
    def serving_fn(self, model):
        names, size, vectorizer = tf.constant(self.answers), self.image_size, self.vectorizer

        def serve(image_bytes, question):
            ids = tf.cast(vectorizer(question), tf.int32)  # (B, question_length)
            logits = model({"image": decode_images(image_bytes, size), "question": ids},
                           training=False)  # (B, answers)
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
            return {"answer": tf.gather(names, tf.argmax(probabilities, axis=-1)),
                    "probabilities": probabilities}

        return serve

    def serving_signature(self):
        return [tf.TensorSpec([None], tf.string, name="image_bytes"),
                tf.TensorSpec([None], tf.string, name="question")]

    def trackables(self) -> list:
        return [self.vectorizer]
