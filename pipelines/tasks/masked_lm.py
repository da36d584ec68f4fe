"""`task=masked_lm`: BERT-style pretraining. Metrics: `masked_accuracy`, `perplexity` (of the
masked tokens, on held-out text).

A vocabulary is learned on the training text (`task.tokenizer`: WordPiece subwords, or whole
words for word-level taggers such as NER); a sequence is `[CLS] A [SEP]` (or, with
`task.next_sentence`, `[CLS] A [SEP] B [SEP]`, segment ids 0 then 1). `task.mask_rate` of the
tokens are chosen, 80% replaced by `[MASK]`, 10% by a random token, 10% kept
(keras-hub's `MaskedLMMaskGenerator`, inside the tf.data pipeline after `repeat`, so every
epoch draws fresh masks; validation masks are drawn once, so epochs compare). The encoder is
the backbone's `text_encoder` with token + segment + position embeddings; the output head is
tied to the token embedding (`layers.MaskedLMHead`).

With `data.streaming=true` (`text_lines`, without next-sentence pairs or `exclude_texts`,
which need the corpus whole) the lines are packed in tf.data as they are read, and the
vocabulary learns on `task.vocabulary_sample` lines (a streamed column in one pass).

The run leaves `pretraining.json` (vocabulary, tokenizer, sizes) in its run directory, which
`model.init_from=RUN_DIR` (`pipelines.pretrained`) reads to fine-tune another task.
"""
from __future__ import annotations

import collections
import json
import logging
import math
import re

import keras
import keras_hub
import numpy as np
import tensorflow as tf

import layers
from pipelines.config import check_masked_lm_streaming, option_value
from pipelines.data import Splits
from pipelines.data.bucketing import bucket_by_length, resolve_buckets
from pipelines.data.files import DataFileError
from pipelines.data.streaming import StreamingSplit, example_dataset, sample_rows, text_batches
from pipelines.tasks.base import Task

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL = [PAD, UNK, CLS, SEP, MASK]  # ids 0..4 in every vocabulary
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
NUM_SEGMENTS = 2
MANIFEST = "pretraining.json"

log = logging.getLogger(__name__)
TOKENIZERS = ("wordpiece", "word")


def normalize(text: str) -> str:
    """A sentence for overlap checks: lower case, letters and digits only, so that
    tokenizations agree ("you 've" = "you've", "( reuters )" = "(Reuters)")."""
    return re.sub(r"[\W_]+", "", text.lower())


def learn_vocabulary(texts, size: int, tokenizer: str, lowercase: bool) -> list[str]:
    """Tokens by id: the 5 special tokens, then WordPiece pieces (keras-hub's trainer) or the
    most frequent whitespace-separated words (ties alphabetical), `size` in all at most.
    `texts`: a list, or a streaming column (read in one pass)."""
    if tokenizer == "wordpiece":
        return list(keras_hub.tokenizers.compute_word_piece_vocabulary(
            text_batches(texts), size, lowercase=lowercase,
            strip_accents=False, reserved_tokens=SPECIAL))
    counts = collections.Counter(w for t in texts for w in (t.lower() if lowercase else t).split())
    for token in SPECIAL:
        counts.pop(token, None)
    words = sorted(counts, key=lambda w: (-counts[w], w))[: size - len(SPECIAL)]
    return SPECIAL + words


@keras.saving.register_keras_serializable(package="pipelines")
class TextIds(keras.layers.Layer):
    """Strings (B,) -> token ids (B, sequence_length): `[CLS] tokens [SEP]`, padded with 0.

    `tokenize` gives the ragged ids without special tokens. `"[MASK]"` in a text is the mask
    token (in any case). Runs in tf.data, in the model's graph and in an exported SavedModel
    (WordPiece needs `import tensorflow_text` to load).

    Args:
        vocabulary: tokens by id, `SPECIAL` first.
        tokenizer: "wordpiece" or "word" (whitespace-separated words).
        lowercase: lower-case the text first.
        sequence_length: the padded length T, [CLS] and [SEP] included.
    """

    def __init__(self, vocabulary, tokenizer="wordpiece", lowercase=True, sequence_length=64,
                 **kwargs):
        super().__init__(**kwargs)
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"task.tokenizer must be one of {', '.join(TOKENIZERS)}; "
                             f"received {tokenizer!r}")
        if list(vocabulary[: len(SPECIAL)]) != SPECIAL:
            raise ValueError(f"the vocabulary must start with {SPECIAL}; received "
                             f"{list(vocabulary[:len(SPECIAL)])}")
        self.vocabulary, self.tokenizer = [str(t) for t in vocabulary], tokenizer
        self.lowercase, self.sequence_length = lowercase, sequence_length
        if tokenizer == "wordpiece":
            self.pieces = keras_hub.tokenizers.WordPieceTokenizer(
                vocabulary=self.vocabulary, lowercase=lowercase, strip_accents=False,
                oov_token=UNK, special_tokens=SPECIAL, special_tokens_in_strings=True,
                dtype="int32")
        else:
            # "" (padding) and [UNK] are the lookup's own ids 0 and 1.
            self.pieces = keras.layers.StringLookup(vocabulary=self.vocabulary[2:], mask_token="",
                                                    oov_token=UNK, name="word_lookup")
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=sequence_length, start_value=CLS_ID, end_value=SEP_ID,
            pad_value=PAD_ID)

    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def tokenize(self, texts):
        """strings (B,) -> ragged int32 ids (B, None)."""
        texts = tf.convert_to_tensor(texts, tf.string)
        if self.tokenizer == "wordpiece":
            ids = self.pieces(texts)
            if isinstance(ids, list):  # keras-hub gives Python lists in eager mode
                ids = tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)
            return tf.cast(ids, tf.int32)
        if self.lowercase:
            texts = tf.strings.regex_replace(tf.strings.lower(texts), r"\[mask\]", MASK)
        return tf.cast(self.pieces(tf.strings.split(texts)), tf.int32)

    def call(self, texts):
        return tf.cast(self.packer(self.tokenize(texts)), tf.int32)  # (B, T)

    def get_config(self):
        config = super().get_config()
        config.update(vocabulary=self.vocabulary, tokenizer=self.tokenizer,
                      lowercase=self.lowercase, sequence_length=self.sequence_length)
        return config


def network(backbone, vocabulary_size: int, sequence_length: int, max_predictions: int,
            next_sentence: bool, name: str = "masked_lm") -> keras.Model:
    """{token_ids, segment_ids (B, T), mask_positions (B, P)} -> {"mlm": logits (B, P, V),
    "nsp": logits (B, 2) with next_sentence}. The encoder is `backbone.text_encoder` (layers
    `embedding`, `encoder_{i}`: what `model.init_from` copies); the MLM head is tied to its
    token embedding."""
    encoder = backbone.text_encoder(vocabulary_size, sequence_length, return_sequences=True,
                                    num_segments=NUM_SEGMENTS)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    segment_ids = keras.Input((None,), dtype="int32", name="segment_ids")
    mask_positions = keras.Input((max_predictions,), dtype="int32", name="mask_positions")
    hidden = encoder([token_ids, segment_ids])  # (B, T, D)
    head = layers.MaskedLMHead(token_embedding=encoder.get_layer("embedding").token_embedding,
                               dtype="float32", name="mlm_head")
    outputs = {"mlm": head(hidden, mask_positions=mask_positions)}  # (B, P, V)
    if next_sentence:
        first = keras.layers.Lambda(lambda h: h[:, 0], name="cls")(hidden)  # (B, D)
        pooled = keras.layers.Dense(hidden.shape[-1], activation="tanh", name="pooler")(first)
        outputs["nsp"] = keras.layers.Dense(2, dtype="float32", name="nsp_head")(pooled)
    inputs = {"token_ids": token_ids, "segment_ids": segment_ids, "mask_positions": mask_positions}
    return keras.Model(inputs, outputs, name=name)


class MaskedLm(Task):
    """Text in, the masked tokens predicted (and, optionally, whether B follows A)."""

    # ------------------------------------------------------------------ data
    def load(self) -> Splits:
        """`text_lines` (texts, document ids); the texts of `labelled_text`, `conll` (words
        joined by spaces) or `parallel_text` (the source side) serve too, one document each."""
        reader = str(self.task_cfg.reader)
        splits = self.data.read(reader)
        if isinstance(splits.train, StreamingSplit):  # text_lines, nothing that needs it whole
            check_masked_lm_streaming(self.task_cfg)
            return splits

        def as_lines(pair):
            if not pair or reader == "text_lines":
                return pair
            texts = pair[0]
            if reader == "conll":
                texts = [" ".join(tokens) for tokens in texts]
            elif reader not in ("labelled_text", "parallel_text"):
                raise ValueError(f"task.reader={reader} has no text for task=masked_lm; use "
                                 "text_lines, labelled_text, conll or parallel_text")
            return list(texts), list(range(len(texts)))

        splits = Splits(as_lines(splits.train), as_lines(splits.validation),
                        as_lines(splits.test))
        if self.task_cfg.get("exclude_texts"):
            excluded = self._excluded_texts(str(self.task_cfg.exclude_texts), reader, as_lines)
            splits = Splits(*(self._without(pair, excluded, name) for pair, name in (
                (splits.train, "train"), (splits.validation, "validation"), (splits.test, "test"))))
        where = (getattr(self.data, "paths", None) or {}).get("train") or f"data={self.data.name}"
        if sum(bool(t.strip()) for t in splits.train[0]) < int(self.trainer_cfg.batch_size):
            raise DataFileError(
                f"{where}: the corpus has {len(splits.train[0])} lines of text, fewer than one "
                f"batch (trainer.batch_size={self.trainer_cfg.batch_size}); give more text or "
                "a smaller trainer.batch_size")
        return splits

    def _excluded_texts(self, paths: str, reader: str, as_lines) -> set[str]:
        """The normalised texts of `task.exclude_texts` (files read like the corpus)."""
        from pipelines.data.files import FilesSource

        if not isinstance(self.data, FilesSource):
            raise ValueError("task.exclude_texts needs data=files (it names files)")
        excluded = set()
        for path in (part.strip() for part in paths.split(",") if part.strip()):
            source = FilesSource(train=path, validation=path, text_column=self.data.text_column,
                                 label_column=self.data.label_column,
                                 source_lang=self.data.source_lang,
                                 target_lang=self.data.target_lang, tag_scheme=self.data.tag_scheme)
            excluded |= {normalize(text) for text in as_lines(source.read(reader).train)[0]}
        return excluded  # "" too, when they hold a punctuation-only line: such lines go

    @staticmethod
    def _without(pair, excluded: set[str], name: str):
        """`pair` without the lines whose normalised text is in `excluded`."""
        if not pair:
            return pair
        kept = [i for i, text in enumerate(pair[0]) if normalize(text) not in excluded]
        if len(kept) < len(pair[0]):
            log.info("task.exclude_texts: %d of the %d %s lines dropped (they occur in the "
                     "excluded files)", len(pair[0]) - len(kept), len(pair[0]), name)
        return [pair[0][i] for i in kept], [pair[1][i] for i in kept]

    @property
    def max_predictions(self) -> int:
        given = self.task_cfg.get("max_predictions")
        return int(given or max(1, math.ceil(self.task_cfg.mask_rate * self.task_cfg.max_length)))

    def adapt(self, splits: Splits) -> None:
        cfg = self.task_cfg
        if not 0.0 < cfg.mask_rate < 1.0:
            raise ValueError(f"task.mask_rate must be in (0, 1); received {cfg.mask_rate}")
        tokenizer = option_value(cfg.tokenizer)
        texts = sample_rows(splits.train[0], cfg.get("vocabulary_sample"), self.seed)
        vocabulary = learn_vocabulary(texts, cfg.vocabulary_size, tokenizer, cfg.lowercase)
        self.text_ids = TextIds(vocabulary, tokenizer, cfg.lowercase, cfg.max_length,
                                name="text_ids")
        self.vocabulary_size = len(vocabulary)
        self.masker = keras_hub.layers.MaskedLMMaskGenerator(
            self.vocabulary_size, mask_selection_rate=cfg.mask_rate, mask_token_id=MASK_ID,
            mask_selection_length=self.max_predictions,
            unselectable_token_ids=[PAD_ID, CLS_ID, SEP_ID], mask_token_rate=0.8,
            random_token_rate=0.1)
        self.pair_packer = keras_hub.layers.MultiSegmentPacker(
            sequence_length=cfg.max_length, start_value=CLS_ID, end_value=SEP_ID,
            pad_value=PAD_ID)

    def run_files(self) -> dict[str, str]:
        """`pretraining.json`: what `model.init_from` needs to reuse this run."""
        return {MANIFEST: json.dumps({
            "task": self.name, "model": self.backbone.name,
            "tokenizer": self.text_ids.tokenizer, "lowercase": self.text_ids.lowercase,
            "sequence_length": int(self.task_cfg.max_length), "num_segments": NUM_SEGMENTS,
            "max_predictions": self.max_predictions,
            "next_sentence": bool(self.task_cfg.next_sentence),
            "vocabulary": self.text_ids.vocabulary}, indent=1)}

    def _pairs(self, texts, documents, seed):
        """Next-sentence pairs: each line with the next line of its document (label 1) or,
        half the time (and for a document's last line), a random line of another (label 0)."""
        rng = np.random.default_rng(seed)
        documents = np.asarray(documents)
        second, is_next = [], []
        for i in range(len(texts)):
            follows = i + 1 < len(texts) and documents[i + 1] == documents[i]
            if follows and rng.random() < 0.5:
                second.append(texts[i + 1])
                is_next.append(1)
                continue
            j = int(rng.integers(len(texts)))
            for _ in range(10):  # a line of another document (a one-document corpus has none)
                if documents[j] != documents[i]:
                    break
                j = int(rng.integers(len(texts)))
            second.append(texts[j])
            is_next.append(0)
        return list(texts), second, np.array(is_next, "int32")

    def _pack(self, first, second):
        """strings (B,), (B,) -> token ids and segment ids (B, T), `[CLS] A [SEP] (B [SEP])`."""
        if self.task_cfg.next_sentence:
            token_ids, segment_ids = self.pair_packer(
                (self.text_ids.tokenize(first), self.text_ids.tokenize(second)))
            return tf.cast(token_ids, tf.int32), tf.cast(segment_ids, tf.int32)
        token_ids = self.text_ids(first)
        return token_ids, tf.zeros_like(token_ids)

    def _mask(self, token_ids, segment_ids, is_next):
        """A batch of packed sequences -> (x, y) with a fresh draw of masks."""
        masked = self.masker(token_ids)
        x = {"token_ids": tf.cast(masked["token_ids"], tf.int32), "segment_ids": segment_ids,
             "mask_positions": tf.cast(masked["mask_positions"], tf.int32)}
        y = {"mask_ids": tf.cast(masked["mask_ids"], tf.int32),
             "mask_weights": tf.cast(masked["mask_weights"], tf.float32), "next": is_next}
        return x, y

    def sequences(self, pair, training):
        """Unbatched (token ids (T,), segment ids (T,), is_next): a list's sequences packed
        once here; a streamed split's (`data.streaming=true`, no next-sentence pairs) as
        tf.data reads it."""
        if isinstance(pair, StreamingSplit):
            def pack(texts, documents):
                token_ids, segment_ids = self._pack(texts, None)
                return token_ids, segment_ids, tf.zeros_like(documents, tf.int32)

            return example_dataset(pair, training, self.seed).batch(1024).map(
                pack, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        texts, documents = pair
        seed = self.seed + (0 if training else 1)
        first, second, is_next = self._pairs(texts, documents, seed)
        packed = [tuple(part.numpy() for part in self._pack(a, b)) for a, b in
                  tf.data.Dataset.from_tensor_slices((first, second)).batch(4096)]
        token_ids = np.concatenate([ids for ids, _ in packed])
        segment_ids = np.concatenate([segments for _, segments in packed])
        return example_dataset((token_ids, segment_ids, is_next), training, self.seed)

    def dataset(self, pair, training, batch_size):
        """Sequences are tokenized and packed once; batches hold sequences of one length
        bucket (`task.length_buckets`), cut to it; masks are drawn per batch, after `repeat`,
        so afresh every epoch (validation: once, so that epochs compare)."""
        ds = self.sequences(pair, training)
        buckets = resolve_buckets(self.task_cfg.get("length_buckets"), self.task_cfg.max_length)
        if buckets:
            ds = bucket_by_length(ds, lambda ids, *_: tf.math.count_nonzero(ids), buckets,
                                  batch_size, drop_remainder=training,
                                  sequences=(True, True, False))
        else:
            ds = ds.batch(batch_size, drop_remainder=training)
        ds = ds.map(self._mask, num_parallel_calls=tf.data.AUTOTUNE)
        if not training:
            ds = tf.data.Dataset.from_generator(
                lambda batches=list(ds.as_numpy_iterator()): iter(batches),
                output_signature=ds.element_spec)
        return ds.prefetch(tf.data.AUTOTUNE)

    # ------------------------------------------------------------------ model
    def build_model(self) -> keras.Model:
        return network(self.backbone, self.vocabulary_size, int(self.task_cfg.max_length),
                       self.max_predictions, bool(self.task_cfg.next_sentence), self.model_name)

    @staticmethod
    def _masked_nll(y_true, y_pred):
        """(B, P) cross-entropy of the masked tokens, 0 at unused slots."""
        nll = keras.losses.sparse_categorical_crossentropy(y_true["mask_ids"], y_pred["mlm"],
                                                           from_logits=True)
        return nll * y_true["mask_weights"]

    def loss(self, y_true, y_pred):
        """Per sequence: the masked tokens' cross-entropy over `max_predictions` (each masked
        token weighs the same), plus the next-sentence cross-entropy."""
        loss = tf.reduce_sum(self._masked_nll(y_true, y_pred), -1) / float(self.max_predictions)
        if "nsp" in y_pred:
            loss += keras.losses.sparse_categorical_crossentropy(y_true["next"], y_pred["nsp"],
                                                                 from_logits=True)
        return loss

    def stats(self, y_true, y_pred):
        weights = y_true["mask_weights"]
        predicted = tf.argmax(y_pred["mlm"], -1, output_type=tf.int32)
        correct = tf.cast(tf.equal(predicted, y_true["mask_ids"]), tf.float32) * weights
        count = tf.reduce_sum(weights)
        stats = {"accuracy": (tf.reduce_sum(correct), count),
                 "masked_nll": (tf.reduce_sum(self._masked_nll(y_true, y_pred)), count)}
        if "nsp" in y_pred:
            right = tf.cast(tf.equal(tf.argmax(y_pred["nsp"], -1, output_type=tf.int32),
                                     y_true["next"]), tf.float32)
            stats["next_accuracy"] = (tf.reduce_sum(right), tf.cast(tf.size(right), tf.float32))
        return stats

    def evaluate(self, model, pair, batch_size):
        """Masked-token accuracy and perplexity (exp of the mean masked-token cross-entropy)
        on the evaluation split, masks drawn once with a fixed seed."""
        forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        totals = collections.defaultdict(lambda: [0.0, 0.0])
        for x, y in self.dataset(pair, training=False, batch_size=batch_size):
            for name, (total, count) in self.stats(y, forward(x)).items():
                totals[name][0] += float(total)
                totals[name][1] += float(count)
        mean = {name: total / max(count, 1.0) for name, (total, count) in totals.items()}
        metrics = {"masked_accuracy": mean["accuracy"], "perplexity": math.exp(mean["masked_nll"])}
        if "next_accuracy" in mean:
            metrics["next_sentence_accuracy"] = mean["next_accuracy"]
        masked = [self._masked_example(t) for t in pair[0][:10]]
        tokens = np.asarray(self.serve_in_process(model, tf.constant(masked))["tokens"])
        self.samples = [{"text": text, "filled": [t.decode() for t in row[0]]}
                        for text, row in zip(masked, tokens)]
        return metrics

    @staticmethod
    def _masked_example(text: str) -> str:
        words = text.split()
        if words:
            words[len(words) // 2] = MASK
        return " ".join(words)

    # ------------------------------------------------------------------ serving
    def serving_fn(self, model):
        """text with [MASK] (B,) -> `tokens` string (B, P, top_k) and `scores` float
        (B, P, top_k) for the first P = max_predictions masks of each text, in order; slots
        past a text's masks hold "" and 0."""
        vocabulary = tf.constant(self.text_ids.vocabulary)
        top_k, slots = int(self.task_cfg.top_k), self.max_predictions
        text_ids = self.text_ids

        def fill(text):
            token_ids = text_ids(text)  # (B, T)
            where = tf.where(tf.equal(token_ids, MASK_ID))  # (N, 2): row, position
            positions = tf.RaggedTensor.from_value_rowids(
                tf.cast(where[:, 1], tf.int32), where[:, 0], nrows=tf.shape(token_ids, tf.int64)[0])
            valid = tf.sequence_mask(tf.minimum(positions.row_lengths(), slots), slots)  # (B, P)
            positions = positions.to_tensor(default_value=0, shape=[None, slots])  # (B, P)
            logits = model({"token_ids": token_ids, "segment_ids": tf.zeros_like(token_ids),
                            "mask_positions": positions}, training=False)["mlm"]  # (B, P, V)
            scores, ids = tf.math.top_k(tf.nn.softmax(tf.cast(logits, tf.float32)), top_k)
            tokens = tf.gather(vocabulary, ids)  # (B, P, k)
            valid = valid[:, :, None]
            return {"tokens": tf.where(valid, tokens, ""),
                    "scores": tf.where(valid, scores, tf.zeros_like(scores))}

        return fill

    def trackables(self):
        self.text_ids(tf.constant(["a"]))  # called once, so that ExportArchive can track it
        return [self.text_ids]
