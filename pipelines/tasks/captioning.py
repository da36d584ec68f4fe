"""`task=captioning`: an image in, a sentence out. Metrics: `bleu4`, `bleu1` (sacrebleu).

Raw examples are (image, captions): a uint8 image (H, W, 3) of any size and its list of
reference captions. A caption tokenizer is learned on the training captions and lives in
the graph: `task.tokenizer=word` (a `TextVectorization` vocabulary: lower-cased words,
punctuation stripped, core TF ops only) or `wordpiece` (keras-hub WordPiece; loading the
export then needs `import tensorflow_text`). Ids 0-3 are [PAD], [UNK], [START], [END].

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
import re

import keras
import numpy as np
import tensorflow as tf

from pipelines.data import Splits
from pipelines.decoding import decode
from pipelines.metrics import caption_bleu, corpus_bleu
from pipelines.tasks.base import Task
from pipelines.tasks.segmentation import _plain, decode_images, pixel_statistics, resize_image
from pipelines.trainer import Hook

log = logging.getLogger(__name__)

START, END = "[start]", "[end]"
NUM_RESERVED = 4  # [PAD] [UNK] [START] [END]
_PUNCTUATION = re.compile(r'[!"#$%&()\*\+,\-\./:;<=>?@\[\\\]^_`{|}~\']')  # as TextVectorization


def _value(option) -> str:
    return str(getattr(option, "value", option))


class WordTokenizer:
    """Whole words from a `TextVectorization` vocabulary: ids 0 '', 1 [UNK], 2 [start],
    3 [end], then the training words by frequency."""

    def __init__(self, captions: list[str], vocabulary_size: int, lowercase: bool):
        standardize = "lower_and_strip_punctuation" if lowercase else "strip_punctuation"
        counter = keras.layers.TextVectorization(max_tokens=vocabulary_size - 2,
                                                 standardize=standardize)
        counter.adapt(tf.data.Dataset.from_tensor_slices(captions).batch(1024))
        words = [str(w) for w in counter.get_vocabulary()[2:]]  # without '' and [UNK]
        self.layer = keras.layers.TextVectorization(
            vocabulary=[START, END, *words], standardize=standardize, ragged=True,
            name="caption_vectorization")
        self.vocabulary = [str(w) for w in self.layer.get_vocabulary()]
        self.words = tf.constant(self.vocabulary)
        self.lowercase = lowercase
        self.layer(tf.constant(["a"]))  # called once, so that ExportArchive can track it

    start_id, end_id = 2, 3

    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    def tokenize(self, texts):
        """strings (B,) -> ragged ids (B, None)."""
        return tf.cast(self.layer(texts), tf.int32)

    def detokenize(self, ids):
        """ragged ids (B, None) -> strings (B,)."""
        return tf.strings.reduce_join(tf.gather(self.words, ids), axis=-1, separator=" ")

    def normalize(self, text: str) -> str:
        """A reference as the tokenizer sees it: what BLEU compares hypotheses with."""
        text = _PUNCTUATION.sub("", text.lower() if self.lowercase else text)
        return " ".join(text.split())

    def trackables(self) -> list:
        return [self.layer]


class WordPieceTokenizer:
    """Subwords from a WordPiece vocabulary learned on the captions (as translation)."""

    def __init__(self, captions: list[str], vocabulary_size: int, lowercase: bool):
        from pipelines.tasks.translation import END as WP_END, START as WP_START, learn_wordpiece

        self.tokenizer = learn_wordpiece(captions, vocabulary_size, lowercase)
        self.start_id = self.tokenizer.token_to_id(WP_START)
        self.end_id = self.tokenizer.token_to_id(WP_END)
        self.lowercase = lowercase

    def vocabulary_size(self) -> int:
        return self.tokenizer.vocabulary_size()

    def tokenize(self, texts):
        ids = self.tokenizer(texts)
        if isinstance(ids, list):  # keras-hub gives Python lists in eager mode
            ids = tf.ragged.constant(ids, dtype=tf.int32, ragged_rank=1)
        return tf.cast(ids, tf.int32)

    def detokenize(self, ids):
        texts = self.tokenizer.detokenize(ids)
        if isinstance(texts, (list, str, bytes)):  # eager mode, as above
            texts = tf.constant(texts)
        return tf.strings.strip(texts)

    def normalize(self, text: str) -> str:
        return " ".join((text.lower() if self.lowercase else text).split())

    def trackables(self) -> list:
        return [self.tokenizer]


def caption_loss(y_true, y_pred):
    """Per caption (B,): cross-entropy averaged over its own tokens ([END] included, 0 =
    padding), so the amount of padding never changes a caption's loss."""
    mask = tf.cast(tf.not_equal(y_true, 0), tf.float32)  # (B, T)
    token_loss = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)
    return tf.reduce_sum(token_loss * mask, axis=-1) / tf.maximum(tf.reduce_sum(mask, axis=-1), 1.0)


class Captioning(Task):
    """An image in, a caption out: CNN grid encoder + attentive decoder, beam search."""

    name = "captioning"

    # ------------------------------------------------------------------ data
    def adapt(self, splits: Splits) -> None:
        for split_name, pair in (("train", splits.train), ("validation", splits.validation),
                                 ("test", splits.test)):
            if pair is None:
                continue
            for index, references in enumerate(pair[1]):
                if isinstance(references, str) or not references or not all(
                        isinstance(r, str) and r.strip() for r in references):
                    raise ValueError(
                        f"captioning needs a non-empty list of caption strings per image; the "
                        f"{split_name} split's example {index} has {references!r}")
        self.image_size = int(self.task_cfg.image_size)
        self.caption_length = int(self.task_cfg.caption_length)
        texts = [caption for references in splits.train[1] for caption in references]
        size, lowercase = int(self.task_cfg.vocabulary_size), bool(self.task_cfg.lowercase)
        kind = _value(self.task_cfg.tokenizer)
        self.tokenizer = (WordTokenizer if kind == "word" else WordPieceTokenizer)(
            texts, size, lowercase)
        self.start_id, self.end_id = self.tokenizer.start_id, self.tokenizer.end_id
        self.max_decode = min(self.cfg.decode.max_length or self.caption_length,
                              self.caption_length)
        self._images: dict[int, np.ndarray] = {}
        self.pixel_mean, self.pixel_variance = pixel_statistics(self.images(splits.train))
        log.info("captioning: %s vocabulary of %d tokens from %d captions", kind,
                 self.tokenizer.vocabulary_size(), len(texts))

    def train_examples(self, splits: Splits) -> int:
        """Images with `task.captions=sample`; every (image, caption) pair with `all`, so that
        an epoch of the default length covers each pair once."""
        if _value(self.task_cfg.captions) == "all":
            return sum(len(references) for references in splits.train[1])
        return super().train_examples(splits)

    def images(self, pair) -> np.ndarray:
        """The split's images as uint8 (N, S, S, 3), resized once."""
        key = id(pair[0])
        if key not in self._images:
            size = self.image_size
            self._images[key] = (np.stack([resize_image(image, size) for image in pair[0]])
                                 .astype(np.uint8) if len(pair[0])
                                 else np.zeros((0, size, size, 3), np.uint8))
        return self._images[key]

    def encode_captions(self, texts):
        """strings (B,) -> [START] ids [END] (B, caption_length + 1), 0-padded, cut."""
        ids = self.tokenizer.tokenize(texts)[:, : self.caption_length - 1]  # ragged (B, None)
        edge = tf.ones([ids.nrows(), 1], tf.int32)
        full = tf.concat([edge * self.start_id, ids, edge * self.end_id], axis=1)
        return full.to_tensor(shape=[None, self.caption_length + 1])

    def _caption_table(self, references: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """ids (N, K, caption_length + 1) of every image's K <= K_max captions and counts (N,)."""
        width = max(len(refs) for refs in references)
        flat = [refs[k] if k < len(refs) else "" for refs in references for k in range(width)]
        ids = np.concatenate([self.encode_captions(tf.constant(flat[start:start + 4096])).numpy()
                              for start in range(0, len(flat), 4096)])
        counts = np.array([len(refs) for refs in references], np.int32)
        return ids.reshape(len(references), width, -1), counts

    def dataset(self, pair, training, batch_size):
        images = self.images(pair)
        table, counts = self._caption_table(pair[1])
        if not training:  # teacher-forced validation loss on each image's first caption
            ds = tf.data.Dataset.from_tensor_slices((images, table[:, 0]))
        elif _value(self.task_cfg.captions) == "all":
            rows, columns = np.nonzero(np.arange(table.shape[1])[None, :] < counts[:, None])
            pixels = tf.constant(images)
            ds = tf.data.Dataset.from_tensor_slices((rows.astype(np.int32), table[rows, columns]))
            ds = ds.shuffle(len(rows), seed=self.seed, reshuffle_each_iteration=True).repeat()
            ds = ds.map(_plain(lambda row, caption: (tf.gather(pixels, row), caption)),
                        num_parallel_calls=tf.data.AUTOTUNE)
        else:
            ds = tf.data.Dataset.from_tensor_slices((images, table, counts))
            ds = ds.shuffle(len(images), seed=self.seed, reshuffle_each_iteration=True).repeat()

            def pick(image, captions, count):  # one random reference per visit
                return image, captions[tf.random.uniform([], 0, count, tf.int32)]

            ds = ds.map(_plain(pick), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=training)

        def to_tensors(image, full):
            x = {"image": tf.cast(image, tf.float32), "target_in": full[:, :-1]}
            return x, full[:, 1:]

        return ds.map(_plain(to_tensors),
                      num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    # ------------------------------------------------------------------ model
    def build_model(self) -> keras.Model:
        model = self.backbone_factory().captioner(
            self.tokenizer.vocabulary_size(), self.caption_length, self.image_size,
            list(self.task_cfg.encoder_filters), encoder_norm=self.task_cfg.encoder_norm,
            mean=self.pixel_mean, variance=self.pixel_variance)
        model({"image": tf.zeros((1, self.image_size, self.image_size, 3)),
               "target_in": tf.zeros((1, self.caption_length), tf.int32)})
        return model

    def loss(self, y_true, y_pred):
        return caption_loss(y_true, y_pred)

    def stats(self, y_true, y_pred):
        """Next-token accuracy on valid positions: a monitoring signal only."""
        mask = tf.cast(tf.not_equal(y_true, 0), tf.float32)
        correct = tf.cast(tf.equal(tf.argmax(y_pred, -1, output_type=tf.int32),
                                   tf.cast(y_true, tf.int32)), tf.float32)
        return {"accuracy": (tf.reduce_sum(correct * mask), tf.reduce_sum(mask))}

    # ------------------------------------------------------------------ decoding
    def caption_ids(self, model, pixels):
        """float pixels (B, S, S, 3) -> token ids (B, max_decode), beam search per `decode.*`."""
        state = model.encode(pixels)
        start = tf.fill(tf.shape(pixels)[:1], self.start_id)
        return decode(model.step, state, start, self.max_decode, self.end_id,
                      beam_size=self.cfg.decode.beam_size,
                      length_penalty=self.cfg.decode.length_penalty)

    def detokenize(self, ids):
        """ids (B, T) -> strings (B,), special tokens dropped."""
        ids = tf.cast(ids, tf.int32)
        return self.tokenizer.detokenize(tf.ragged.boolean_mask(ids, ids >= NUM_RESERVED))

    def describe(self, model, images: np.ndarray, batch_size: int = 128) -> list[str]:
        """uint8 (N, S, S, 3) -> one caption per image."""
        fn = tf.function(lambda x: self.detokenize(self.caption_ids(model, x)),
                         reduce_retracing=True, autograph=False)
        out = []
        for start in range(0, len(images), batch_size):
            batch = tf.cast(images[start:start + batch_size], tf.float32)
            out.extend(t.decode("utf-8") for t in fn(batch).numpy())
        return out

    def evaluate(self, model, pair, batch_size):
        hypotheses = self.describe(model, self.images(pair))
        references = [[self.tokenizer.normalize(r) for r in refs] for refs in pair[1]]
        self.samples = [{"caption": h, "references": refs}
                        for h, refs in zip(hypotheses[:20], references[:20])]
        return caption_bleu(hypotheses, references)

    def hooks(self, model, splits):
        every = self.cfg.trainer.get("eval_bleu_every", 0)
        return [ValidationBleu(self, model, splits.validation, every)] if every else []

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
        ids = self.caption_ids(model, pixels).numpy()  # (B, max_decode), [END] then 0s
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
    def _serving_fn(self, model):
        size = self.image_size

        def serve(image_bytes):
            pixels = decode_images(image_bytes, size)  # (B, S, S, 3) float32
            return {"caption": self.detokenize(self.caption_ids(model, pixels))}

        return serve

    def export(self, model, path):
        archive = keras.export.ExportArchive()
        archive.track(model)
        for trackable in self.tokenizer.trackables():
            archive.track(trackable)
        archive.add_endpoint(
            "serving_default", self._serving_fn(model),
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
        )
        archive.write_out(path, verbose=False)

    def serve_in_process(self, model, inputs):
        outputs = self._serving_fn(model)(tf.constant(inputs))
        return {k: v.numpy() for k, v in outputs.items()}


class ValidationBleu(Hook):
    """`trainer.eval_bleu_every=N`: corpus BLEU-4 of up to 200 validation images every N
    epochs, added to the epoch's logs as `val_bleu` (so `task.monitor=val_bleu` works)."""

    def __init__(self, task: Captioning, model, pair, every: int, sample: int = 200):
        self.task, self.model, self.every = task, model, every
        self.images = task.images(pair)[:sample]
        self.references = [[task.tokenizer.normalize(r) for r in refs] for refs in pair[1][:sample]]

    def on_epoch_end(self, trainer, epoch, logs):
        if (epoch + 1) % self.every:
            return
        hypotheses = self.task.describe(self.model, self.images)
        logs["val_bleu"] = corpus_bleu(hypotheses, self.references, 4)

