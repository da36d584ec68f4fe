"""`task=translation`: many-to-many. Metrics: `bleu`, `chrf` from sacrebleu.

Subword (WordPiece) vocabularies are learned on the training split, one per language, and
live inside the graph: the exported signature takes a source string and returns the
translated string, beam search included.
"""
from __future__ import annotations

import keras
import keras_hub
import numpy as np
import sacrebleu
import tensorflow as tf

from pipelines.data import Splits
from pipelines.decoding import decode
from pipelines.tasks.base import Task
from pipelines.trainer import Hook

PAD, UNK, START, END = "[PAD]", "[UNK]", "[START]", "[END]"
RESERVED = [PAD, UNK, START, END]  # ids 0..3 in both vocabularies


def learn_wordpiece(texts: list[str], vocabulary_size: int, lowercase: bool):
    """A WordPiece tokenizer whose vocabulary is learned on `texts` (ids 0-3 reserved)."""
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts).batch(1024), vocabulary_size,
        lowercase=lowercase, strip_accents=False, reserved_tokens=RESERVED,
    )
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, lowercase=lowercase, strip_accents=False, oov_token=UNK,
        dtype="int32",
    )


class Translation(Task):
    """Source sentence in, target sentence out, teacher forcing in training."""

    name = "translation"

    def adapt(self, splits: Splits) -> None:
        sources, targets = splits.train
        size, lowercase = self.task_cfg.vocabulary_size, self.task_cfg.lowercase
        self.source_tokenizer = learn_wordpiece(sources, size, lowercase)
        self.target_tokenizer = learn_wordpiece(targets, size, lowercase)
        self.start_id = self.target_tokenizer.token_to_id(START)
        self.end_id = self.target_tokenizer.token_to_id(END)
        self.source_length = self.task_cfg.source_length
        self.target_length = self.task_cfg.target_length
        self.max_decode = min(self.cfg.decode.max_length or self.target_length, self.target_length)

    # ------------------------------------------------------------------ tensors
    def encode_source(self, texts):
        """strings (B,) -> ids (B, source_length), 0-padded, truncated."""
        ids = self.source_tokenizer(texts)
        return ids.to_tensor(shape=[None, self.source_length])

    def _encode_target(self, texts):
        """strings (B,) -> [START] ids [END] (B, target_length + 1), 0-padded, truncated."""
        ids = self.target_tokenizer(texts)[:, : self.target_length - 1]  # ragged (B, None)
        edge = tf.ones([ids.nrows(), 1], tf.int32)
        full = tf.concat([edge * self.start_id, ids, edge * self.end_id], axis=1)
        return full.to_tensor(shape=[None, self.target_length + 1])

    def dataset(self, pair, training, batch_size):
        ds = tf.data.Dataset.from_tensor_slices(tuple(pair))
        if training:
            ds = ds.shuffle(len(pair[0]), seed=self.seed, reshuffle_each_iteration=True).repeat()
        ds = ds.batch(batch_size, drop_remainder=training)

        def to_tensors(source, target):
            full = self._encode_target(target)  # (B, T + 1)
            x = {"source": self.encode_source(source), "target_in": full[:, :-1]}
            return x, full[:, 1:]

        return ds.map(to_tensors, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    # ------------------------------------------------------------------ model
    def build_model(self) -> keras.Model:
        model = self.backbone_factory().seq2seq(
            self.source_tokenizer.vocabulary_size(), self.target_tokenizer.vocabulary_size(),
            self.source_length, self.target_length,
        )
        model({"source": tf.zeros((1, self.source_length), tf.int32),
               "target_in": tf.zeros((1, self.target_length), tf.int32)})
        return model

    def loss(self, y_true, y_pred):
        """Cross-entropy summed over valid target tokens / target_length, per sentence."""
        mask = tf.cast(tf.not_equal(y_true, 0), tf.float32)  # (B, T)
        token_loss = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
        return tf.reduce_sum(token_loss * mask, axis=-1) / float(self.target_length)

    def stats(self, y_true, y_pred):
        """Token accuracy on valid positions: a monitoring signal only, never the result."""
        mask = tf.cast(tf.not_equal(y_true, 0), tf.float32)
        correct = tf.cast(tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32),
                                   tf.cast(y_true, tf.int32)), tf.float32)
        return {"accuracy": (tf.reduce_sum(correct * mask), tf.reduce_sum(mask))}

    # ------------------------------------------------------------------ decoding
    def translate_ids(self, model, source_ids):
        """source ids (B, S) -> target ids (B, max_decode), beam search per `decode.*`."""
        state = model.encode(source_ids)
        start = tf.fill(tf.shape(source_ids)[:1], self.start_id)
        return decode(model.step, state, start, self.max_decode, self.end_id,
                      beam_size=self.cfg.decode.beam_size,
                      length_penalty=self.cfg.decode.length_penalty)

    def detokenize(self, ids):
        """ids (B, T) -> strings (B,), special tokens dropped."""
        ids = tf.cast(ids, tf.int32)
        kept = tf.ragged.boolean_mask(ids, ids >= len(RESERVED))
        return tf.strings.strip(self.target_tokenizer.detokenize(kept))

    def _translator(self, model):
        def translate(text):
            source_ids = self.encode_source(text)
            return {"translation": self.detokenize(self.translate_ids(model, source_ids))}

        return translate

    def translate(self, model, texts: list[str], batch_size: int = 128) -> list[str]:
        fn = tf.function(self._translator(model), reduce_retracing=True)
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tf.constant(texts[start:start + batch_size])
            out.extend(t.decode("utf-8") for t in fn(batch)["translation"].numpy())
        return out

    def evaluate(self, model, pair, batch_size):
        sources, references = pair
        hypotheses = self.translate(model, list(sources))
        self.samples = [{"source": s, "reference": r, "translation": h}
                        for s, r, h in zip(sources[:20], references[:20], hypotheses[:20])]
        return {
            "bleu": float(sacrebleu.corpus_bleu(hypotheses, [list(references)]).score),
            "chrf": float(sacrebleu.corpus_chrf(hypotheses, [list(references)]).score),
        }

    def hooks(self, model, splits):
        every = self.cfg.trainer.eval_bleu_every
        return [ValidationBleu(self, model, splits.validation, every)] if every else []

    def pictures(self, model, splits, directory):
        """Source x target attention heatmaps of a few validation sentences."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        directory.mkdir(parents=True, exist_ok=True)
        sources = list(splits.validation[0][:3])
        source_ids = tf.function(self.encode_source)(tf.constant(sources))  # (B, S)
        output_ids = tf.function(lambda ids: self.translate_ids(model, ids))(source_ids)  # (B, L)
        start = tf.fill([len(sources), 1], self.start_id)
        target_in = tf.concat([start, tf.cast(output_ids[:, :-1], tf.int32)], axis=1)
        target_in = tf.pad(target_in, [[0, 0], [0, self.target_length - target_in.shape[1]]])
        maps = keras.ops.convert_to_numpy(model.attention_maps(source_ids, target_in))
        source_vocab = self.source_tokenizer.get_vocabulary()
        target_vocab = self.target_tokenizer.get_vocabulary()
        paths = []
        for i, row in enumerate(output_ids.numpy()):
            src = [source_vocab[t] for t in source_ids[i].numpy() if t]
            tgt = [target_vocab[t] for t in row if t]  # up to and including [END]
            figure, axis = plt.subplots(figsize=(1 + 0.4 * len(src), 1 + 0.35 * len(tgt)))
            axis.imshow(maps[i, : len(tgt), : len(src)], cmap="viridis", aspect="auto")
            axis.set_xticks(range(len(src)), src, rotation=90)
            axis.set_yticks(range(len(tgt)), tgt)
            axis.set_xlabel("source")
            axis.set_ylabel("translation")
            figure.tight_layout()
            paths.append(directory / f"attention_{i}.png")
            figure.savefig(paths[-1], dpi=100)
            plt.close(figure)
        return paths

    # ------------------------------------------------------------------ serving
    def export(self, model, path):
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(self.source_tokenizer)
        archive.track(self.target_tokenizer)
        archive.add_endpoint("serving_default", self._translator(model),
                             input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        archive.write_out(path, verbose=False)

    def serve_in_process(self, model, inputs):
        return {"translation": np.array(self.translate(model, list(inputs)), dtype=object)}


class ValidationBleu(Hook):
    """`trainer.eval_bleu_every=N`: BLEU on up to 200 validation sentences every N epochs,
    added to the epoch's logs as `val_bleu` (so `task.monitor=val_bleu` works)."""

    def __init__(self, task: Translation, model, pair, every: int, sample: int = 200):
        self.task, self.model, self.every = task, model, every
        self.sources, self.references = list(pair[0][:sample]), list(pair[1][:sample])

    def on_epoch_end(self, trainer, epoch, logs):
        if (epoch + 1) % self.every:
            return
        hypotheses = self.task.translate(self.model, self.sources)
        logs["val_bleu"] = float(sacrebleu.corpus_bleu(hypotheses, [self.references]).score)
