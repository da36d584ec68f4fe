"""`task=sentiment`: many-to-one text classification. Metrics: accuracy, macro_f1."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import accuracy_score, f1_score

import layers
from pipelines.data import Splits
from pipelines.data.bucketing import bucket_by_length, resolve_buckets
from pipelines.data.streaming import StreamingSplit, example_dataset, text_batches
from pipelines.tasks.base import Task, label_names, name_ids


class Sentiment(Task):
    """A sentence in, a label out.

    Text is standardised, split and mapped to ids by a `TextVectorization` adapted on the
    training split; it runs in the tf.data pipeline for training (the model sees static
    (B, T) int ids, XLA-friendly) and inside the exported graph for serving.

    With `task.length_buckets` the training and validation batches are cut to the bucket of
    their longest sentence (`pipelines.data.bucketing`); the model takes any T <= max_length
    and its padding is masked, so serving (padded to max_length) gives the same outputs.

    A streamed training split (`data.streaming=true`) is vectorized in tf.data as it is read;
    the vocabulary adapts on one pass over its files, the label names on another.
    """

    def adapt(self, splits: Splits) -> None:
        texts = splits.train[0]
        self.label_names = label_names(splits)
        self.label_index = {name: i for i, name in enumerate(self.label_names)}
        if getattr(self.backbone, "init_from", None):  # the pretraining run's tokenizer
            from pipelines.pretrained import open_run

            self.vectorizer = open_run(self.backbone.init_from).text_ids(self.task_cfg.max_length)
            self.vocabulary_size = self.vectorizer.vocabulary_size()
            return
        self.vectorizer = keras.layers.TextVectorization(
            max_tokens=self.task_cfg.vocabulary_size,
            standardize="lower_and_strip_punctuation" if self.task_cfg.lowercase
            else "strip_punctuation",
            output_sequence_length=self.task_cfg.max_length,
            name="text_vectorization",
        )
        self.vectorizer.adapt(text_batches(texts))
        self.vocabulary_size = self.vectorizer.vocabulary_size()

    def examples(self, pair, training):
        """Unbatched (token ids (max_length,), label id): a list vectorized once here (id 0
        only ever pads), not per epoch; a streamed split as tf.data reads it."""
        if isinstance(pair, StreamingSplit):
            return example_dataset(pair, training, self.seed).batch(1024).map(
                lambda texts, labels: (self.vectorizer(texts), name_ids(labels, self.label_names)),
                num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        texts, labels = pair
        ids = np.array([self.label_index[label] for label in labels], dtype="int32")
        token_ids = np.zeros((len(texts), self.task_cfg.max_length), "int32")
        for start in range(0, len(texts), 4096):
            chunk = tf.constant(list(texts[start:start + 4096]), tf.string)
            token_ids[start:start + len(chunk)] = self.vectorizer(chunk).numpy()
        return example_dataset((token_ids, ids), training, self.seed)

    def dataset(self, pair, training, batch_size):
        """(token ids (B, T), label ids (B,)): T = max_length, or with `task.length_buckets`
        batches of one bucket each, cut to its length."""
        ds = self.examples(pair, training)
        buckets = resolve_buckets(self.task_cfg.get("length_buckets"), self.task_cfg.max_length)
        if buckets:
            ds = bucket_by_length(ds, lambda x, y: tf.math.count_nonzero(x), buckets, batch_size,
                                  drop_remainder=training, sequences=(True, False))
        else:
            ds = ds.batch(batch_size, drop_remainder=training)
        return ds.prefetch(tf.data.AUTOTUNE)

    def build_model(self) -> keras.Model:
        factory = self.backbone
        encoder = factory.text_encoder(self.vocabulary_size, self.task_cfg.max_length)
        # Any T <= max_length: bucketed batches are shorter; serving pads to max_length.
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        x = encoder(token_ids)  # (B, H)
        x = layers.Dropout(getattr(factory, "dropout", 0.0))(x)
        logits = keras.layers.Dense(len(self.label_names), dtype="float32", name="head")(x)
        return keras.Model(token_ids, logits, name=self.model_name)

    def loss(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    def stats(self, y_true, y_pred):
        correct = tf.cast(tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32),
                                   tf.cast(y_true, tf.int32)), tf.float32)
        return {"accuracy": (tf.reduce_sum(correct), tf.cast(tf.size(correct), tf.float32))}

    def predict_ids(self, model, texts, batch_size=256) -> np.ndarray:
        ds = tf.data.Dataset.from_tensor_slices(texts).batch(batch_size).map(self.vectorizer)
        forward = tf.function(lambda ids: model(ids, training=False), reduce_retracing=True,
                              autograph=False)
        logits = np.concatenate([forward(ids).numpy() for ids in ds])
        return logits.argmax(-1)

    def evaluate(self, model, pair, batch_size):
        texts, labels = pair
        predicted = self.predict_ids(model, texts, batch_size)
        truth = np.array([self.label_index[label] for label in labels])
        self.samples = [
            {"text": t, "label": l, "predicted": self.label_names[p]}
            for t, l, p in zip(texts[:20], labels[:20], predicted[:20])
        ]
        return {
            "accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, average="macro",
                                       labels=list(range(len(self.label_names))))),
        }

    # ------------------------------------------------------------------ serving
    def serving_fn(self, model):
        names = tf.constant(self.label_names)
        vectorizer = self.vectorizer

        def serve(text):
            logits = model(vectorizer(text), training=False)  # (B, C)
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
            label = tf.gather(names, tf.argmax(probabilities, axis=-1))
            return {"label": label, "probabilities": probabilities}

        return serve

    def trackables(self):
        return [self.vectorizer]
