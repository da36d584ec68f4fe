"""`task=language_modeling`: a GPT-style causal language model. Metrics: `perplexity` and
`bits_per_token` on the evaluation split (test, else validation).

Text (`reader: text_lines`): one text per line; `task.documents=blank_lines` joins the lines
up to a blank line into one document (`lines`: every line is a document). Tokens are
subwords of a vocabulary learned on the training text (`task.vocabulary_size`, ids 0-3
`[PAD] [UNK] [START] [END]`): `task.tokenizer=wordpiece` (keras-hub's WordPiece trainer, the
default) or `sentencepiece` (SentencePiece BPE, exactly reversible). Every document becomes
`[START] tokens... [END]`, the documents of a split are concatenated into one stream, and the
stream is cut into non-overlapping windows of `task.sequence_length + 1` tokens: the model
reads the first `sequence_length` of a window and predicts each next one (static shapes,
no padding in training; the evaluation split's last window is padded and its padding is not
scored). A target `[START]` (the token after every `[END]`) is never scored: it is certain.

With `data.streaming=true` the training text stays in its files: the windows are built in
tf.data (`stream_windows`, per file group; counted in one pass before training) and the
vocabulary learns on `task.vocabulary_sample` lines.

`perplexity = exp(mean NLL)` and `bits_per_token = mean NLL / ln 2`, the mean over every
scored token of the evaluation stream (the WordPiece tokens and one `[END]` per document),
each token seeing the earlier tokens of its window only. They depend on the tokenization:
compare them only between runs with the same vocabulary.

The network is the backbone's `causal_lm` (`language_model` role: `pipelines.models.causal_lm`).
Generation runs in the graph through `pipelines.decoding` with the model's cache:
`decode.strategy` greedy, beam (`decode.beam_size`, `decode.length_penalty`), or sampling:
random, top_k (`decode.top_k`), top_p (`decode.top_p`), all with `decode.temperature` and the
stateless `decode.seed` (so an export gives the same text for the same batch every time).
`decode.strategy=null` means top_k. At most `decode.max_length` new tokens (null:
`sequence_length // 2`) follow the prompt; the prompt keeps its last
`sequence_length - max_new_tokens` tokens: a longer one is cut from the left, and the served
graph prints a line saying so (to stderr, `tf.print`).

Export: `serving_default(prompt: string [batch]) -> text: string [batch]`, the prompt (as
kept) followed by its continuation, detokenized. SentencePiece gives the text back as
written. WordPiece is detokenized by rules: pieces joined ("##"), words
separated by one space, no space before closing punctuation, after opening brackets, inside
a pair of double quotes or around an apostrophe or hyphen between letters ('a man's T-shirt
says "hi".'): 1,011 of the 1,014 Multi30k validation captions come back exactly (not
"J.P." -> "J. P.", "4' in" -> "4'in", "now ... what" -> "now... what"), none with [UNK]. Loading needs
`import tensorflow_text` (WordPiece and SentencePiece ops).
"""
from __future__ import annotations

import logging
import math
import sys

import keras
import numpy as np
import tensorflow as tf

from pipelines.config import option_value
from pipelines.data import Splits
from pipelines.data.files import DataFileError
from pipelines.data.streaming import StreamingSplit, example_dataset
from pipelines.tasks.base import Task, plain
from pipelines.tasks.generation import RESERVED, learn_tokenizer

log = logging.getLogger(__name__)

# Detokenized WordPiece text -> text as written: (pattern, rewrite), applied in this order.
_READABLE = [
    (r" ([.,!?;:%)\]}])", r"\1"),  # "bushes ." -> "bushes."
    (r"([(\[{$]) ", r"\1"),  # "( a" -> "(a"
    (r"(\w) ' (\w)", r"\1'\2"),  # "man ' s" -> "man's", "don ' t" -> "don't"
    (r"(\w) ([-/]) (\w)", r"\1\2\3"),  # "T - shirt" -> "T-shirt"
    (r"(\w) ([-/]) (\w)", r"\1\2\3"),  # again for "four - wheel - drive" (matches overlap)
    (r'" ([^"]*?) "', r'"\1"'),  # '" street clothes "' -> '"street clothes"' (pairs, in order)
]


def readable(texts):
    """strings (B,) of space-joined words and punctuation -> text as written (in the graph)."""
    for pattern, rewrite in _READABLE:
        texts = tf.strings.regex_replace(texts, pattern, rewrite)
    return texts


class LanguageModeling(Task):
    """Next-token prediction on windows of a token stream; generation from a prompt."""

    def adapt(self, splits: Splits) -> None:
        cfg = self.task_cfg
        self.length = int(cfg.sequence_length)
        texts = splits.train[0]
        self.tokenizer_kind = option_value(cfg.get("tokenizer", "wordpiece"))
        self.tokenizer = learn_tokenizer(self.tokenizer_kind, texts, int(cfg.vocabulary_size),
                                         bool(cfg.lowercase), cfg.get("vocabulary_sample"),
                                         self.seed)
        self.start_id, self.end_id = self.tokenizer.start_id, self.tokenizer.end_id
        decode = self.decode_cfg
        self.max_new_tokens = int(decode.max_length or self.length // 2)
        if not 1 <= self.max_new_tokens < self.length:
            raise ValueError(f"decode.max_length must be in [1, task.sequence_length - 1 = "
                             f"{self.length - 1}] for language modeling; received "
                             f"{self.max_new_tokens}")
        self.prompt_length = self.length - self.max_new_tokens
        strategy = decode.get("strategy")
        strategy = "top_k" if strategy is None else option_value(strategy)
        self.search = dict(strategy=strategy, beam_size=int(decode.beam_size),
                           length_penalty=float(decode.length_penalty),
                           top_k=int(decode.top_k), top_p=float(decode.top_p),
                           temperature=float(decode.temperature), seed=int(decode.seed))
        if isinstance(splits.train, StreamingSplit):  # counted in one pass, never held
            self.train_windows = None
            self.train_count = int(self.stream_windows(splits.train).reduce(
                np.int64(0), lambda count, _: count + 1))
        else:
            self.train_windows = self.windows(splits.train)
            self.train_count = len(self.train_windows)
        batch = int(self.trainer_cfg.batch_size)
        if self.train_count < batch:
            raise DataFileError(
                f"{self._train_name()}: the training text makes {self.train_count} "
                f"sequences of task.sequence_length={self.length} tokens, fewer than one batch "
                f"(trainer.batch_size={batch}); give more text, or lower "
                "task.sequence_length or trainer.batch_size")
        log.info("language modeling: %d WordPiece tokens, %d training sequences of %d",
                 self.tokenizer.vocabulary_size(), self.train_count, self.length)

    def _train_name(self) -> str:
        paths = getattr(self.data, "paths", None)
        return f"data.train={paths['train']}" if paths else f"data={self.data.name}"

    # ------------------------------------------------------------------ tensors
    def stream(self, pair) -> np.ndarray:
        """A split's documents as one int32 stream: `[START] tokens [END]` per document."""
        texts, documents = pair
        if not texts:
            return np.zeros([0], np.int32)
        ids = []
        for batch in tf.data.Dataset.from_tensor_slices(list(texts)).batch(4096):
            ragged = self.tokenizer.tokenize(batch)
            ids.extend(np.split(ragged.flat_values.numpy(), np.cumsum(ragged.row_lengths())[:-1]))
        by_line = str(option_value(self.task_cfg.documents)) == "lines"
        pieces, previous = [], object()
        for line_ids, document in zip(ids, documents):
            if by_line or document != previous:  # a new document
                if pieces:
                    pieces.append([self.end_id])
                pieces.append([self.start_id])
                previous = document
            pieces.append(line_ids)
        pieces.append([self.end_id])
        return np.concatenate(pieces).astype(np.int32)

    def windows(self, pair, pad: bool = False) -> np.ndarray:
        """(N, sequence_length + 1) windows of the stream, stride `sequence_length`; with
        `pad`, the rest too, 0-padded."""
        stream, size = self.stream(pair), self.length
        count = (len(stream) - 1) // size if not pad else math.ceil(max(len(stream) - 1, 0) / size)
        padded = np.zeros([count * size + 1], np.int32)
        padded[: min(len(stream), len(padded))] = stream[: len(padded)]
        starts = np.arange(count)[:, None] * size
        return padded[starts + np.arange(size + 1)[None]]  # (N, T + 1)

    def stream_windows(self, pair, training: bool = False):
        """A streamed split's (T + 1,) windows (`data.streaming=true`), built per file group
        (`StreamingSplit.examples(per_group=...)`) as `windows` builds them of a list: its
        lines tokenized a batch at a time, `[START]` before each document and `[END]` after,
        the stream cut every `sequence_length` tokens. The token stream is the one a whole
        read gives; windows do not span two groups (each group's rest is dropped). For
        training the groups are shuffled, the windows shuffled in a bounded buffer."""
        return example_dataset(pair, training, self.seed, per_group=self._windows)

    def _windows(self, examples):
        """(text, document id) examples in order -> (T + 1,) windows, stride T."""
        by_line = str(option_value(self.task_cfg.documents)) == "lines"
        start, end, size = self.start_id, self.end_id, self.length

        def pieces(state, batch):
            previous, fresh = state  # the last line's document; nothing read yet
            texts, documents = batch
            documents = tf.cast(documents, tf.int64)
            first = tf.concat([[fresh], tf.zeros_like(documents[1:], tf.bool)], 0)
            new = tf.logical_or(first, tf.not_equal(
                documents, tf.concat([[previous], documents[:-1]], 0)))
            if by_line:
                new = tf.ones_like(new)
            # a new document: [END] of the one before (none before the first), [START]
            edges = tf.ragged.boolean_mask(
                tf.tile([[end, start]], [tf.shape(new)[0], 1]),
                tf.stack([tf.logical_and(new, tf.logical_not(first)), new], 1))
            ids = tf.concat([edges, self.tokenizer.tokenize(texts)], 1)  # ragged (B, None)
            return (documents[-1], tf.constant(False)), ids.flat_values

        def cut(before, chunk):  # window = the chunk before + this chunk's first token
            return chunk, (tf.concat([before, chunk[:1]], 0), tf.size(before) == size)

        tokens = examples.batch(1024).scan((tf.constant(-1, tf.int64), tf.constant(True)),
                                           pieces)
        tokens = tokens.concatenate(tf.data.Dataset.from_tensors(tf.constant([end], tf.int32)))
        windows = tokens.rebatch(size).scan(tf.zeros([0], tf.int32), cut)
        return windows.filter(lambda window, full: full).map(
            lambda window, full: tf.ensure_shape(window, [size + 1]))

    def train_examples(self, splits: Splits) -> int:
        return self.train_count

    def dataset(self, pair, training, batch_size):
        if isinstance(pair, StreamingSplit):
            ds = self.stream_windows(pair, training)
        else:
            windows = self.train_windows if training else self.windows(pair, pad=True)
            ds = tf.data.Dataset.from_tensor_slices(windows)
            if training:
                ds = ds.shuffle(len(windows), seed=self.seed,
                                reshuffle_each_iteration=True).repeat()
        ds = ds.batch(batch_size, drop_remainder=training)
        return ds.map(plain(lambda w: (w[:, :-1], w[:, 1:])), num_parallel_calls=tf.data.AUTOTUNE
                      ).prefetch(tf.data.AUTOTUNE)

    # ------------------------------------------------------------------ model
    def build_model(self) -> keras.Model:
        model = self.backbone.causal_lm(self.tokenizer.vocabulary_size(), self.length)
        model(tf.zeros((1, self.length), tf.int32))
        return model

    def _scored(self, y_true):
        return tf.cast((y_true != 0) & (y_true != self.start_id), tf.float32)  # (B, T)

    def _token_nll(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    def loss(self, y_true, y_pred):
        """Per sequence (B,): the scored tokens' NLL summed, over the window length (every
        token weighs the same)."""
        return tf.reduce_sum(self._token_nll(y_true, y_pred) * self._scored(y_true), -1) / self.length

    def stats(self, y_true, y_pred):
        """`token_loss`: the mean NLL per scored token (exp of it is the perplexity);
        `accuracy`: next-token accuracy. Monitoring only."""
        scored = self._scored(y_true)
        correct = tf.cast(tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32),
                                   tf.cast(y_true, tf.int32)), tf.float32)
        count = tf.reduce_sum(scored)
        return {"token_loss": (tf.reduce_sum(self._token_nll(y_true, y_pred) * scored), count),
                "accuracy": (tf.reduce_sum(correct * scored), count)}

    @property
    def monitor_mode(self) -> str:
        return "max" if str(self.task_cfg.monitor).endswith("accuracy") else "min"

    # ------------------------------------------------------------------ results
    def nll(self, model, pair, batch_size: int) -> tuple[float, int]:
        """(total NLL in nats, scored tokens) over the split's stream."""
        @tf.function(reduce_retracing=True)
        @plain
        def batch_nll(x, y):
            scored = self._scored(y)
            return tf.reduce_sum(self._token_nll(y, model(x, training=False)) * scored), \
                tf.reduce_sum(scored)

        total, count = 0.0, 0.0
        for x, y in self.dataset(pair, training=False, batch_size=batch_size):
            nll, n = batch_nll(x, y)
            total, count = total + float(nll), count + float(n)
        return total, int(count)

    def evaluate(self, model, pair, batch_size):
        total, count = self.nll(model, pair, batch_size)
        if not count:
            raise ValueError("the evaluation split has no text to score")
        mean = total / count
        prompts = [" ".join(t.split()[: int(self.task_cfg.prompt_words)])
                   for t in pair[0][: int(self.task_cfg.num_samples)]]
        texts = self.generate(model, prompts) if prompts else []
        self.samples = [{"prompt": p, "text": t, "reference": r}
                        for p, t, r in zip(prompts, texts, pair[0])]
        log.info("evaluation: %d scored tokens, mean NLL %.4f nats", count, mean)
        return {"perplexity": float(math.exp(mean)), "bits_per_token": float(mean / math.log(2))}

    def generate(self, model, prompts: list[str], batch_size: int = 64) -> list[str]:
        """The served texts for `prompts`, in batches."""
        fn = tf.function(self.serving_fn(model), input_signature=self.serving_signature())
        out = []
        for start in range(0, len(prompts), batch_size):
            text = fn(tf.constant(prompts[start:start + batch_size]))["text"]
            out.extend(t.decode("utf-8") for t in text.numpy())
        return out

    # ------------------------------------------------------------------ serving
    def encode_prompts(self, prompts):
        """strings (B,) -> ids (B, prompt_length), each prompt's last tokens, 0-padded on
        the right; a line on stderr names the rows cut from the left."""
        ids = self.tokenizer.tokenize(prompts)  # ragged (B, None)
        cut = ids.row_lengths() > self.prompt_length  # (B,)

        def say():
            tf.print("language_modeling: prompt longer than the context: rows", tf.where(cut)[:, 0],
                     f"keep their last {self.prompt_length} of {self.length} tokens "
                     f"(decode.max_length={self.max_new_tokens} are left for the continuation)",
                     output_stream=sys.stderr)
            return tf.constant(True)

        tf.cond(tf.reduce_any(cut), say, lambda: tf.constant(False))
        return ids[:, -self.prompt_length:].to_tensor(shape=[None, self.prompt_length])

    def detokenize(self, ids):
        """ids (B, L) -> readable strings (B,), special tokens dropped."""
        ids = tf.cast(ids, tf.int32)
        words = self.tokenizer.detokenize(tf.ragged.boolean_mask(ids, ids >= len(RESERVED)))
        return readable(words) if self.tokenizer_kind == "wordpiece" else words

    def serving_fn(self, model):
        @plain  # no AutoGraph: it re-reads the tokenizer's source, which may have changed
        def complete(prompt):
            tokens = model.generate(self.encode_prompts(prompt), self.start_id, self.end_id,
                                    self.max_new_tokens, **self.search)
            return {"text": self.detokenize(tokens)}

        return complete

    def serving_signature(self):
        return [tf.TensorSpec([None], tf.string, name="prompt")]

    def trackables(self):
        return self.tokenizer.trackables()

