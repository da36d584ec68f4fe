"""`task=captioning`: an image in, a sentence out. Metrics: `bleu4`, `bleu1` (sacrebleu).

Raw examples are (image, captions): a uint8 image (H, W, 3) of any size and its list of
reference captions. A caption tokenizer is learned on the training captions and lives in
the graph: `task.tokenizer=word` (a `TextVectorization` vocabulary: lower-cased words,
punctuation stripped, core TF ops only), `wordpiece` (keras-hub WordPiece) or
`sentencepiece` (reversible subwords: captions keep their punctuation and spacing); loading
the export of the last two needs `import tensorflow_text`. At most `task.vocabulary_sample`
captions (a seeded sample) learn it. Ids 0-3 are [PAD], [UNK], [START], [END].

Training reads one caption per image per visit (`task.captions=sample`) or every
(image, caption) pair (`all`; an epoch, by default, is then one pass over the pairs, not the
images). Evaluation decodes with `pipelines.decoding.decode` (beam
search per `decode.*`) and scores corpus BLEU against all references of each image, after
the tokenizer's normalisation of the references (lower case, no punctuation with
`tokenizer=word`), with sacrebleu's default 13a tokenisation.
"""
from __future__ import annotations

import logging
import pathlib

import keras
import numpy as np
import tensorflow as tf

from pipelines.config import option_value
from pipelines.data import Splits
from pipelines.data.images import decode_images, pixel_statistics, resize_image
from pipelines.metrics import caption_bleu, corpus_bleu
from pipelines.models.seq2seq import EncoderDecoder
from pipelines.tasks.base import plain
from pipelines.tasks.generation import (GenerationTask, WordPieceTokenizer, WordTokenizer,
                                        learn_tokenizer, sequence_loss)

log = logging.getLogger(__name__)

__all__ = ["Captioning", "WordTokenizer", "WordPieceTokenizer", "build_captioner",
           "caption_loss"]


def caption_loss(y_true, y_pred):
    """Per caption (B,): cross-entropy averaged over its own tokens ([END] included, 0 =
    padding), so the amount of padding never changes a caption's loss."""
    return sequence_loss(y_true, y_pred)


def check_captions(splits: Splits, task: str) -> None:
    """Every image of every split has a non-empty list of non-blank caption strings."""
    for split_name, pair in (("train", splits.train), ("validation", splits.validation),
                             ("test", splits.test)):
        for index, references in enumerate(pair[1] if pair is not None else []):
            if isinstance(references, str) or not references or not all(
                    isinstance(r, str) and r.strip() for r in references):
                raise ValueError(
                    f"{task} needs a non-empty list of caption strings per image; the "
                    f"{split_name} split's example {index} has {references!r}")


def stack_images(images, size: int) -> np.ndarray:
    """Raw images (any sizes) -> uint8 (N, size, size, 3), each resized once."""
    if not len(images):
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([resize_image(image, size) for image in images]).astype(np.uint8)


def caption_table(references: list[list[str]], encode) -> tuple[np.ndarray, np.ndarray]:
    """ids (N, K, L) of every image's K <= K_max captions ("" past its own) and counts (N,);
    `encode` maps strings (n,) to ids (n, L)."""
    width = max(len(refs) for refs in references)
    flat = [refs[k] if k < len(refs) else "" for refs in references for k in range(width)]
    ids = np.concatenate([encode(tf.constant(flat[start:start + 4096])).numpy()
                          for start in range(0, len(flat), 4096)])
    counts = np.array([len(refs) for refs in references], np.int32)
    return ids.reshape(len(references), width, -1), counts


def build_captioner(backbone, vocabulary_size: int, caption_length: int, image_size: int,
                    encoder_filters, encoder_norm=None, mean=None, variance=None) -> EncoderDecoder:
    """The backbone's CNN-grid memory (`image_memory`) and its decoder, as one
    `EncoderDecoder` over `{"image", "target_in"}`."""
    return EncoderDecoder(
        backbone.image_memory(image_size, list(encoder_filters), encoder_norm, mean, variance),
        backbone.decoder(vocabulary_size, caption_length), source_key="image",
        name=f"{backbone.name}_captioner")


class Captioning(GenerationTask):
    """An image in, a caption out: CNN grid encoder + attentive decoder, beam search."""

    source_key = "image"

    # ------------------------------------------------------------------ data
    def adapt(self, splits: Splits) -> None:
        check_captions(splits, "captioning")
        self.image_size = int(self.task_cfg.image_size)
        texts = [caption for references in splits.train[1] for caption in references]
        size, lowercase = int(self.task_cfg.vocabulary_size), bool(self.task_cfg.lowercase)
        kind = option_value(self.task_cfg.tokenizer)
        tokenizer = learn_tokenizer(kind, texts, size, lowercase,
                                    self.task_cfg.vocabulary_sample, self.seed)
        self.set_target(tokenizer, self.task_cfg.caption_length)
        self.caption_length = self.target_length
        self._images: dict[int, np.ndarray] = {}
        self.pixel_mean, self.pixel_variance = pixel_statistics(self.images(splits.train))
        log.info("captioning: %s vocabulary of %d tokens from %d captions", kind,
                 self.tokenizer.vocabulary_size(), len(texts))

    def train_examples(self, splits: Splits) -> int:
        """Images with `task.captions=sample`; every (image, caption) pair with `all`, so that
        an epoch of the default length covers each pair once."""
        if option_value(self.task_cfg.captions) == "all":
            return sum(len(references) for references in splits.train[1])
        return super().train_examples(splits)

    def images(self, pair) -> np.ndarray:
        """The split's images as uint8 (N, S, S, 3), resized once."""
        key = id(pair[0])
        if key not in self._images:
            self._images[key] = stack_images(pair[0], self.image_size)
        return self._images[key]

    def _caption_table(self, references: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """ids (N, K, caption_length + 1) of every image's K <= K_max captions and counts (N,)."""
        return caption_table(references, self.encode_targets)

    def dataset(self, pair, training, batch_size):
        images = self.images(pair)
        table, counts = self._caption_table(pair[1])
        if not training:  # teacher-forced validation loss on each image's first caption
            ds = tf.data.Dataset.from_tensor_slices((images, table[:, 0]))
        elif option_value(self.task_cfg.captions) == "all":
            rows, columns = np.nonzero(np.arange(table.shape[1])[None, :] < counts[:, None])
            pixels = tf.constant(images)
            ds = tf.data.Dataset.from_tensor_slices((rows.astype(np.int32), table[rows, columns]))
            ds = ds.shuffle(len(rows), seed=self.seed, reshuffle_each_iteration=True).repeat()
            ds = ds.map(plain(lambda row, caption: (tf.gather(pixels, row), caption)),
                        num_parallel_calls=tf.data.AUTOTUNE)
        else:
            ds = tf.data.Dataset.from_tensor_slices((images, table, counts))
            ds = ds.shuffle(len(images), seed=self.seed, reshuffle_each_iteration=True).repeat()

            def pick(image, captions, count):  # one random reference per visit
                return image, captions[tf.random.uniform([], 0, count, tf.int32)]

            ds = ds.map(plain(pick), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(plain(lambda image, full: (tf.cast(image, tf.float32), full[:-1], full[1:])),
                    num_parallel_calls=tf.data.AUTOTUNE)
        return self.bucketed(ds, training, batch_size)

    # ------------------------------------------------------------------ model
    def build_model(self) -> keras.Model:
        model = build_captioner(self.backbone, self.tokenizer.vocabulary_size(),
                                self.caption_length, self.image_size, self.task_cfg.encoder_filters,
                                self.task_cfg.encoder_norm, self.pixel_mean, self.pixel_variance)
        model({"image": tf.zeros((1, self.image_size, self.image_size, 3)),
               "target_in": tf.zeros((1, self.caption_length), tf.int32)})
        return model

    def describe(self, model, images: np.ndarray, batch_size: int = 128) -> list[str]:
        """uint8 (N, S, S, 3) -> one caption per image."""
        jit = self.decode_jit(len(images))
        fn = tf.function(lambda x: self.detokenize(self.generate_ids(model, x, jit)),
                         reduce_retracing=True, autograph=False)
        return self.decode_in_batches(
            lambda batch: [t.decode("utf-8") for t in fn(tf.cast(batch, tf.float32)).numpy()],
            images, batch_size, jit)

    def evaluate(self, model, pair, batch_size):
        hypotheses = self.describe(model, self.images(pair))
        references = [[self.tokenizer.normalize(r) for r in refs] for refs in pair[1]]
        self.samples = [{"caption": h, "references": refs}
                        for h, refs in zip(hypotheses[:20], references[:20])]
        return caption_bleu(hypotheses, references)

    def bleu(self, model, pair) -> float:
        """Corpus BLEU-4 against every (normalised) reference of each image."""
        references = [[self.tokenizer.normalize(r) for r in refs] for refs in pair[1]]
        return corpus_bleu(self.describe(model, self.images(pair)), references, 4)

    def pictures(self, model, splits, directory):
        """`attention_<i>.png`: the image, then per generated word where the decoder looked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        count = min(int(self.task_cfg.num_pictures), len(splits.validation[0]))
        if count == 0:
            return []
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        images = self.images(splits.validation)[:count]
        pixels = tf.cast(images, tf.float32)
        ids = self.generate_ids(model, pixels).numpy()  # (B, max_decode), [END] then 0s
        target_in = np.zeros((count, self.caption_length), np.int32)
        target_in[:, 0] = self.start_id
        target_in[:, 1:] = ids[:, : self.caption_length - 1]
        maps = model.attention_maps(pixels, tf.constant(target_in)).numpy()  # (B, T, N)
        side = int(round(maps.shape[-1] ** 0.5))
        paths = []
        for index in range(count):
            tokens = [int(t) for t in ids[index] if t != 0]
            words = [self.detokenize(tf.constant([[t]])).numpy()[0].decode() or "[end]"
                     for t in tokens]
            columns = min(len(words) + 1, 6)
            rows = -(-(len(words) + 1) // columns)
            figure, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows),
                                        squeeze=False)
            for axis in axes.ravel():
                axis.axis("off")
            axes[0, 0].imshow(images[index])
            axes[0, 0].set_title("image", fontsize=9)
            for position, word in enumerate(words, start=1):
                axis = axes.ravel()[position]
                axis.imshow(images[index])
                weights = maps[index, position - 1].reshape(side, side)
                axis.imshow(weights, cmap="inferno", alpha=0.6, interpolation="bilinear",
                            extent=(0, images.shape[2], images.shape[1], 0))
                axis.set_title(word, fontsize=9)
            figure.suptitle(" ".join(w for w in words if w != "[end]"), fontsize=10)
            figure.tight_layout()
            path = directory / f"attention_{index}.png"
            figure.savefig(path, dpi=80)
            plt.close(figure)
            paths.append(path)
        return paths

    # ------------------------------------------------------------------ serving
    def serving_fn(self, model):
        size, jit = self.image_size, self.decode_jit(None)  # decode.jit_compile for the export

        def serve(image_bytes):
            pixels = decode_images(image_bytes, size)  # (B, S, S, 3) float32
            return {"caption": self.detokenize(self.generate_ids(model, pixels, jit))}

        return serve

    def serving_signature(self):
        return [tf.TensorSpec([None], tf.string, name="image_bytes")]
