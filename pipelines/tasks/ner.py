"""`task=ner`: aligned many-to-many tagging. Metrics: entity-level `f1`, `precision`,
`recall` from seqeval (IOB2).

Words are the units: a word vocabulary (`StringLookup`, adapted on the training split) maps
each whitespace-separated word to an id, one tag per word, so tags never need re-aligning.
Everything else the model sees is computed from the raw words inside the graph, in the
training `tf.data` pipeline and in the export alike (`features`):
- `word_ids` (B, T): the lookup, on lower-cased words with `task.lowercase`; in training a
  word becomes `[UNK]` with probability `task.word_dropout` (so the `[UNK]` vector learns
  what rare words look like);
- `char_ids` (B, T, L) with `model.char_features=cnn|lstm`: each word's first
  L = `task.max_word_length` characters (`layers.char_ids`), encoded by `layers.CharCNN` or
  `layers.CharBiLSTM` into a vector concatenated to the word embedding;
- `case_ids` (B, T) with `task.case_features`: the word's case class (`CASE_CLASSES`), a
  small embedding concatenated likewise (what the lower-cased lookup no longer sees).

With `model.crf=true` the head's scores feed a `layers.LinearChainCRF`: its negative
log-likelihood is the loss and Viterbi decoding gives the tags (evaluation, validation F1,
export); IOB2's invalid transitions (`O` -> `I-X`, a sentence starting with `I-X`) are
forbidden. Model selection defaults to validation entity F1 (`task.monitor=val_f1`).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

import layers
from layers.char_encoder import DEFAULT_NUM_CHARS
from pipelines.data import Splits
from pipelines.data.bucketing import bucket_by_length, resolve_buckets
from pipelines.data.streaming import StreamingColumn, StreamingSplit, example_dataset
from pipelines.tasks.base import Task, name_ids

# Case classes, ids 1.. in this order (0 = padding); the first that matches wins.
CASE_CLASSES = (
    ("digit", r".*\p{Nd}.*"),  # has a digit: 1996, U2, 3-0
    ("upper", r"[^\p{Ll}]*\p{Lu}[^\p{Ll}]*"),  # capitals, no small letter: EU, U.S.
    ("title", r"\p{Lu}[^\p{Lu}]*\p{Ll}[^\p{Lu}]*"),  # one initial capital: Paris, O'clock
    ("lower", r"[^\p{Lu}]*\p{Ll}[^\p{Lu}]*"),  # small letters only: paris, e-mail
    ("other", r".+"),  # punctuation, mixed case (McDonald, iPhone), symbols
)
CASE_DIM = 8  # width of the case-class embedding
NUM_CHARS = DEFAULT_NUM_CHARS  # the character id table of `layers.char_ids` and the encoders


def case_ids(words):
    """words (...) strings, "" = padding -> case class ids (...) int32, 0 at padding."""
    ids = tf.zeros_like(words, tf.int32)
    for index, (_, pattern) in reversed(list(enumerate(CASE_CLASSES, start=1))):
        ids = tf.where(tf.strings.regex_full_match(words, pattern), index, ids)
    return ids


class Ner(Task):
    """Tokens in, one IOB2 tag per token out.

    With `task.length_buckets` the training and validation batches are cut to the bucket of
    their longest sentence (`pipelines.data.bucketing`); the model takes any T <= max_length
    and its padding is masked (the loss too), so nothing depends on the bucket.
    """

    validation_metric_names = ("f1", "precision", "recall")

    def __init__(self, config, **pieces):
        super().__init__(config, **pieces)
        self.char_features = getattr(self.backbone, "char_features", "none")
        self.use_crf = bool(getattr(self.backbone, "crf", False))
        self.max_word_length = int(config.get("max_word_length", 20))
        self.word_dropout = float(config.get("word_dropout", 0.0))
        self.case_features = bool(config.get("case_features", False))
        if self.max_word_length < 1:
            raise ValueError(f"task.max_word_length must be >= 1; received {self.max_word_length}")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"task.word_dropout must be in [0, 1); received {self.word_dropout}")
        self.crf = None

    def adapt(self, splits: Splits) -> None:
        tokens, tags = splits.train  # a streamed split: one pass for the tags, one for words
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
            self.lookup.adapt(self._words(tokens))
        self.vocabulary_size = self.lookup.vocabulary_size()

    def _standardize(self, word):
        return word.lower() if self.task_cfg.lowercase else word

    def _words(self, tokens):
        """The training words as tf.data batches, for the lookup to adapt on: a streamed
        split's in one pass over its files (lower-cased in the graph, as `_ids` does)."""
        if isinstance(tokens, StreamingColumn):
            words = tokens.split.examples().map(lambda sentence, tags: sentence).unbatch()
            if self.task_cfg.lowercase:
                words = words.map(lambda word: tf.strings.lower(word, encoding="utf-8"))
            return words.batch(4096)
        words = [self._standardize(w) for sentence in tokens for w in sentence]
        return tf.data.Dataset.from_tensor_slices(words).batch(4096)

    def _pad(self, sentences, fill):
        out = np.full((len(sentences), self.length), fill, dtype=object if isinstance(fill, str) else "int32")
        for i, sentence in enumerate(sentences):
            sentence = sentence[: self.length]
            out[i, : len(sentence)] = sentence
        return out

    def _ids(self, words):
        """words (B, T) strings, "" = padding -> ids (B, T)."""
        if self.task_cfg.lowercase:
            words = tf.strings.lower(words, encoding="utf-8")  # as str.lower in `adapt`
        return tf.cast(self.lookup(words), tf.int32)

    def features(self, words) -> dict:
        """Raw words (B, T), "" = padding -> the model's inputs (TF ops only)."""
        inputs = {"word_ids": self._ids(words)}  # (B, T)
        if self.char_features != "none":
            inputs["char_ids"] = layers.char_ids(words, self.max_word_length, NUM_CHARS)  # (B, T, L)
        if self.case_features:
            inputs["case_ids"] = case_ids(words)  # (B, T)
        return inputs

    def _drop_words(self, inputs, seed):
        """Training only: a real word's id becomes [UNK] (1) with probability word_dropout."""
        ids = inputs["word_ids"]
        noise = tf.random.stateless_uniform(tf.shape(ids), tf.stack([seed, self.seed]))
        dropped = tf.logical_and(noise < self.word_dropout, ids > 1)
        return {**inputs, "word_ids": tf.where(dropped, tf.ones_like(ids), ids)}

    def examples(self, pair, training):
        """Unbatched (words (max_length,) strings, "" = padding; tag ids + 1 (max_length,),
        0 = padding): a list padded here, a streamed split as tf.data reads it."""
        if isinstance(pair, StreamingSplit):
            def pad(tokens, tags):  # ragged (B, None) -> (B, max_length)
                shape = [None, self.length]
                tags = tf.ragged.map_flat_values(name_ids, tags[:, : self.length], self.tag_names)
                return (tokens[:, : self.length].to_tensor("", shape=shape),
                        (tags + 1).to_tensor(0, shape=shape))

            # Padded a few hundred sentences per op: per sentence, the ops cost more than
            # the train step reads.
            return example_dataset(pair, training, self.seed).ragged_batch(256).map(
                pad, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        tokens, tags = pair
        words = self._pad(tokens, "")
        tag_ids = self._pad([[self.tag_index[t] + 1 for t in s] for s in tags], 0)
        return example_dataset((words.astype(str), tag_ids), training, self.seed)

    def dataset(self, pair, training, batch_size):
        ds = self.examples(pair, training)
        buckets = resolve_buckets(self.task_cfg.get("length_buckets"), self.length)
        if buckets:
            # Tags are id + 1 at real words, 0 at padding: their count is the length.
            ds = bucket_by_length(ds, lambda w, y: tf.math.count_nonzero(y), buckets,
                                  batch_size, drop_remainder=training, sequences=(True, True))
        else:
            ds = ds.batch(batch_size, drop_remainder=training)
        ds = ds.map(lambda w, y: (self.features(w), y), num_parallel_calls=tf.data.AUTOTUNE)
        if training and self.word_dropout:
            # One seed per batch from a seeded stream: the same noise when a resumed run
            # replays (skips) the stream.
            seeds = tf.data.Dataset.random(seed=self.seed)
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda xy, seed: (self._drop_words(xy[0], seed), xy[1]),
                num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def _char_encoder(self):
        factory = self.backbone
        dropout = float(getattr(factory, "dropout", 0.0))
        if self.char_features == "cnn":
            return layers.CharCNN(NUM_CHARS, char_dim=factory.char_dim,
                                  filters=factory.char_filters, dropout=dropout, name="char_cnn")
        return layers.CharBiLSTM(NUM_CHARS, char_dim=factory.char_dim,
                                 units=factory.char_filters, dropout=dropout, name="char_bilstm")

    def build_model(self) -> keras.Model:
        factory = self.backbone
        # Any T <= max_length: bucketed batches are shorter; serving pads to max_length.
        word_ids = keras.Input((None,), dtype="int32", name="word_ids")
        inputs, features = {"word_ids": word_ids}, []
        if self.char_features != "none":
            inputs["char_ids"] = keras.Input((None, self.max_word_length), dtype="int32",
                                             name="char_ids")
            features.append(self._char_encoder()(inputs["char_ids"]))  # (B, T, C)
        if self.case_features:
            inputs["case_ids"] = keras.Input((None,), dtype="int32", name="case_ids")
            features.append(keras.layers.Embedding(len(CASE_CLASSES) + 1, CASE_DIM,
                                                   name="case_embedding")(inputs["case_ids"]))
        feature_dim = sum(int(f.shape[-1]) for f in features)
        encoder = factory.text_encoder(self.vocabulary_size, self.length, return_sequences=True,
                                       feature_dim=feature_dim)
        if features:
            joined = (features[0] if len(features) == 1
                      else keras.layers.Concatenate(name="word_features")(features))  # (B, T, F)
            x = encoder({"token_ids": word_ids, "features": joined})  # (B, T, H)
        else:
            x = encoder(word_ids)  # (B, T, H)
        x = layers.Dropout(getattr(factory, "dropout", 0.0))(x)
        scores = keras.layers.Dense(len(self.tag_names), dtype="float32", name="head")(x)  # (B, T, K)
        if self.use_crf:
            # Calling the CRF returns the scores unchanged and puts the transitions in the model.
            self.crf = layers.LinearChainCRF(len(self.tag_names), dtype="float32", name="crf",
                                             **layers.iob2_allowed_transitions(self.tag_names))
            scores = self.crf(scores)
        return keras.Model(inputs, scores, name=self.model_name)

    # Targets carry the padding: y = tag id + 1 at real words, 0 at padding.
    def loss(self, y_true, y_pred):
        """Per sentence, over real words only, / max_length: the cross-entropy summed over
        words, or with the CRF the sentence's negative log-likelihood."""
        mask = tf.not_equal(y_true, 0)  # (B, T)
        tags = tf.maximum(tf.cast(y_true, tf.int32) - 1, 0)
        if self.use_crf:
            return self.crf.negative_log_likelihood(y_pred, tags, mask) / float(self.length)
        token_loss = keras.losses.sparse_categorical_crossentropy(tags, y_pred, from_logits=True)
        return tf.reduce_sum(token_loss * tf.cast(mask, tf.float32), axis=-1) / float(self.length)

    def stats(self, y_true, y_pred):
        """Tag accuracy of the per-word argmax over real words (monitoring only: it ignores
        the CRF's transitions; the result and `val_f1` are entity F1 of the decoded tags)."""
        mask = tf.cast(tf.not_equal(y_true, 0), tf.float32)
        predicted = tf.argmax(y_pred, -1, output_type=tf.int32) + 1
        correct = tf.cast(tf.equal(predicted, tf.cast(y_true, tf.int32)), tf.float32)
        return {"accuracy": (tf.reduce_sum(correct * mask), tf.reduce_sum(mask))}

    def decode(self, model, inputs):
        """The model's inputs -> tag ids (B, T) int32: Viterbi with the CRF, else argmax."""
        scores = model(inputs, training=False)  # (B, T, K)
        if self.use_crf:
            return model.get_layer("crf").decode(scores, tf.not_equal(inputs["word_ids"], 0))
        return tf.argmax(scores, -1, output_type=tf.int32)

    def _tagger(self, model):
        """words (B, max_length) -> tag ids (B, T), T the longest sentence of the batch: one
        graph per model, traced once (the per-epoch validation F1 reuses it)."""
        if getattr(self, "_tagged_model", None) is not model:
            def forward(w):
                width = tf.reduce_max(tf.reduce_sum(tf.cast(tf.not_equal(w, ""), tf.int32), 1))
                return self.decode(model, self.features(w[:, : tf.maximum(width, 1)]))

            self._tagger_fn = tf.function(
                forward, input_signature=[tf.TensorSpec([None, self.length], tf.string)])
            self._tagged_model = model
        return self._tagger_fn

    def predict_tags(self, model, sentences, batch_size=256) -> list[list[str]]:
        """Tags per word; words past max_length (rare) are tagged "O".

        Sentences go by length (a batch of similar ones) and each batch is cut to its longest
        sentence: the outputs do not depend on padding, and short batches cost less (Viterbi
        and the RNN run over T steps)."""
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        words = self._pad([sentences[i] for i in order], "")
        forward = self._tagger(model)
        ds = tf.data.Dataset.from_tensor_slices(words.astype(str)).batch(batch_size)
        ids = [None] * len(sentences)
        rows = (row for batch in ds for row in forward(batch).numpy())
        for index, row in zip(order, rows):
            ids[index] = row
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
            tags = tf.gather(names, self.decode(model, self.features(words)))  # (B, T)
            dense_tokens = tokens.to_tensor(default_value="")  # (B, longest sentence)
            width = tf.shape(dense_tokens)[1]
            valid = tf.sequence_mask(tokens.row_lengths(), width)
            return {"tokens": dense_tokens, "tags": tf.where(valid, tags[:, :width], "")}

        return tag

    def trackables(self):
        return [self.lookup]
