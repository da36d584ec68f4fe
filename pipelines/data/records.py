"""Sharded TFRecords of raw examples: written by `python -m pipelines.prepare`, read by
`data=tfrecord data.path=DIR` (`TfrecordSource`).

A prepared folder holds, per split, `data.shards` files `SPLIT-IIIII-of-NNNNN.tfrecord` of
`tf.train.Example`s (the split's examples in order, contiguous blocks), and `manifest.json`:
the format, the task it was prepared for, the counts per split and per shard, each shard's
sha256, a hash of the settings that decided the examples, and the command that wrote it.

Features per format (`FEATURES`): `labelled_text` text, label; `parallel_text` source,
target; `conll` tokens, tags (string lists); `text_lines` text, doc (int64);
`labelled_images` image (encoded bytes), label; `image_masks` image, mask (PNG); 
`image_captions` image, captions (string list). Images given as uint8 arrays are stored as
PNG (lossless) and read back as arrays; encoded bytes stay bytes.

Reading checks every shard against the manifest (sha256, then record by record where it
differs): a truncated or corrupted shard fails with its file and record number, or with
`data.skip_corrupt=true` is skipped with a warning; the other shards still load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re

import numpy as np

from pipelines.data.files import DataFileError
from pipelines.data.source import Source
from pipelines.data.splits import Splits, limit_splits
from pipelines.data.streaming import StreamingSplit, check_streaming_format, choose_streaming

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERSION = 1
SPLITS = ("train", "validation", "test")
READ_BATCH = 1024

# format -> ((input feature, kind), (target feature, kind)); kinds: text (one string),
# texts (a string list), int, image (encoded bytes, or an array stored as PNG), mask (PNG).
FEATURES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "labelled_text": (("text", "text"), ("label", "text")),
    "parallel_text": (("source", "text"), ("target", "text")),
    "conll": (("tokens", "texts"), ("tags", "texts")),
    "text_lines": (("text", "text"), ("doc", "int")),
    "labelled_images": (("image", "image"), ("label", "text")),
    "image_masks": (("image", "image"), ("mask", "mask")),
    "image_captions": (("image", "image"), ("captions", "texts")),
}


# ----------------------------------------------------------------------------- writing
def _feature(kind: str, value):
    import tensorflow as tf

    train = tf.train
    if kind == "int":
        return train.Feature(int64_list=train.Int64List(value=[int(value)]))
    if kind == "text":
        values = [str(value).encode("utf-8")]
    elif kind == "texts":
        values = [str(item).encode("utf-8") for item in value]
    elif isinstance(value, (bytes, np.bytes_)):  # an encoded image
        values = [bytes(value)]
    else:  # a uint8 array: (H, W, 3) image or (H, W) mask, stored losslessly
        array = np.asarray(value, np.uint8)
        values = [tf.io.encode_png(array if array.ndim == 3 else array[..., None]).numpy()]
    return train.Feature(bytes_list=train.BytesList(value=values))


def _image_shape(image) -> tuple[int, int, int]:
    """(H, W, 3) of an image as the tasks decode it: encoded bytes (read from the header),
    or a uint8 array."""
    if isinstance(image, (bytes, np.bytes_)):
        import io

        from PIL import Image

        with Image.open(io.BytesIO(image)) as opened:
            width, height = opened.size
        return height, width, 3
    return (*np.shape(image)[:2], 3)


def encode_example(format: str, inputs, targets) -> bytes:
    """One raw example as a serialized `tf.train.Example`."""
    import tensorflow as tf

    (input_name, input_kind), (target_name, target_kind) = FEATURES[format]
    features = {input_name: _feature(input_kind, inputs),
                target_name: _feature(target_kind, targets)}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _rows(pair):
    if isinstance(pair, StreamingSplit):
        return pair.rows()
    return zip(*pair)


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_hash(settings: dict) -> str:
    """sha256 of the settings (JSON, sorted keys) that decided the examples."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def write_prepared(splits: Splits, format: str, task: str, out: str | os.PathLike,
                   shards: int, settings: dict, command: str,
                   ignore_index: int | None = None) -> dict:
    """Writes every split of `splits` as `shards` TFRecord files (fewer for a split with fewer
    examples) and `manifest.json` into `out`; returns the manifest. The manifest is written
    last: a folder without one is not a prepared dataset."""
    import tensorflow as tf

    if format not in FEATURES:
        raise ValueError(f"format {format!r} has no TFRecord features; formats: "
                         f"{', '.join(FEATURES)}")
    if shards < 1:
        raise ValueError(f"data.shards must be >= 1; received {shards}")
    out = pathlib.Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    manifest = {"version": VERSION, "format": format, "task": task, "command": command,
                "config_hash": settings_hash(settings), "settings": settings,
                "ignore_index": ignore_index, "splits": {}}
    for split in SPLITS:
        pair = getattr(splits, split)
        if pair is None:
            continue
        total = len(pair[0])
        files = max(1, min(shards, total))
        ends = [(index + 1) * total // files for index in range(files)]
        rows, entries, images, shapes = iter(_rows(pair)), [], None, set()
        for index, end in enumerate(ends):
            name = f"{split}-{index:05d}-of-{files:05d}.tfrecord"
            start = entries[-1]["end"] if entries else 0
            with tf.io.TFRecordWriter(str(out / name)) as writer:
                for _ in range(end - start):
                    inputs, targets = next(rows)
                    if images is None and FEATURES[format][0][1] == "image":
                        images = "bytes" if isinstance(inputs, (bytes, np.bytes_)) else "array"
                    if images is not None and len(shapes) < 2:
                        shapes.add(_image_shape(inputs))
                    writer.write(encode_example(format, inputs, targets))
            entries.append({"file": name, "count": end - start, "end": end})
        for entry in entries:
            entry.pop("end")
            entry["sha256"] = _sha256(out / entry["file"])
        # One image size in the split: a streamed read resizes whole batches.
        manifest["splits"][split] = {"count": total, "images": images, "shards": entries,
                                     "image_shape": list(shapes.pop()) if len(shapes) == 1
                                     else None}
    temporary = out / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=2))
    temporary.replace(out / MANIFEST)
    return manifest


# ----------------------------------------------------------------------------- reading
def _spec(kind: str):
    import tensorflow as tf

    if kind == "int":
        return tf.io.FixedLenFeature([], tf.int64)
    if kind == "texts":
        return tf.io.RaggedFeature(tf.string)
    return tf.io.FixedLenFeature([], tf.string)


def _python(kind: str, values, images: str | None) -> list:
    """A parsed batch of one feature as Python values."""
    import tensorflow as tf

    if kind == "int":
        return [int(value) for value in values.numpy()]
    if kind == "text":
        return [value.decode("utf-8") for value in values.numpy()]
    if kind == "texts":
        return [[item.decode("utf-8") for item in row] for row in values.to_list()]
    encoded = list(values.numpy())
    if kind == "image" and images != "array":
        return encoded
    channels = 3 if kind == "image" else 1
    decoded = [tf.io.decode_png(value, channels=channels).numpy() for value in encoded]
    return decoded if kind == "image" else [mask[..., 0] for mask in decoded]


def scan_records(path: pathlib.Path) -> tuple[int, str | None]:
    """(records read, the reader's error or None), one record at a time."""
    import tensorflow as tf

    count = 0
    try:
        for _ in tf.data.TFRecordDataset(str(path)):
            count += 1
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as error:
        message = str(getattr(error, "message", error)).strip().splitlines()[0]
        return count, re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", message)
    return count, None


def shard_problem(path: pathlib.Path, shard: dict) -> str | None:
    """What is wrong with a shard against its manifest entry, or None."""
    if not path.is_file():
        return f"{path}: no such shard (manifest.json lists it)"
    if _sha256(path) == shard["sha256"]:
        return None
    count, error = scan_records(path)
    if error is not None:
        return (f"{path}: record {count} is corrupted or truncated (records 0-{count - 1} "
                f"read; {error})" if count else
                f"{path}: record 0 is corrupted or truncated ({error})")
    if count != shard["count"]:
        return (f"{path}: holds {count} records, manifest.json says {shard['count']} "
                "(truncated at a record boundary, or changed after prepare)")
    return f"{path}: its bytes differ from the sha256 in manifest.json (changed after prepare)"


class TfrecordSource(Source):
    """`data=tfrecord data.path=DIR`: the splits `python -m pipelines.prepare` wrote.

    The manifest must be of the run's task (`data.task`, `${task.name}`) and of the format the
    task reads; every shard is checked against it before anything trains.
    """

    name = "tfrecord"

    def __init__(self, path: str, task: str, seed: int = 42, streaming: bool | str = False,
                 shuffle_buffer: int = 10_000, skip_corrupt: bool = False,
                 limit: int | None = None, streaming_threshold_mb: float = 256):
        self.path = pathlib.Path(path).expanduser()
        self.task, self.seed, self.limit = task, seed, limit
        self.streaming, self.shuffle_buffer = streaming, shuffle_buffer
        self.streaming_threshold_mb = streaming_threshold_mb
        self.skip_corrupt = skip_corrupt
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DataFileError(f"data.path={path}: no {MANIFEST} in {self.path.absolute()}; "
                                "write one with python -m pipelines.prepare ... data.out=DIR")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataFileError(f"{manifest_path}: cannot read it as JSON ({error})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("version") != VERSION:
            raise DataFileError(f"{manifest_path}: not a manifest of python -m pipelines.prepare "
                                f"(version {VERSION})")
        self.ignore_index = self.manifest.get("ignore_index")

    def formats(self) -> list[str]:
        return [self.manifest["format"]]

    def read(self, format: str) -> Splits:
        prepared, prepared_for = self.manifest["format"], self.manifest["task"]
        if format != prepared or self.task != prepared_for:
            raise DataFileError(
                f"data.path={self.path}: its {MANIFEST} holds {prepared} examples prepared for "
                f"task={prepared_for}, but task={self.task} reads {format}. Prepare the data for "
                f"this task: python -m pipelines.prepare task={self.task} data=... "
                "data.out=DIR")
        if self.streaming == "auto":  # decided on the size of the training shards
            shards = [self.path / shard["file"]
                      for shard in self.manifest["splits"].get("train", {}).get("shards", [])]
            self.streaming = choose_streaming(
                format, sum(path.stat().st_size for path in shards if path.is_file()),
                self.streaming_threshold_mb, f"data.path={self.path} (train)")
        if self.streaming:
            check_streaming_format(format, self.name)
        loaded = {}
        for split, entry in self.manifest["splits"].items():
            shards = self._checked_shards(split, entry)
            if self.streaming and split == "train":
                files = [str(self.path / s["file"]) for s in shards]
                loaded[split] = StreamingSplit(
                    [(file,) for file in files], self._reader(format),
                    sum(s["count"] for s in shards), self.shuffle_buffer,
                    python_rows=lambda files=files, images=entry.get("images"):
                        self._rows(format, files, images),
                    where=f"data.path={self.path} (train: {len(files)} shards)",
                    shape=tuple(entry["image_shape"]) if entry.get("image_shape") else None)
            else:
                loaded[split] = self._read_whole(format, shards, entry.get("images"))
        return limit_splits(Splits(**loaded), self.limit, self.seed)

    def _checked_shards(self, split: str, entry: dict) -> list[dict]:
        """The split's shards that match the manifest; a bad one raises, or with
        `data.skip_corrupt=true` is left out with a warning."""
        good = []
        for shard in entry["shards"]:
            problem = shard_problem(self.path / shard["file"], shard)
            if problem is None:
                good.append(shard)
            elif self.skip_corrupt:
                log.warning("%s; skipped with its %d examples (data.skip_corrupt=true)",
                            problem, shard["count"])
            else:
                raise DataFileError(f"{problem}. Prepare the data again, or set "
                                    "data.skip_corrupt=true to train without this shard")
        if not good:
            raise DataFileError(f"data.path={self.path}: every shard of the {split} split is "
                                "corrupted; prepare the data again")
        return good

    def _parser(self, format: str):
        import tensorflow as tf

        (input_name, input_kind), (target_name, target_kind) = FEATURES[format]
        spec = {input_name: _spec(input_kind), target_name: _spec(target_kind)}

        def parse(serialized):
            features = tf.io.parse_example(serialized, spec)
            return features[input_name], features[target_name]

        return parse

    def _reader(self, format: str):
        """`StreamingSplit` reader: one shard -> (input, target) examples."""
        import tensorflow as tf

        parse = self._parser(format)
        return lambda path: tf.data.TFRecordDataset(path).batch(READ_BATCH).map(parse).unbatch()

    def _rows(self, format: str, files: list[str], images: str | None):
        """Yields the (input, target) rows of `files` as Python values, a batch at a time."""
        import tensorflow as tf

        (_, input_kind), (_, target_kind) = FEATURES[format]
        ds = tf.data.TFRecordDataset(files).batch(READ_BATCH).map(self._parser(format))
        for batch_inputs, batch_targets in ds:
            yield from zip(_python(input_kind, batch_inputs, images),
                           _python(target_kind, batch_targets, images))

    def _read_whole(self, format: str, shards: list[dict], images: str | None) -> tuple:
        files = [str(self.path / shard["file"]) for shard in shards]
        inputs, targets = [], []
        for row in self._rows(format, files, images):
            inputs.append(row[0])
            targets.append(row[1])
        return inputs, targets
