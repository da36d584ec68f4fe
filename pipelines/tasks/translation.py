"""`task=translation`: many-to-many. Metrics: `bleu`, `chrf` from sacrebleu.

Subword vocabularies (`task.tokenizer`: WordPiece, or reversible SentencePiece) are learned
on (at most `task.vocabulary_sample` lines of) the training split, one per language, and
live inside the graph: the exported signature takes a source string and returns the
translated string, beam search included. The network is the backbone's `EncoderDecoder`
(`text_memory` over the source, `decoder` over the target; `pipelines.models.seq2seq`).
"""
from __future__ import annotations

import keras
import sacrebleu
import tensorflow as tf

from pipelines.config import option_value
from pipelines.data import Splits
from pipelines.data.streaming import example_dataset
from pipelines.models.seq2seq import EncoderDecoder
from pipelines.tasks.generation import GenerationTask, learn_tokenizer


class Translation(GenerationTask):
    """Source sentence in, target sentence out, teacher forcing in training."""

    def adapt(self, splits: Splits) -> None:
        sources, targets = splits.train
        kind, lowercase = option_value(self.task_cfg.tokenizer), self.task_cfg.lowercase
        size, sample = self.task_cfg.vocabulary_size, self.task_cfg.vocabulary_sample
        self.source_tokenizer = learn_tokenizer(kind, sources, size, lowercase, sample, self.seed)
        self.target_tokenizer = learn_tokenizer(kind, targets, size, lowercase, sample, self.seed)
        self.source_length = self.task_cfg.source_length
        self.set_target(self.target_tokenizer, self.task_cfg.target_length)
        self.loss_length = self.target_length  # every target token weighs the same

    # ------------------------------------------------------------------ tensors
    def encode_source(self, texts):
        """strings (B,) -> ids (B, source_length), 0-padded, truncated."""
        return self.source_tokenizer.tokenize(texts).to_tensor(shape=[None, self.source_length])

    def dataset(self, pair, training, batch_size):
        """({"source": (B, S), "target_in": (B, T)}, target_out (B, T)); with
        `task.length_buckets` S and T are cut to the bucket of the batch's longest side.
        `pair` may be a `StreamingSplit` (`data.streaming=true`): then the examples come
        from its files through tf.data, shuffled in a bounded buffer."""
        ds = example_dataset(pair, training, self.seed)  # lists, or a streaming split's files

        def to_tensors(source, target):  # tokenized in chunks, then one example at a time
            full = self.encode_targets(target)  # (N, T + 1)
            return self.encode_source(source), full[:, :-1], full[:, 1:]

        ds = ds.batch(256).map(to_tensors, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        return self.bucketed(ds, training, batch_size, self.source_length)

    # ------------------------------------------------------------------ model
    def build_model(self) -> keras.Model:
        model = EncoderDecoder(
            self.backbone.text_memory(self.source_tokenizer.vocabulary_size(), self.source_length),
            self.backbone.decoder(self.target_tokenizer.vocabulary_size(), self.target_length),
            source_key="source", name=self.model_name)
        model({"source": tf.zeros((1, self.source_length), tf.int32),
               "target_in": tf.zeros((1, self.target_length), tf.int32)})
        return model

    # ------------------------------------------------------------------ decoding
    def serving_fn(self, model, jit_compile: bool | None = None):
        """The export's text -> translation; the search under XLA with `jit_compile` (None:
        what `decode.jit_compile` says for the export, `decode_jit(None)`)."""
        if jit_compile is None:
            jit_compile = self.decode_jit(None)

        def translate(text):
            ids = self.generate_ids(model, self.encode_source(text), jit_compile)
            return {"translation": self.detokenize(ids)}

        return translate

    def translate(self, model, texts: list[str], batch_size: int = 128) -> list[str]:
        jit = self.decode_jit(len(texts))
        fn = tf.function(self.serving_fn(model, jit), reduce_retracing=True, autograph=False)

        def batch_translations(batch):
            return [t.decode("utf-8") for t in fn(tf.constant(batch))["translation"].numpy()]

        return self.decode_in_batches(batch_translations, list(texts), batch_size, jit)

    def evaluate(self, model, pair, batch_size):
        sources, references = pair
        hypotheses = self.translate(model, list(sources))
        self.samples = [{"source": s, "reference": r, "translation": h}
                        for s, r, h in zip(sources[:20], references[:20], hypotheses[:20])]
        return {
            "bleu": float(sacrebleu.corpus_bleu(hypotheses, [list(references)]).score),
            "chrf": float(sacrebleu.corpus_chrf(hypotheses, [list(references)]).score),
        }

    def bleu(self, model, pair) -> float:
        hypotheses = self.translate(model, list(pair[0]))
        return float(sacrebleu.corpus_bleu(hypotheses, [list(pair[1])]).score)

    def pictures(self, model, splits, directory):
        """Source x target attention heatmaps of a few validation sentences."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        directory.mkdir(parents=True, exist_ok=True)
        sources = list(splits.validation[0][:3])
        source_ids = tf.function(self.encode_source, autograph=False)(tf.constant(sources))  # (B, S)
        output_ids = tf.function(lambda ids: self.generate_ids(model, ids),
                                 autograph=False)(source_ids)  # (B, L)
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

    def trackables(self):
        return self.source_tokenizer.trackables() + self.target_tokenizer.trackables()

