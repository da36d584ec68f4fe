"""What translation and captioning share: the target-side text pipeline, the sequence loss,
token statistics, decoding through `EncoderDecoder.generate`, and per-epoch validation BLEU
(`val_bleu`, through `pipelines.tasks.validation`).

Target tokenizers reserve ids 0-3 for padding, unknown, start and end: `WordPieceTokenizer`
(subwords learned with keras-hub's WordPiece trainer; loading the export needs
`import tensorflow_text`), `SentencePieceTokenizer` (a BPE model trained by the compiled
`sentencepiece` library in seconds, served by tensorflow-text's `SentencepieceTokenizer`; it
keeps the whitespace, so its output reads as written: "T-Shirt", "Hut.") and `WordTokenizer`
(whole words from a `TextVectorization` vocabulary, core TF ops only). All give ragged ids in
the graph and detokenize in it; `learn_tokenizer` picks one by its `task.tokenizer` name and
learns it on at most `task.vocabulary_sample` lines.
"""
from __future__ import annotations

import abc
import hashlib
import io
import logging
import os
import re

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from pipelines.data.bucketing import bucket_by_length, resolve_buckets
from pipelines.data.streaming import sample_rows, text_batches
from pipelines.distribute import choose_decode_jit
from pipelines.logs import native_lines_dropped
from pipelines.tasks.base import Task, plain

log = logging.getLogger(__name__)

PAD, UNK, START, END = "[PAD]", "[UNK]", "[START]", "[END]"
RESERVED = [PAD, UNK, START, END]  # ids 0..3
_PUNCTUATION = re.compile(r'[!"#$%&()\*\+,\-\./:;<=>?@\[\\\]^_`{|}~\']')  # as TextVectorization


def learn_wordpiece(texts: list[str], vocabulary_size: int, lowercase: bool):
    """A WordPiece tokenizer whose vocabulary is learned on `texts` (ids 0-3 reserved)."""
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        text_batches(texts), vocabulary_size,
        lowercase=lowercase, strip_accents=False, reserved_tokens=RESERVED,
    )
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, lowercase=lowercase, strip_accents=False, oov_token=UNK,
        dtype="int32",
    )


class WordPieceTokenizer:
    """Subwords from a WordPiece vocabulary learned on the training texts."""

    def __init__(self, texts: list[str], vocabulary_size: int, lowercase: bool):
        self.tokenizer = learn_wordpiece(texts, vocabulary_size, lowercase)
        self.start_id = self.tokenizer.token_to_id(START)
        self.end_id = self.tokenizer.token_to_id(END)
        self.lowercase = lowercase

    def vocabulary_size(self) -> int:
        return self.tokenizer.vocabulary_size()

    def get_vocabulary(self) -> list[str]:
        return self.tokenizer.get_vocabulary()

    def tokenize(self, texts):
        """strings (B,) -> ragged ids (B, None)."""
        ids = self.tokenizer(texts)
        if isinstance(ids, list):  # keras-hub gives Python lists in eager mode
            ids = tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)
        return tf.cast(ids, tf.int32)

    def detokenize(self, ids):
        """ragged ids (B, None) -> strings (B,)."""
        texts = self.tokenizer.detokenize(ids)
        if isinstance(texts, (list, str, bytes)):  # eager mode, as above
            texts = tf.constant(texts)
        return tf.strings.strip(texts)

    def normalize(self, text: str) -> str:
        return " ".join((text.lower() if self.lowercase else text).split())

    def trackables(self) -> list:
        return [self.tokenizer]


class WordTokenizer:
    """Whole words from a `TextVectorization` vocabulary: ids 0 '', 1 [UNK], 2 [start],
    3 [end], then the training words by frequency."""

    start_id, end_id = 2, 3

    def __init__(self, texts: list[str], vocabulary_size: int, lowercase: bool):
        standardize = "lower_and_strip_punctuation" if lowercase else "strip_punctuation"
        counter = keras.layers.TextVectorization(max_tokens=vocabulary_size - 2,
                                                 standardize=standardize)
        counter.adapt(text_batches(texts))
        words = [str(w) for w in counter.get_vocabulary()[2:]]  # without '' and [UNK]
        self.layer = keras.layers.TextVectorization(
            vocabulary=[START.lower(), END.lower(), *words], standardize=standardize,
            ragged=True, name="caption_vectorization")
        self.vocabulary = [str(w) for w in self.layer.get_vocabulary()]
        self.words = tf.constant(self.vocabulary)
        self.lowercase = lowercase
        self.layer(tf.constant(["a"]))  # called once, so that ExportArchive can track it

    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def get_vocabulary(self) -> list[str]:
        return self.vocabulary

    def tokenize(self, texts):
        return tf.cast(self.layer(texts), tf.int32)

    def detokenize(self, ids):
        return tf.strings.reduce_join(tf.gather(self.words, ids), axis=-1, separator=" ")

    def normalize(self, text: str) -> str:
        """A reference as the tokenizer sees it: what BLEU compares hypotheses with."""
        text = _PUNCTUATION.sub("", text.lower() if self.lowercase else text)
        return " ".join(text.split())

    def trackables(self) -> list:
        return [self.layer]


# SentencePiece's trainer: its control symbols are our reserved tokens at ids 0-3; the identity
# normalisation and kept whitespace make detokenize(tokenize(s)) == s (NFKC would rewrite
# characters such as a no-break space, which the Multi30k validation text has). BPE rather than
# the unigram model: on Multi30k it trained 10x faster here with fewer tokens per sentence
# (14.6 vs 15.4 for German at 8,000), and on a tiny corpus unigram stops at a few dozen
# pieces, mostly letters, where BPE keeps the words.
SENTENCEPIECE_OPTIONS = dict(
    model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False,
    character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece=PAD,
    unk_piece=UNK, bos_piece=START, eos_piece=END,
    hard_vocab_limit=False,  # a small corpus gets the pieces it has, not an error
    minloglevel=2)


def vocabulary_lines(texts, sample: int | None, seed: int) -> list[str]:
    """At most `sample` of `texts` (None: all of them), drawn with `seed`, in corpus order; a
    streaming column (`data.streaming=true`) gives the same lines in one pass over its files
    (all of them: the column itself, which the learners stream)."""
    return sample_rows(texts, sample, seed)


def learn_sentencepiece(texts, vocabulary_size: int) -> bytes:
    """The serialized SentencePiece model (`ModelProto`) learned on `texts` (a list, or any
    iterable: a streaming column is read once), ids 0-3 reserved. Lines without a character
    are left out (the trainer refuses an empty corpus)."""
    import itertools

    import sentencepiece

    seen = 0

    def counted():
        nonlocal seen
        for text in texts:
            seen += 1
            yield text

    lines = (text for text in counted() if text.strip())
    first = next(lines, None)
    if first is None:
        raise ValueError("a SentencePiece vocabulary needs at least one non-empty line; "
                         f"received {seen} lines")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain([first], lines), model_writer=model,
        vocab_size=int(vocabulary_size),
        num_threads=min(os.cpu_count() or 1, 16), **SENTENCEPIECE_OPTIONS)
    return model.getvalue()


# tensorflow-text's SentencePiece resource is private to its kernel by default (seen with
# 2.21, both tested):
# - `tf.random.set_seed` (keras.utils.set_random_seed) clears the eager kernel cache, and with
#   the kernel the resource: "Resource ..._SentencepieceOp... does not exist" afterwards;
# - two unnamed tokenizers of one export (source and target) load as one: both run one model.
# So the resource gets a shared name, the hash of the model (same model, same resource), and
# the process keeps one tokenizer per model.
_SENTENCEPIECE_SERVERS: dict[str, object] = {}


def _sentencepiece_server(model: bytes):
    """The process's `tensorflow_text.SentencepieceTokenizer` of this serialized model."""
    import tensorflow_text
    from tensorflow_text.python.ops import sentencepiece_tokenizer as tf_text_sentencepiece

    class SharedModel(tf_text_sentencepiece._SentencepieceModelResource):
        def _create_resource(self):
            with tf.name_scope(self._name):
                return tf_text_sentencepiece.gen_sentencepiece_tokenizer.sentencepiece_op(
                    model=self._model, shared_name=self._name)

    name = "sentencepiece_" + hashlib.sha1(model).hexdigest()[:16]
    if name not in _SENTENCEPIECE_SERVERS:
        with native_lines_dropped():  # the kernel loads the model here, logging INFO
            tokenizer = tensorflow_text.SentencepieceTokenizer(model=model, out_type=tf.int32,
                                                               name=name)
            tokenizer._model_resource = SharedModel(model, name)
            tokenizer.tokenize(tf.constant([""]))
        _SENTENCEPIECE_SERVERS[name] = tokenizer
    return _SENTENCEPIECE_SERVERS[name]


class SentencePieceTokenizer:
    """Subwords of a SentencePiece BPE model learned on the training texts, served in the
    graph by `tensorflow_text.SentencepieceTokenizer` (loading the export needs
    `import tensorflow_text`); the model proto lives inside that tokenizer's resource, so
    the export carries it. Reversible: `detokenize(tokenize(s)) == s` for text whose characters
    the training lines have (others become [UNK]); `lowercase` lower-cases in the graph first.
    The vocabulary is at most `vocabulary_size` pieces (fewer on a small corpus)."""

    start_id, end_id = 2, 3

    def __init__(self, texts: list[str], vocabulary_size: int, lowercase: bool):
        import sentencepiece

        self.lowercase = lowercase
        if lowercase:  # the graph's own lower-casing, so that training and serving agree
            texts = (t.decode("utf-8") for batch in text_batches(texts)
                     for t in self._lower(batch).numpy())
        self.model = learn_sentencepiece(texts, vocabulary_size)
        processor = sentencepiece.SentencePieceProcessor(model_proto=self.model)
        self.vocabulary = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        self.tokenizer = _sentencepiece_server(self.model)

    def _lower(self, texts):
        return tf.strings.lower(texts, encoding="utf-8") if self.lowercase else texts

    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def get_vocabulary(self) -> list[str]:
        return self.vocabulary

    def tokenize(self, texts):
        """strings (B,) -> ragged ids (B, None)."""
        return self.tokenizer.tokenize(self._lower(tf.convert_to_tensor(texts)))

    def detokenize(self, ids):
        """ragged ids (B, None) -> strings (B,): pieces joined, '▁' back to spaces."""
        return self.tokenizer.detokenize(ids)

    def normalize(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def trackables(self) -> list:
        return [self.tokenizer]


# `task.tokenizer` values and the classes they name (one option of a task, not a registry).
TOKENIZERS = {"wordpiece": WordPieceTokenizer, "sentencepiece": SentencePieceTokenizer,
              "word": WordTokenizer}


def learn_tokenizer(kind: str, texts: list[str], vocabulary_size: int, lowercase: bool,
                    sample: int | None = None, seed: int = 0):
    """The tokenizer `task.tokenizer=kind`, learned on at most `sample` of `texts` (seeded)."""
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {sorted(TOKENIZERS)}; received {kind!r}")
    return TOKENIZERS[kind](vocabulary_lines(texts, sample, seed), vocabulary_size, lowercase)


def sequence_loss(y_true, y_pred, length: int | None = None):
    """Per sequence (B,): token cross-entropy summed over its tokens (0 = padding), divided
    by `length` (a constant: every token weighs the same) or, with None, by the sequence's
    own token count (every sequence weighs the same). Padding never changes it."""
    mask = tf.cast(tf.not_equal(y_true, 0), tf.float32)  # (B, T)
    token_loss = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
    total = tf.reduce_sum(token_loss * mask, axis=-1)
    if length is not None:
        return total / float(length)
    return total / tf.maximum(tf.reduce_sum(mask, axis=-1), 1.0)


def token_accuracy(y_true, y_pred) -> dict:
    """Next-token accuracy on valid positions under teacher forcing: monitoring only."""
    mask = tf.cast(tf.not_equal(y_true, 0), tf.float32)
    correct = tf.cast(tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32),
                               tf.cast(y_true, tf.int32)), tf.float32)
    return {"accuracy": (tf.reduce_sum(correct * mask), tf.reduce_sum(mask))}


class TargetText:
    """The target side of generated text: a tokenizer with ids 0-3 reserved, `[START] ids
    [END]` targets of `target_length + 1` ids, detokenization without the special tokens, and
    the `decode.*` search over a model's `generate`. `set_target` sets it up (`decode_cfg`
    set before); `GenerationTask` and `task=multitask`'s caption heads use it."""

    def set_target(self, tokenizer, target_length: int) -> None:
        self.tokenizer, self.target_length = tokenizer, int(target_length)
        self.start_id, self.end_id = tokenizer.start_id, tokenizer.end_id
        self.max_decode = min(self.decode_cfg.max_length or self.target_length,
                              self.target_length)

    def encode_targets(self, texts):
        """strings (B,) -> [START] ids [END] (B, target_length + 1), 0-padded, cut."""
        ids = self.tokenizer.tokenize(texts)[:, : self.target_length - 1]  # ragged (B, None)
        edge = tf.ones([ids.nrows(), 1], tf.int32)
        full = tf.concat([edge * self.start_id, ids, edge * self.end_id], axis=1)
        return full.to_tensor(shape=[None, self.target_length + 1])

    def detokenize(self, ids):
        """ids (B, T) -> strings (B,), special tokens dropped."""
        ids = tf.cast(ids, tf.int32)
        return self.tokenizer.detokenize(tf.ragged.boolean_mask(ids, ids >= len(RESERVED)))

    def generate_ids(self, model, source, jit_compile: bool = False):
        """source (B, ...) -> token ids (B, max_decode), beam search per `decode.*`, under XLA
        with `jit_compile` (`search`)."""
        return self.search(model, jit_compile)(source)

    def decode_jit(self, sentences: int | None) -> bool:
        """Whether decoding `sentences` sentences in one go runs under XLA (None: the exported
        signature): `decode.jit_compile` (`auto`: the backbone family's measurement and enough
        sentences to pay for the compile, `pipelines.distribute.choose_decode_jit`). Each
        choice is logged once, with its reason."""
        jit, reason = choose_decode_jit(self.decode_cfg.get("jit_compile", "auto"),
                                        getattr(self, "backbone", None), sentences)
        if getattr(self, "_decode_jit_reasons", None) is None:
            self._decode_jit_reasons = set()
        if reason not in self._decode_jit_reasons:
            self._decode_jit_reasons.add(reason)
            log.info("decode: XLA %s (%s)", "on" if jit else "off", reason)
        return jit

    def search(self, model, jit_compile: bool = False):
        """source (B, ...) -> ids (B, max_decode): `model.generate` with `decode.*`; with
        `jit_compile` a `tf.function(jit_compile=True)`, one per model, so that every caller
        shares its compiled shapes. The encoder runs inside it too; tokenizers stay outside
        (string ops do not compile)."""
        def generate(source):
            return model.generate(source, self.start_id, self.end_id, self.max_decode,
                                  beam_size=self.decode_cfg.beam_size,
                                  length_penalty=self.decode_cfg.length_penalty)

        if not jit_compile:
            return generate
        if getattr(self, "_xla_searches", None) is None:
            self._xla_searches = {}
        if id(model) not in self._xla_searches:  # the model is kept with it: its id stays unique
            self._xla_searches[id(model)] = (model, tf.function(
                generate, jit_compile=True, reduce_retracing=True, autograph=False))
        return self._xla_searches[id(model)][1]

    @staticmethod
    def decode_in_batches(fn, items, batch_size: int, equal_sizes: bool) -> list:
        """`fn(batch)` -> one output per item, over `items` (a list or an array) in batches
        of `batch_size`. With `equal_sizes` (XLA: one compile per shape) every batch has the
        same size: the last is padded with copies of its last item (which end when it ends),
        and their outputs dropped."""
        outputs, size = [], min(batch_size, len(items))
        for start in range(0, len(items), size or 1):
            batch = items[start:start + size]
            count = len(batch)
            if count < size and equal_sizes:
                batch = (np.concatenate([batch, np.repeat(batch[-1:], size - count, axis=0)])
                         if isinstance(batch, np.ndarray) else
                         list(batch) + [batch[-1]] * (size - count))
            outputs.extend(list(fn(batch))[:count])
        return outputs


class GenerationTask(TargetText, Task):
    """A source in, a token sequence out: an `EncoderDecoder` from the backbone's
    `sequence_decoder` role, teacher forcing in training, `decode.*` search in evaluation
    and export. Subclasses set `self.tokenizer` and `self.target_length` in `adapt`
    (`set_target`) and implement `bleu(model, pair)`, the validation metric `val_bleu`."""

    loss_length: int | None = None  # see `sequence_loss`
    source_key = "source"  # the model's input name of the source ("image" for captioning)

    def bucketed(self, ds, training: bool, batch_size: int, source_length: int | None = None):
        """Batches of unbatched `(source, target_in, target_out)` examples: cut to the bucket of
        their longest side with `task.length_buckets` (static shapes per bucket; every
        encoder and decoder masks its padding, so nothing depends on the bucket), else padded
        to the full lengths. `source_length`: the source's own time axis (text), or None (an
        image). Returns ({source_key, "target_in"}, target_out) batches."""
        longest = max(self.target_length, source_length or 0)
        buckets = resolve_buckets(self.task_cfg.get("length_buckets"), longest)
        if buckets:
            ds = bucket_by_length(
                ds, lambda source, target_in, target_out: tf.maximum(
                    tf.math.count_nonzero(target_out),
                    tf.math.count_nonzero(source) if source_length else tf.constant(0, tf.int64)),
                buckets, batch_size, drop_remainder=training,
                sequences=(source_length or False, self.target_length, self.target_length))
        else:
            ds = ds.batch(batch_size, drop_remainder=training)
        key = self.source_key
        return ds.map(plain(lambda source, target_in, target_out: (
            {key: source, "target_in": target_in}, target_out)),
            num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def loss(self, y_true, y_pred):
        return sequence_loss(y_true, y_pred, self.loss_length)

    def stats(self, y_true, y_pred):
        return token_accuracy(y_true, y_pred)

    def trackables(self):
        return self.tokenizer.trackables()

    @abc.abstractmethod
    def bleu(self, model, pair) -> float:
        """BLEU (0-100) of the model's outputs on `pair` against its references."""

    # `task.monitor=val_bleu` (`pipelines.tasks.validation`): decoding is slow, so BLEU only,
    # on the first `VALIDATION_SAMPLE` validation examples.
    validation_metric_names = ("bleu",)
    VALIDATION_SAMPLE = 200

    def validation_metrics(self, model, pair, batch_size) -> dict:
        sample = (pair[0][: self.VALIDATION_SAMPLE], pair[1][: self.VALIDATION_SAMPLE])
        return {"bleu": self.bleu(model, sample)}
