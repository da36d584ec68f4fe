"""`data=files`: the user's own files in the formats of README.md.

Every reader checks the whole file before training starts and raises `DataFileError`
naming the file, the line and what was expected.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import pathlib
import zlib

from pipelines.data import streaming
from pipelines.data.source import Source
from pipelines.data.splits import Splits, hold_out, limit_indices, limit_splits


class DataFileError(ValueError):
    """A data file that cannot be read; the message names the file, line and expectation."""


def _existing(path: str, key: str) -> pathlib.Path:
    resolved = pathlib.Path(path).expanduser()
    if not resolved.exists():
        raise DataFileError(f"{key}={path}: no such file (resolved to {resolved.absolute()})")
    return resolved


def read_text_classification(path: pathlib.Path, text_column: str = "text",
                             label_column: str = "label") -> tuple[list[str], list[str]]:
    """Reads (texts, labels) from a .csv/.tsv with a header, or `LABEL TEXT` lines."""
    if path.suffix.lower() in (".csv", ".tsv"):
        rows = _table_rows(path, io.StringIO(read_text(path), newline=""),
                           text_column, label_column)
    else:  # universal line ends (\r too), as a text editor shows them
        lines = enumerate(io.StringIO(read_text(path), newline=None), start=1)
        rows = _labelled_rows(path, ((number, line.rstrip("\n")) for number, line in lines))
    texts, labels = [], []
    for text, label in rows:
        texts.append(text)
        labels.append(label)
    return texts, labels


def text_classification_rows(path: pathlib.Path, text_column: str = "text",
                             label_column: str = "label"):
    """Yields the checked (text, label) rows `read_text_classification` reads, one at a time,
    without holding the file (`data.streaming=true`). `LABEL TEXT` lines end at \n (or
    \r\n), as tf.data reads them: a carriage return alone is refused, naming its line."""
    if path.suffix.lower() in (".csv", ".tsv"):
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                yield from _table_rows(path, handle, text_column, label_column)
        except UnicodeDecodeError as error:
            raise DataFileError(f"{path}: not UTF-8 text ({error}); save the file as UTF-8") \
                from None
        except OSError as error:
            raise DataFileError(f"{path}: cannot read it ({error})") from None
        return

    def lines():
        for number, line in read_lines(path):
            if "\r" in line:
                raise DataFileError(
                    f"{path}:{number}: a carriage return without a line feed (old Mac line "
                    "ends); data.streaming=true reads lines that end in \\n or \\r\\n: convert "
                    "the file, or set data.streaming=false")
            yield number, line

    yield from _labelled_rows(path, lines())


def _labelled_rows(path, numbered_lines):
    """Checked (text, label) of numbered `LABEL TEXT` lines; blank lines skipped."""
    found = False
    for number, line in numbered_lines:
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DataFileError(
                f"{path}:{number}: expected 'LABEL TEXT' (a label, whitespace, the text); "
                f"got {line.strip()[:80]!r}"
            )
        found = True
        yield parts[1], parts[0]
    if not found:
        raise DataFileError(f"{path}: no examples found (expected lines 'LABEL TEXT')")


def read_text(path: pathlib.Path) -> str:
    """The whole UTF-8 file as text, a byte-order mark dropped; a decoding error names the line."""
    try:
        data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as error:
        raise DataFileError(f"{path}: cannot read it ({error})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        number = data.count(b"\n", 0, error.start) + 1
        raise DataFileError(f"{path}:{number}: not UTF-8 text ({error}); save the file as "
                            "UTF-8") from None


def read_lines(path: pathlib.Path):
    """Yields (line number, text without the line break) of a UTF-8 file, `.gz` too.

    Lines break at \n only (a stray \r inside a sentence does not shift the alignment),
    a UTF-8 byte-order mark on line 1 is dropped, and a decoding error names the line.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataFileError(f"{path}:{number}: not UTF-8 text ({error})") from None
                if number == 1:
                    text = text.removeprefix("\ufeff")
                yield number, text.rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as error:  # unreadable, or a broken .gz
        raise DataFileError(f"{path}: cannot read it ({error})") from None


def _table_rows(path, handle, text_column, label_column):
    """Checked (text, label) rows of a .csv/.tsv with a header, read from `handle`."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(handle, delimiter=delimiter)
    found = False
    try:
        missing = [c for c in (text_column, label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataFileError(
                f"{path}:1: header has no column {', '.join(map(repr, missing))}; columns are "
                f"{reader.fieldnames}. Set data.text_column=... and data.label_column=..."
            )
        for row in reader:
            text, label = row.get(text_column), row.get(label_column)
            if text is None or label is None or not label.strip():
                raise DataFileError(
                    f"{path}:{reader.line_num}: expected {len(reader.fieldnames)} fields "
                    f"({', '.join(reader.fieldnames)}); got {list(row.values())[:4]}"
                )
            found = True
            yield text, label.strip()
    except csv.Error as error:  # a field over csv.field_size_limit(), say
        raise DataFileError(f"{path}:{reader.reader.line_num}: cannot parse the row "
                            f"({error})") from None
    if not found:
        raise DataFileError(f"{path}: no rows after the header")


# ----------------------------------------------------------------------------- translation
def _is_tsv(path: str) -> bool:
    return path.lower().endswith((".tsv", ".tsv.gz"))


def read_parallel_tsv(path: pathlib.Path) -> tuple[list[str], list[str]]:
    """Reads (sources, targets) from `source<TAB>target` lines (columns after two ignored)."""
    sources, targets = [], []
    for source, target in parallel_tsv_rows(path):
        sources.append(source)
        targets.append(target)
    return sources, targets


def parallel_tsv_rows(path: pathlib.Path):
    """Yields the checked (source, target) of `source<TAB>target` lines, one at a time."""
    found = False
    for number, line in read_lines(path):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) < 2 or not columns[0].strip() or not columns[1].strip():
            raise DataFileError(
                f"{path}:{number}: expected 'SOURCE<TAB>TARGET' (two non-empty tab-separated "
                f"columns); got {line[:80]!r}"
            )
        found = True
        yield columns[0].strip(), columns[1].strip()
    if not found:
        raise DataFileError(f"{path}: no examples found (expected lines 'SOURCE<TAB>TARGET')")


def read_parallel(source_path: pathlib.Path,
                  target_path: pathlib.Path) -> tuple[list[str], list[str]]:
    """Reads two line-aligned files: line i of one translates line i of the other.

    Lines empty on both sides are skipped; an empty line on one side only is an error.
    """
    sides = [[line for _, line in read_lines(path)] for path in (source_path, target_path)]
    if len(sides[0]) != len(sides[1]):
        raise _misaligned(source_path, len(sides[0]), target_path, len(sides[1]))
    sources, targets = [], []
    for source, target in _aligned_rows(source_path, target_path,
                                        enumerate(zip(*sides), start=1)):
        sources.append(source)
        targets.append(target)
    return sources, targets


def parallel_rows(source_path: pathlib.Path, target_path: pathlib.Path):
    """Yields the checked (source, target) pairs of two line-aligned files, one at a time
    (what `read_parallel` reads, without holding the files)."""
    import itertools

    sides = [read_lines(path) for path in (source_path, target_path)]
    numbered = enumerate(itertools.zip_longest(*sides), start=1)

    def pairs():
        for number, (source, target) in numbered:
            if source is None or target is None:  # one file ended: count the other's rest
                longer = 0 if target is None else 1
                total = number + sum(1 for _ in sides[longer])
                counts = (total, number - 1) if longer == 0 else (number - 1, total)
                raise _misaligned(source_path, counts[0], target_path, counts[1])
            yield number, (source[1], target[1])

    yield from _aligned_rows(source_path, target_path, pairs())


def _misaligned(source_path, source_lines: int, target_path, target_lines: int):
    return DataFileError(
        f"{source_path} has {source_lines} lines but {target_path} has {target_lines}; "
        "the two files must be line-aligned (line i of one translates line i of the other)"
    )


def _aligned_rows(source_path, target_path, numbered):
    """Checks and strips numbered (source, target) line pairs; skips pairs empty on both sides."""
    found = False
    for number, (source, target) in numbered:
        source, target = source.strip(), target.strip()
        if not source and not target:
            continue
        if not source or not target:
            empty, other = ((source_path, target_path) if not source
                            else (target_path, source_path))
            raise DataFileError(
                f"{empty}:{number}: empty line, but line {number} of {other} is not; expected "
                "one sentence per line on both sides"
            )
        found = True
        yield source, target
    if not found:
        raise DataFileError(f"{source_path}, {target_path}: no sentences found")


def _language_file(prefix: str, language: str) -> pathlib.Path | None:
    for candidate in (f"{prefix}.{language}", f"{prefix}.{language}.gz"):
        path = pathlib.Path(candidate).expanduser()
        if path.is_file():
            return path
    return None


def text_line_rows(paths: list[pathlib.Path]):
    """Yields (text, document id) of plain text files, one stripped non-blank line at a
    time: a blank line after text ends a document, and so does the end of a file."""
    found = False
    for row in _text_line_rows(paths):
        found = True
        yield row
    if not found:
        raise DataFileError(f"{', '.join(map(str, paths))}: no text (every line is blank)")


def _text_line_rows(paths, document: int = 0):
    for path in paths:
        fresh = True
        for _, line in read_lines(path):
            if not line.strip():
                document += not fresh
                fresh = True
                continue
            yield line.strip(), document
            fresh = False
        document += not fresh


def _train_bytes(train: str) -> int:
    """The bytes of the training files `data.train` names: files, folders (all their files),
    comma-separated lists, a translation PREFIX (PREFIX.*)."""
    total = 0
    for part in (p.strip() for p in str(train).split(",") if p.strip()):
        path = pathlib.Path(part).expanduser()
        if path.is_dir():
            files = [f for f in path.rglob("*") if f.is_file()]
        elif path.is_file():
            files = [path]
        else:
            files = [f for f in path.parent.glob(path.name + ".*") if f.is_file()]
        total += sum(f.stat().st_size for f in files)
    return total


class FilesSource(Source):
    """`data=files`: reads train / validation / test paths in the format the task names."""

    name = "files"

    def __init__(self, train: str, validation: str | None = None, test: str | None = None,
                 validation_fraction: float = 0.1, text_column: str = "text",
                 label_column: str = "label", source_lang: str = "en", target_lang: str = "de",
                 tag_scheme: str = "iob2", limit: int | None = None, seed: int = 42,
                 ignore_index: int | None = None, image_dir: str | None = None,
                 mask_dir: str | None = None, region_dir: str | None = None,
                 pair_key: str | None = None, streaming: bool | str = False,
                 shuffle_buffer: int = 10_000, streaming_threshold_mb: float = 256):
        self.paths = {"train": train, "validation": validation, "test": test}
        self.validation_fraction = validation_fraction
        self.text_column, self.label_column = text_column, label_column
        self.source_lang, self.target_lang, self.tag_scheme = source_lang, target_lang, tag_scheme
        self.limit = limit
        self.seed = seed
        # Vision folders (segmentation, captioning); ignore_index is read by the task.
        self.ignore_index = ignore_index
        self.image_dir, self.mask_dir, self.region_dir = image_dir, mask_dir, region_dir
        self.pair_key = pair_key
        self.streaming, self.shuffle_buffer = streaming, shuffle_buffer
        self.streaming_threshold_mb = streaming_threshold_mb

    def _splits(self, read, resolve=_existing) -> Splits:
        """Reads every configured split with `read(resolve(path, key))`, then holds out
        validation from train when none is given."""
        loaded = {
            split: read(resolve(path, f"data.{split}"))
            for split, path in self.paths.items()
            if path is not None
        }
        if "validation" not in loaded:
            loaded["train"], loaded["validation"] = hold_out(
                loaded["train"], self.validation_fraction, self.seed
            )
        return limit_splits(Splits(**loaded), self.limit, self.seed)

    def read(self, format: str) -> Splits:
        if self.streaming == "auto":  # decided once, on the size of the training files
            from pipelines.data.streaming import choose_streaming

            self.streaming = choose_streaming(format, _train_bytes(self.paths["train"]),
                                              self.streaming_threshold_mb, "data.train",
                                              self.paths["validation"] is not None)
        return super().read(format)

    def labelled_text(self) -> Splits:
        def read(path):
            return read_text_classification(path, self.text_column, self.label_column)

        if self.streaming:
            def stream(path):
                def rows(path=path):
                    return text_classification_rows(pathlib.Path(path), self.text_column,
                                                    self.label_column)

                if path.suffix.lower() in (".csv", ".tsv"):
                    return self._stream([(path,)], streaming.python_reader(rows), rows,
                                        shardable=False)
                return self._stream([(path,)], streaming.labelled_lines, rows)

            return self._streamed(stream, read)
        return self._splits(read)

    def parallel_text(self) -> Splits:
        """source sentences (str) -> target sentences (str).

        Each path is a PREFIX naming `PREFIX.<source_lang>` and `PREFIX.<target_lang>` (or
        their `.gz`), line-aligned; or a `.tsv` of `source<TAB>target` lines.
        """
        languages = (self.source_lang, self.target_lang)

        def resolve(path: str, key: str):
            if _is_tsv(path):
                return _existing(path, key)
            found = [_language_file(path, language) for language in languages]
            if None in found:
                missing = [f"{path}.{language}[.gz]"
                           for language, file in zip(languages, found) if file is None]
                raise DataFileError(
                    f"{key}={path}: no such file {' or '.join(missing)}. For translation "
                    f"{key} is a PREFIX naming PREFIX.{languages[0]} and PREFIX.{languages[1]} "
                    "(data.source_lang, data.target_lang; .gz allowed), or a .tsv file with "
                    "SOURCE<TAB>TARGET lines"
                )
            return tuple(found)

        def read(resolved):
            if isinstance(resolved, tuple):
                return read_parallel(*resolved)
            return read_parallel_tsv(resolved)

        def stream(resolved):
            if isinstance(resolved, tuple):
                return self._stream([resolved], streaming.parallel_lines,
                                    lambda: parallel_rows(*resolved))
            return self._stream([(resolved,)], streaming.parallel_tsv_lines,
                                lambda: parallel_tsv_rows(resolved))

        if self.streaming:
            return self._streamed(stream, read, resolve)
        return self._splits(read, resolve)

    def _stream(self, groups: list[tuple], reader, rows, shardable: bool = True,
                count: int | None = None):
        """The training split that stays in its files: `groups` read by `reader` in
        tf.data, checked and counted now by one pass of `rows()` that keeps no row (or
        `count`, when the caller made that pass)."""
        count = sum(1 for _ in rows()) if count is None else count
        return streaming.StreamingSplit(groups, reader, count, self.shuffle_buffer,
                                        python_rows=rows, shardable=shardable,
                                        where=f"data.train={self.paths['train']}")

    def _streamed(self, stream, read, resolve=_existing) -> Splits:
        """`data.streaming=true`: train is `stream(resolve(data.train))`, a
        `streaming.StreamingSplit`; validation and test are read whole."""
        if self.paths["validation"] is None:
            raise DataFileError(
                "data.streaming=true keeps the training files on disk, so no validation split "
                "can be held out of them: give data.validation=PATH")
        loaded = {split: read(resolve(path, f"data.{split}"))
                  for split, path in self.paths.items() if split != "train" and path is not None}
        train = stream(resolve(self.paths["train"], "data.train"))
        return limit_splits(Splits(train=train, **loaded), self.limit, self.seed)

    def text_lines(self) -> Splits:
        """texts (one per line) -> document ids: plain UTF-8 text files (`.txt`, `.gz`),
        blank lines separating documents; `data.train=a.txt,b.txt` concatenates files."""
        def read(paths):
            texts, documents = [], []
            for text, document in text_line_rows(paths):
                texts.append(text)
                documents.append(document)
            return texts, documents

        def resolve(path: str, key: str):
            return [_existing(part.strip(), key) for part in str(path).split(",") if part.strip()]

        def stream(paths):
            groups, first, count = [], 0, 0  # each file with the id of its first document
            for path in paths:
                groups.append((path, first))
                for _, document in _text_line_rows([path], first):
                    first, count = document + 1, count + 1
            if not count:
                next(text_line_rows(paths))  # raises: no text
            return self._stream(groups, streaming.document_lines, lambda: text_line_rows(paths),
                                count=count)

        if self.streaming:
            return self._streamed(stream, read, resolve)
        return self._splits(read, resolve)

    def conll(self) -> Splits:
        """token lists -> IOB2 tag lists, from CoNLL column files (`data.tag_scheme`)."""
        from pipelines.data.conll import TAG_SCHEMES, conll_rows, read_conll

        if self.tag_scheme not in TAG_SCHEMES:
            raise DataFileError(f"data.tag_scheme must be one of {', '.join(TAG_SCHEMES)}; "
                                f"received {self.tag_scheme!r}")
        iob1 = self.tag_scheme == "iob1"
        if self.streaming:
            return self._streamed(lambda path: self._stream(
                [(path,)], lambda file: streaming.conll_sentences(file, iob1),
                lambda: conll_rows(path, self.tag_scheme)),
                lambda path: read_conll(path, self.tag_scheme))
        return self._splits(lambda path: read_conll(path, self.tag_scheme))

    def labelled_images(self) -> Splits:
        """uint8 images (H, W, 3) -> labels: each path is a folder with one sub-folder of
        images per class, the sub-folder name being the label (`images.read_image_folder`);
        an image that does not decode fails with its file name. Streamed
        (`data.streaming=true`): train is the folder's file list, each image read and decoded
        by tf.data (encoded bytes -> labels)."""
        from pipelines.data.images import (check_streamed_image, image_folder_files,
                                           read_image_folder)

        def stream(root):  # the file list, checked by header; images decoded in tf.data
            files = image_folder_files(root)
            if self.limit is not None and len(files) > self.limit:  # the whole read's draw
                files = [files[i] for i in limit_indices(len(files), self.limit, self.seed)]
            checked = [check_streamed_image(path) for path, _ in files]
            groups = [(path, label, size) for (path, label), (size, _) in zip(files, checked)]
            shapes = {shape for _, shape in checked}  # one: the task resizes whole batches
            return streaming.StreamingSplit(
                groups, streaming.image_file, len(groups), self.shuffle_buffer,
                shape=(*shapes.pop(), 3) if len(shapes) == 1 else None,
                python_rows=lambda: ((path.read_bytes(), label) for path, label in files),
                where=f"data.train={self.paths['train']}",
                row=lambda number, column: (files[number][0].read_bytes() if column == 0
                                            else files[number][1]), per_file=True)

        if self.streaming:
            return self._streamed(stream, read_image_folder)
        return self._splits(read_image_folder)

    def image_masks(self) -> Splits:
        """images (encoded bytes) -> masks (uint8 (H, W)): each path is a folder with
        `images/` and `masks/` (or `data.image_dir`, `data.mask_dir`), paired by file stem or
        by `data.pair_key`; `data.region_dir` restricts scoring to a region (`read_segmentation`).

        CamVid: `data.train=camvid data.image_dir=val data.mask_dir=valannot data.ignore_index=11`.
        DRIVE: `data.train=DRIVE/training data.mask_dir=1st_manual data.region_dir=mask
        data.pair_key='^(\\d+)_'`.
        """
        return self._splits(lambda root: read_segmentation(
            root, self.image_dir, self.mask_dir, self.pair_key, self.region_dir,
            self.ignore_index))

    def image_captions(self) -> Splits:
        """images (encoded bytes) -> lists of captions: each path is a COCO captions JSON or a
        Flickr8k token file (`image.jpg#N<TAB>caption`); images come from `data.image_dir` or
        the folder guessed beside the file (`caption_image_dir`)."""
        def read(path):
            folder = caption_image_dir(path, self.image_dir)
            if path.suffix.lower() == ".json":
                return read_coco_captions(path, folder)
            return read_token_captions(path, folder)

        return self._splits(read)


# ----------------------------------------------------------------------------- vision
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
VOID = 255  # mask label of pixels that are never scored (outside a region of interest)
# What Pillow raises for a corrupt file, besides Image.DecompressionBombError for a header
# whose size is absurd: SyntaxError for a broken PNG chunk, ValueError for a bad palette.
PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def _folder(base: pathlib.Path, name: str, key: str) -> pathlib.Path:
    """`name` under `base` (or an absolute / current-directory path); must be a folder."""
    candidate = pathlib.Path(name).expanduser()
    folder = candidate if candidate.is_absolute() else base / candidate
    if not folder.is_dir():
        raise DataFileError(f"{key}={name}: no such folder {folder} (looked under {base})")
    return folder


def _keyed_files(folder: pathlib.Path, pair_key: str | None) -> dict[str, pathlib.Path]:
    """{key: path} of the image files in `folder`; the key is the stem, or the first group
    of `pair_key` searched in the stem."""
    import re

    try:
        pattern = re.compile(pair_key) if pair_key else None
    except re.error as error:
        raise DataFileError(f"data.pair_key={pair_key!r}: not a regular expression ({error})") \
            from None
    keyed: dict[str, pathlib.Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        key = path.stem
        if pattern is not None:
            match = pattern.search(path.stem)
            if match is None:
                raise DataFileError(f"{path}: data.pair_key={pair_key!r} does not match the "
                                    f"name {path.stem!r}")
            key = match.group(1) if pattern.groups else match.group(0)
        if key in keyed:
            raise DataFileError(f"{path} and {keyed[key]} have the same pairing key {key!r}; "
                                "set data.pair_key to a pattern that tells them apart")
        keyed[key] = path
    return keyed


def _read_label_image(path: pathlib.Path):
    """A single-channel mask as uint8 (H, W): palette images give their indices."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
            array = np.array(image if mode in ("L", "P", "1", "I", "I;16") else image.convert("RGB"))
    except PIL_ERRORS + (Image.DecompressionBombError,) as error:
        raise DataFileError(f"{path}: cannot read it as an image ({error})") from None
    if array.ndim == 3:
        if not (array == array[..., :1]).all():
            raise DataFileError(f"{path}: expected a single-channel mask of class indices "
                                f"(mode L or P); got a colour image (mode {mode})")
        array = array[..., 0]
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.max(initial=0) > 255 or array.min(initial=0) < 0:
        raise DataFileError(f"{path}: mask values must be class indices 0-255; got "
                            f"{array.min()}..{array.max()}")
    return array.astype(np.uint8)


def _image_size(path: pathlib.Path) -> tuple[int, int]:
    """(height, width) from the file header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except PIL_ERRORS + (Image.DecompressionBombError,) as error:
        raise DataFileError(f"{path}: cannot read it as an image ({error})") from None


def read_segmentation(root: pathlib.Path, image_dir: str | None = None,
                      mask_dir: str | None = None, pair_key: str | None = None,
                      region_dir: str | None = None,
                      ignore_index: int | None = None) -> tuple[list, list]:
    """(images as encoded bytes, masks as uint8 (H, W)) from `root/<image_dir>` and
    `root/<mask_dir>` (default `images/` and `masks/`), paired by file stem or by the first
    group of the regex `pair_key` (DRIVE: `^(\\d+)_` pairs `21_training.tif` with
    `21_manual1.gif`).

    Masks hold class indices; a split whose masks hold only 0 and 255 is binary and becomes
    0/1 (unless `ignore_index=255`). With `region_dir`, pixels where the region mask is 0
    become 255 (void: left out of the loss and the metrics).
    """
    import numpy as np

    image_folder = _folder(root, image_dir or "images", "data.image_dir")
    images = _keyed_files(image_folder, pair_key)
    folders = {"mask": _folder(root, mask_dir or "masks", "data.mask_dir")}
    if region_dir:
        folders["region mask"] = _folder(root, region_dir, "data.region_dir")
    tables = {kind: _keyed_files(folder, pair_key) for kind, folder in folders.items()}
    masks, regions = tables["mask"], tables.get("region mask")
    if not images:
        raise DataFileError(f"{image_folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    for key, path in images.items():
        for kind, table in tables.items():
            if key not in table:
                raise DataFileError(
                    f"{path}: no {kind} with the pairing key {key!r} in {folders[kind]}; masks "
                    "pair with images by file stem, or by the first group of the regex "
                    "data.pair_key (e.g. '^(\\d+)_')"
                )
    encoded, labels = [], []
    for key, path in images.items():
        mask = _read_label_image(masks[key])
        if _image_size(path) != mask.shape:
            raise DataFileError(f"{masks[key]}: mask size {mask.shape} differs from its image "
                                f"{path} ({_image_size(path)}); expected the same height, width")
        encoded.append(path.read_bytes())
        labels.append(mask)
    values = np.unique(np.concatenate([np.unique(m) for m in labels]))
    if ignore_index != 255 and set(values.tolist()) == {0, 255}:
        labels = [(m // 255).astype(np.uint8) for m in labels]  # binary 0/255 -> 0/1
    if regions is not None:
        for index, key in enumerate(images):
            region = _read_label_image(regions[key])
            if region.shape != labels[index].shape:
                raise DataFileError(f"{regions[key]}: region size {region.shape} differs from "
                                    f"its mask's {labels[index].shape}")
            labels[index] = np.where(region > 0, labels[index], VOID).astype(np.uint8)
    return encoded, labels


def read_coco_captions(path: pathlib.Path, image_dir: pathlib.Path) -> tuple[list, list]:
    """(images as encoded bytes, caption lists) from a COCO captions JSON."""
    import json

    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise DataFileError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column "
                            f"{error.colno})") from None
    except RecursionError:
        raise DataFileError(f"{path}: not a COCO captions JSON (nested too deeply)") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list)
                                             for key in ("images", "annotations")):
        raise DataFileError(f"{path}: expected a COCO captions JSON object with 'images' and "
                            "'annotations' lists")
    files = {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("id"), (int, str)) \
                or not isinstance(image.get("file_name"), str):
            raise DataFileError(f"{path}: images[{index}] needs an 'id' (a number or string) "
                                f"and a 'file_name' string; got "
                                f"{str(image)[:80]}")
        files[image["id"]] = image["file_name"]
    captions: dict = {}
    for index, note in enumerate(data["annotations"]):
        if not isinstance(note, dict) or not isinstance(note.get("caption"), str) \
                or not isinstance(note.get("image_id"), (int, str)):
            raise DataFileError(f"{path}: annotations[{index}] needs 'image_id' and a string "
                                f"'caption'; got {str(note)[:80]}")
        if note.get("image_id") not in files:
            raise DataFileError(f"{path}: annotations[{index}] names image_id="
                                f"{note.get('image_id')}, which is not in 'images'")
        if note["caption"].strip():
            captions.setdefault(note["image_id"], []).append(note["caption"].strip())
    return _caption_images(path, image_dir, [(files[i], refs) for i, refs in captions.items()])


def read_token_captions(path: pathlib.Path, image_dir: pathlib.Path) -> tuple[list, list]:
    """(images as encoded bytes, caption lists) from Flickr8k-style `image.jpg#N<TAB>caption`
    lines."""
    captions: dict[str, list[str]] = {}
    for number, line in read_lines(path):
        if not line.strip():
            continue
        name, tab, caption = line.partition("\t")
        if not tab or "#" not in name or not caption.strip():
            raise DataFileError(f"{path}:{number}: expected 'IMAGE.jpg#N<TAB>CAPTION'; got "
                                f"{line[:80]!r}")
        captions.setdefault(name.rsplit("#", 1)[0].strip(), []).append(caption.strip())
    if not captions:
        raise DataFileError(f"{path}: no captions found (expected 'IMAGE.jpg#N<TAB>CAPTION' lines)")
    return _caption_images(path, image_dir, list(captions.items()))


def _caption_images(path, image_dir, named: list) -> tuple[list, list]:
    images, references = [], []
    for name, refs in named:
        image = image_dir / name
        try:
            found = image.is_file()
            if found:
                images.append(image.read_bytes())
        except OSError as error:  # a name too long for the file system, say
            raise DataFileError(f"{path}: image {name[:80]!r} has captions but cannot be read "
                                f"({error.strerror})") from None
        if not found:
            raise DataFileError(f"{path}: image {name[:80]} has captions but is not in "
                                f"{image_dir}; set data.image_dir to the folder of the images")
        references.append(refs)
    if not images:
        raise DataFileError(f"{path}: no image with a caption")
    return images, references


def caption_image_dir(path: pathlib.Path, image_dir: str | None) -> pathlib.Path:
    """`data.image_dir`, else a guess: COCO's `annotations/captions_<split>2017*.json` ->
    `<root>/<split>2017/`; otherwise `images/`, `Flicker8k_Dataset/` or `Flickr8k_Dataset/`
    beside the file or one folder up."""
    import re

    if image_dir is not None:
        folder = pathlib.Path(image_dir).expanduser()
        if not folder.is_dir():
            raise DataFileError(f"data.image_dir={image_dir}: no such folder")
        return folder
    names = ["images", "Flicker8k_Dataset", "Flickr8k_Dataset"]
    match = re.search(r"(train|val|test)(\d{4})", path.name)
    if match:
        names.insert(0, match.group(0))
    for base in (path.parent, path.parent.parent):
        for name in names:
            if (base / name).is_dir():
                return base / name
    raise DataFileError(f"{path}: cannot find its image folder (tried {', '.join(names)} beside "
                        "it and one folder up); set data.image_dir=FOLDER")
