"""`task=ner`: aligned many-to-many tagging. Metrics: entity-level `f1`, `precision`,
`recall` from seqeval (IOB2).

Words are the units: a word vocabulary (`StringLookup`, adapted on the training split) maps
each whitespace-separated word to an id, one tag per word, so tags never need re-aligning.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from pipelines.data import Splits
from pipelines.data.bucketing import bucket_by_length, resolve_buckets
from pipelines.tasks.base import Task


class Ner(Task):
    """Tokens in, one IOB2 tag per token out.

    With `task.length_buckets` the training and validation batches are cut to the bucket of
    their longest sentence (`pipelines.data.bucketing`); the model takes any T <= max_length
    and its padding is masked (the loss too), so nothing depends on the bucket.
    """

    def adapt(self, splits: Splits) -> None:
        tokens, tags = splits.train
        self.length = self.task_cfg.max_length
        self.tag_names = sorted({tag for sentence in tags for tag in sentence})
        for split_name, pair in (("validation", splits.validation), ("test", splits.test)):
            unknown = sorted({t for s in pair[1] for t in s} - set(self.tag_names)) if pair else []
            if unknown:
                raise ValueError(f"the {split_name} split has tags {unknown[:5]} that never "
                                 f"occur in train (train tags: {self.tag_names})")
        self.tag_index = {name: i for i, name in enumerate(self.tag_names)}
        # id 0 = padding (""), id 1 = out of vocabulary.
        if getattr(self.backbone, "init_from", None):  # the pretraining run's word vocabulary
            from pipelines.pretrained import open_run

            self.lookup = open_run(self.backbone.init_from).word_lookup()
        else:
            self.lookup = keras.layers.StringLookup(
                max_tokens=self.task_cfg.vocabulary_size, mask_token="", oov_token="[UNK]",
                name="word_lookup")
            words = [self._standardize(w) for sentence in tokens for w in sentence]
            self.lookup.adapt(tf.data.Dataset.from_tensor_slices(words).batch(4096))
        self.vocabulary_size = self.lookup.vocabulary_size()

    def _standardize(self, word):
        return word.lower() if self.task_cfg.lowercase else word

    def _pad(self, sentences, fill):
        out = np.full((len(sentences), self.length), fill, dtype=object if isinstance(fill, str) else "int32")
        for i, sentence in enumerate(sentences):
            sentence = sentence[: self.length]
            out[i, : len(sentence)] = sentence
        return out

    def _ids(self, words):
        """words (B, T) strings, "" = padding -> ids (B, T)."""
        if self.task_cfg.lowercase:
            words = tf.strings.lower(words)
        return tf.cast(self.lookup(words), tf.int32)

    def dataset(self, pair, training, batch_size):
        tokens, tags = pair
        words = self._pad([[self._standardize(w) for w in s] for s in tokens], "")
        tag_ids = self._pad([[self.tag_index[t] + 1 for t in s] for s in tags], 0)
        ds = tf.data.Dataset.from_tensor_slices((words.astype(str), tag_ids))
        if training:
            ds = ds.shuffle(len(tokens), seed=self.seed, reshuffle_each_iteration=True).repeat()
        buckets = resolve_buckets(self.task_cfg.get("length_buckets"), self.length)
        if buckets:
            # Tags are id + 1 at real words, 0 at padding: their count is the length.
            ds = bucket_by_length(ds, lambda w, y: tf.math.count_nonzero(y), buckets,
                                  batch_size, drop_remainder=training, sequences=(True, True))
        else:
            ds = ds.batch(batch_size, drop_remainder=training)
        ds = ds.map(lambda w, y: (self._ids(w), y), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def build_model(self) -> keras.Model:
        factory = self.backbone
        encoder = factory.text_encoder(self.vocabulary_size, self.length, return_sequences=True)
        # Any T <= max_length: bucketed batches are shorter; serving pads to max_length.
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        x = encoder(token_ids)  # (B, T, H)
        x = keras.layers.Dropout(getattr(factory, "dropout", 0.0))(x)
        logits = keras.layers.Dense(len(self.tag_names), dtype="float32", name="head")(x)
        return keras.Model(token_ids, logits, name=self.model_name)

    # Targets carry the padding: y = tag id + 1 at real words, 0 at padding.
    def loss(self, y_true, y_pred):
        """Cross-entropy summed over real words / max_length, per sentence; pads ignored."""
        mask = tf.cast(tf.not_equal(y_true, 0), tf.float32)  # (B, T)
        tags = tf.maximum(tf.cast(y_true, tf.int32) - 1, 0)
        token_loss = keras.losses.sparse_categorical_crossentropy(tags, y_pred, from_logits=True)
        return tf.reduce_sum(token_loss * mask, axis=-1) / float(self.length)

    def stats(self, y_true, y_pred):
        """Tag accuracy over real words (monitoring only; the result is entity F1)."""
        mask = tf.cast(tf.not_equal(y_true, 0), tf.float32)
        predicted = tf.argmax(y_pred, -1, output_type=tf.int32) + 1
        correct = tf.cast(tf.equal(predicted, tf.cast(y_true, tf.int32)), tf.float32)
        return {"accuracy": (tf.reduce_sum(correct * mask), tf.reduce_sum(mask))}

    def predict_tags(self, model, sentences, batch_size=256) -> list[list[str]]:
        """Tags per word; words past max_length (rare) are tagged "O"."""
        words = self._pad([[self._standardize(w) for w in s] for s in sentences], "")
        forward = tf.function(lambda w: tf.argmax(model(self._ids(w), training=False), -1),
                              reduce_retracing=True)
        ds = tf.data.Dataset.from_tensor_slices(words.astype(str)).batch(batch_size)
        ids = np.concatenate([forward(batch).numpy() for batch in ds])
        return [[self.tag_names[i] for i in row[: len(s)]] + ["O"] * max(0, len(s) - self.length)
                for row, s in zip(ids, sentences)]

    def evaluate(self, model, pair, batch_size):
        sentences, truth = pair
        predicted = self.predict_tags(model, sentences, batch_size)
        self.samples = [{"tokens": " ".join(s), "tags": " ".join(t), "predicted": " ".join(p)}
                        for s, t, p in zip(sentences[:20], truth[:20], predicted[:20])]
        kwargs = dict(mode="strict", scheme=IOB2, zero_division=0)
        return {
            "f1": float(f1_score(truth, predicted, **kwargs)),
            "precision": float(precision_score(truth, predicted, **kwargs)),
            "recall": float(recall_score(truth, predicted, **kwargs)),
        }

    # ------------------------------------------------------------------ serving
    def serving_fn(self, model):
        names = tf.constant(self.tag_names)

        def tag(text):
            tokens = tf.strings.split(text)[:, : self.length]  # ragged (B, None) words
            words = tokens.to_tensor(default_value="", shape=[None, self.length])
            predicted = tf.argmax(model(self._ids(words), training=False), -1)  # (B, T)
            tags = tf.gather(names, predicted)  # (B, T)
            dense_tokens = tokens.to_tensor(default_value="")  # (B, longest sentence)
            width = tf.shape(dense_tokens)[1]
            valid = tf.sequence_mask(tokens.row_lengths(), width)
            return {"tokens": dense_tokens, "tags": tf.where(valid, tags[:, :width], "")}

        return tag

    def trackables(self):
        return [self.lookup]
