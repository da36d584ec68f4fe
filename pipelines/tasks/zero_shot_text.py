"""`task=zero_shot_text`: text classification by a pretrained language model, with no labelled
example. Metrics: `accuracy`, `macro_f1` on the evaluation split, beside `chance_accuracy`
(the majority label's share) and the lexicon baseline `lexicon_accuracy`, `lexicon_macro_f1`
(vaderSentiment: compound score >= 0 is `task.lexicon_labels[1]`, else `[0]`).

`model.init_from=RUN_DIR` names the run whose network and tokenizer are used as they are
(`pipelines.pretrained.check_whole_run`, before TensorFlow); nothing trains (`trains = False`:
`trainer.epochs` is unused).

- A `masked_lm` run fills a cloze: `task.prompt` with the text at `{}` ("{} It was [MASK].").
  A label's score aggregates (`task.aggregate`: mean, or logsumexp = the log of the summed
  probability) the log-probabilities of its words (`task.verbalizers.<label>`) at the
  [MASK]. A verbalizer word must be one token of the run's vocabulary: one that is not is a
  config error naming it (no first-piece stand-in: "wonder" would speak for "wonderful").
  The sequence is `[CLS] before text after [SEP]` in the run's length; a longer text keeps
  its last tokens.
- A `language_modeling` run scores continuations: a word's score is the summed
  log-probability of the prompt's tokens from its slot on, the word in it ("{} It was" +
  " great"; "{} It was [MASK]." scores "great ."), after `[START]` and the text. The text
  goes before the slot (an LM reads left to right). The run keeps no vocabulary file, so its
  tokenizer is learned again from the run's own config and training text (deterministic;
  a vocabulary that no longer fits the checkpoint is an error); a sequence longer than the
  run's context keeps its last tokens.

`task.calibrate` subtracts the label scores of the empty text (Zhao et al., 2021, "Calibrate
before use"): a model's preference for a label whatever the text goes, still with no label.

Export: `serving_default(text: string [batch]) -> scores: float [batch, labels]` (softmax of
the label scores) and `label: string [batch]`; the labels are those of the config. Loading
needs `import tensorflow_text` for WordPiece and SentencePiece ops.
"""
from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import accuracy_score, f1_score

from pipelines.config import ConfigError, option_value
from pipelines.data import Splits
from pipelines.pretrained import InitFromError, RunInfo, open_run, read_run, restore
from pipelines.tasks.base import Task, plain

log = logging.getLogger(__name__)
MASK = "[MASK]"
EVALUATION_SEQUENCES = 256  # texts x verbalizer words scored at once by evaluate (memory)


def language_model(info: RunInfo):
    """A language_modeling run's task, built and adapted again from the run's config: its
    tokenizer, learned on the run's training text as the run learned it."""
    from pipelines.tasks import build_task

    lm = build_task(info.config)
    lm.adapt(lm.load())
    return lm


def restored_language_model(info: RunInfo, lm) -> keras.Model:
    """The network of `lm` (from `language_model`) with the run's weights."""
    model = lm.build_model()
    try:
        restore(info, model)
    except ValueError as error:  # a variable of another shape: the data changed since the run
        raise InitFromError(
            f"model.init_from={info.directory}: the tokenizer learned again from the run's "
            f"training text ({lm.tokenizer.vocabulary_size()} tokens) does not fit its "
            f"checkpoint ({error}); the data its config names has changed since the run") from None
    return model


def lexicon_predictions(texts: list[str], negative: int, positive: int) -> np.ndarray:
    """VADER's polarity of each text as a label index: compound >= 0 is `positive`."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return np.array([positive if analyzer.polarity_scores(t)["compound"] >= 0 else negative
                     for t in texts])


class ZeroShotText(Task):
    """A text in, one of `task.labels` out, by a pretrained (masked) language model."""

    trains = False

    def adapt(self, splits: Splits) -> None:
        cfg = self.task_cfg
        self.labels = [str(label) for label in cfg.labels]
        unused = sorted(set(cfg.verbalizers) - set(self.labels))
        if unused:
            log.info("task.verbalizers of %s: not in task.labels, unused", unused)
        self.words = [str(w) for label in self.labels for w in cfg.verbalizers[label]]
        owner = [i for i, label in enumerate(self.labels) for _ in cfg.verbalizers[label]]
        self.members = np.eye(len(self.labels), dtype="float32")[owner]  # (W, n)
        names = dict(cfg.get("data_labels") or {})
        self.data_index = {str(names.get(label, label)): i for i, label in enumerate(self.labels)}
        path = str(self.backbone.init_from)
        self.info = read_run(path, tuple(cfg.init_from_tasks))
        self.kind = str(self.info.config.task.name)
        if self.kind == "masked_lm":
            self._adapt_cloze(open_run(path))
        else:
            self._adapt_continuation()
        log.info("zero-shot %s: %d labels, %d verbalizer words, prompt %r", self.kind,
                 len(self.labels), len(self.words), str(cfg.prompt))

    def _prompt_error(self, why: str) -> ConfigError:
        return ConfigError(f"task.prompt={self.task_cfg.prompt!r} with model.init_from="
                           f"{self.info.directory} ({self.kind}): {why}")

    # ------------------------------------------------------------------ masked LM: a cloze
    def _adapt_cloze(self, run) -> None:
        from pipelines.tasks.masked_lm import MASK_ID, UNK_ID

        self.length = int(run.manifest["sequence_length"])
        self.max_predictions = int(run.manifest["max_predictions"])
        self.text_ids = run.text_ids(self.length)
        before, after = (self._pieces(part) for part in str(self.task_cfg.prompt).split("{}"))
        spots = [(0, i) for i, t in enumerate(before) if t == MASK_ID] + \
                [(1, i) for i, t in enumerate(after) if t == MASK_ID]
        if len(spots) != 1:
            raise self._prompt_error(
                f"the run's {self.text_ids.tokenizer} tokenizer finds {len(spots)} [MASK] tokens "
                "in it, not one (whole-word vocabularies split on spaces: write ' [MASK] .')")
        self.before, self.after, self.spot = before, after, spots[0]
        self.keep = self.length - 2 - len(before) - len(after)  # text tokens that fit
        if self.keep < 1:
            raise self._prompt_error(f"its {len(before) + len(after)} tokens leave no room for "
                                     f"the text in the run's {self.length} positions")
        self.word_ids = []
        for word in self.words:
            ids = self._pieces(word)
            if len(ids) != 1 or ids[0] == UNK_ID:  # config.check_zero_shot_run checks first
                raise ConfigError(f"task.verbalizers: {word!r} is {len(ids)} tokens {ids} of the "
                                  "run's vocabulary, not one; the [MASK] predicts one token")
            self.word_ids.append(ids[0])

    def _pieces(self, text: str) -> list[int]:
        return self.text_ids.tokenize(tf.constant([text])).to_list()[0]

    def _cloze(self, texts):
        """strings (B,) -> token ids (B, T) of `[CLS] before text after [SEP]` (the text's
        last `keep` tokens) and the [MASK] position of each (B,)."""
        from pipelines.tasks.masked_lm import CLS_ID, PAD_ID, SEP_ID

        text = self.text_ids.tokenize(texts)[:, -self.keep:]  # ragged (B, None)
        rows = text.nrows()

        def constant(ids):  # the same ids in every row, ragged (B, len(ids))
            return tf.RaggedTensor.from_tensor(
                tf.tile(tf.constant(ids, tf.int32, shape=[1, len(ids)]), [rows, 1]))

        ids = tf.concat([constant([CLS_ID, *self.before]), text,
                         constant([*self.after, SEP_ID])], axis=1)
        token_ids = ids.to_tensor(default_value=PAD_ID, shape=[None, self.length])  # (B, T)
        part, index = self.spot
        offset = tf.cast(text.row_lengths(), tf.int32) + len(self.before) if part else 0
        position = tf.zeros([rows], tf.int32) + 1 + index + offset  # (B,)
        return token_ids, position

    def _cloze_scores(self, model, texts):
        """strings (B,) -> (B, W) log-probabilities of the verbalizer words at the [MASK]."""
        token_ids, position = self._cloze(texts)
        positions = tf.pad(position[:, None], [[0, 0], [0, self.max_predictions - 1]])  # (B, P)
        logits = model({"token_ids": token_ids, "segment_ids": tf.zeros_like(token_ids),
                        "mask_positions": positions}, training=False)["mlm"][:, 0]  # (B, V)
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        return tf.gather(log_probs, tf.constant(self.word_ids, tf.int32), axis=1)  # (B, W)

    # ------------------------------------------------------------------ causal LM: continuations
    def _adapt_continuation(self) -> None:
        prompt = str(self.task_cfg.prompt)
        if MASK in prompt and prompt.index(MASK) < prompt.index("{}"):
            raise self._prompt_error("a language model reads left to right: put the text ({}) "
                                     "before the label word's slot [MASK]")
        head, tail = prompt.split(MASK) if MASK in prompt else (prompt, "")
        # The whitespace before the slot goes with the word, so that the context's tokens
        # begin the full text's (word boundaries: WordPiece, SentencePiece's "▁").
        self.context = head.rstrip()
        space = head[len(self.context):] or ("" if MASK in prompt else " ")
        self.endings = [f"{space}{word}{tail}" for word in self.words]
        self.lm = language_model(self.info)
        self.length = self.lm.length

    def _continuation_scores(self, model, texts):
        """strings (B,) -> (B, W) summed log-probabilities of each word's continuation."""
        before, after = self.context.split("{}")
        contexts = tf.strings.join([before, texts, after])  # (B,)
        words = len(self.endings)
        rows = tf.shape(contexts)[0]
        contexts = tf.repeat(contexts, words)  # (B * W,): text-major
        full = tf.strings.join([contexts, tf.tile(tf.constant(self.endings), [rows])])
        tokenizer, length = self.lm.tokenizer, self.length
        context_length = tokenizer.tokenize(contexts).row_lengths()
        full_ids = tokenizer.tokenize(full)  # ragged (N, None)
        scored = tf.cast(full_ids.row_lengths() - context_length, tf.int32)  # (N,)
        start = tf.fill([full_ids.nrows(), 1], tf.constant(self.lm.start_id, tf.int32))
        ids = tf.concat([tf.RaggedTensor.from_tensor(start), full_ids], axis=1)[:, -length:]
        kept = tf.cast(ids.row_lengths(), tf.int32)  # (N,)
        dense = ids.to_tensor(default_value=0, shape=[None, length])  # (N, T)
        logits = model(dense, training=False)  # (N, T, V): position t predicts token t + 1
        log_probs = tf.nn.log_softmax(tf.cast(logits[:, :-1], tf.float32), axis=-1)
        token = tf.gather(log_probs, dense[:, 1:], batch_dims=2)  # (N, T - 1)
        target = tf.range(1, length)[None]  # the position of each predicted token
        mask = (target >= (kept - scored)[:, None]) & (target < kept[:, None])
        total = tf.reduce_sum(tf.where(mask, token, 0.0), axis=-1)  # (N,)
        return tf.reshape(total, [rows, words])

    # ------------------------------------------------------------------ scores
    def label_scores(self, model, texts):
        """strings (B,) -> (B, n) label scores (log-probability scale), calibrated against
        the empty text with `task.calibrate`."""
        calibrate = bool(self.task_cfg.calibrate)
        if calibrate:
            texts = tf.concat([texts, [""]], axis=0)
        if self.kind == "masked_lm":
            words = self._cloze_scores(model, texts)
        else:
            words = self._continuation_scores(model, texts)  # (B, W)
        members = tf.constant(self.members)  # (W, n)
        if option_value(self.task_cfg.aggregate) == "mean":
            scores = tf.matmul(words, members) / tf.reduce_sum(members, axis=0)
        else:  # log of the summed probability; log(0) = -inf leaves other labels' words out
            scores = tf.reduce_logsumexp(words[:, :, None] + tf.math.log(members)[None], axis=1)
        return scores[:-1] - scores[-1:] if calibrate else scores

    def build_model(self) -> keras.Model:
        """The run's network with its weights, as it is."""
        if self.kind == "masked_lm":
            return open_run(str(self.backbone.init_from)).network()
        return restored_language_model(self.info, self.lm)

    def dataset(self, pair, training, batch_size):
        """(texts, label indices) batches of the split, in order: for scoring only."""
        if training:
            raise TypeError("task=zero_shot_text trains nothing")
        texts, labels = pair
        return tf.data.Dataset.from_tensor_slices(
            (list(texts), self.label_ids(labels))).batch(batch_size)

    def label_ids(self, labels) -> np.ndarray:
        unknown = sorted({str(label) for label in labels} - set(self.data_index))
        if unknown:
            raise ValueError(f"the evaluation data has labels {unknown[:5]} that no task.labels "
                             f"entry stands for ({self.data_index}); map them with "
                             "task.data_labels (e.g. {negative: '0', positive: '1'})")
        return np.array([self.data_index[str(label)] for label in labels], "int32")

    def loss(self, y_true, y_pred):
        raise TypeError("task=zero_shot_text trains nothing: it has no loss")

    def stats(self, y_true, y_pred):
        raise TypeError("task=zero_shot_text trains nothing: it has no training statistics")

    # ------------------------------------------------------------------ results
    def evaluate(self, model, pair, batch_size):
        texts = list(pair[0])
        if not texts:
            raise ValueError("the evaluation split has no text to classify")
        score = tf.function(plain(lambda t: self.label_scores(model, t)), reduce_retracing=True)
        batch = batch_size if self.kind == "masked_lm" else \
            max(1, min(batch_size, EVALUATION_SEQUENCES // len(self.words)))
        scores = np.concatenate([score(x).numpy() for x, _ in self.dataset(pair, False, batch)])
        truth, predicted = self.label_ids(pair[1]), scores.argmax(-1)
        self._log_cut(texts)
        classes = list(range(len(self.labels)))
        metrics = {"accuracy": float(accuracy_score(truth, predicted)),
                   "macro_f1": float(f1_score(truth, predicted, average="macro", labels=classes,
                                              zero_division=0)),
                   "chance_accuracy": float(np.bincount(truth).max() / len(truth))}
        lexicon = self.task_cfg.get("lexicon_labels")
        if lexicon is not None:
            guessed = lexicon_predictions(texts, *(self.labels.index(str(v)) for v in lexicon))
            metrics["lexicon_accuracy"] = float(accuracy_score(truth, guessed))
            metrics["lexicon_macro_f1"] = float(f1_score(truth, guessed, average="macro",
                                                         labels=classes, zero_division=0))
        probabilities = tf.nn.softmax(scores[: int(self.task_cfg.num_samples)]).numpy()
        self.samples = [{"text": t, "label": self.labels[y], "predicted": self.labels[p],
                         "scores": dict(zip(self.labels, map(float, s)))}
                        for t, y, p, s in zip(texts, truth, predicted, probabilities)]
        return metrics

    def _log_cut(self, texts: list[str]) -> None:
        if self.kind == "masked_lm":
            lengths = self.text_ids.tokenize(tf.constant(texts)).row_lengths().numpy()
            cut = int((lengths > self.keep).sum())
            if cut:
                log.info("%d of %d texts were longer than the %d tokens left by the prompt in "
                         "the run's %d positions: they kept their last tokens", cut, len(texts),
                         self.keep, self.length)

    # ------------------------------------------------------------------ serving
    def serving_fn(self, model):
        names = tf.constant(self.labels)

        def classify(text):
            scores = self.label_scores(model, text)  # (B, n)
            return {"scores": tf.nn.softmax(scores, axis=-1),
                    "label": tf.gather(names, tf.argmax(scores, axis=-1))}

        return classify

    def trackables(self):
        if self.kind == "masked_lm":
            self.text_ids(tf.constant(["a"]))  # called once, so that ExportArchive can track it
            return [self.text_ids]
        return self.lm.trackables()
