"""`data=files`: the user's own files in the formats of README.md.

Every reader checks the whole file before training starts and raises `DataFileError`
naming the file, the line and what was expected.
"""
from __future__ import annotations

import csv
import gzip
import pathlib

from pipelines.data.splits import Splits, hold_out, limit_splits


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
        return _read_table(path, "\t" if path.suffix.lower() == ".tsv" else ",",
                           text_column, label_column)
    texts, labels = [], []
    with open(path, encoding="utf-8", errors="strict") as handle:
        for number, line in enumerate(_lines(handle, path), start=1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                raise DataFileError(
                    f"{path}:{number}: expected 'LABEL TEXT' (a label, whitespace, the text); "
                    f"got {line.strip()[:80]!r}"
                )
            labels.append(parts[0])
            texts.append(parts[1])
    if not texts:
        raise DataFileError(f"{path}: no examples found (expected lines 'LABEL TEXT')")
    return texts, labels


def _lines(handle, path):
    try:
        yield from handle
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path}: not UTF-8 text ({error})") from None


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
    except (OSError, EOFError) as error:  # unreadable, or a broken .gz
        raise DataFileError(f"{path}: cannot read it ({error})") from None


def _read_table(path, delimiter, text_column, label_column):
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(_lines(handle, path), delimiter=delimiter)
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
            texts.append(text)
            labels.append(label.strip())
    if not texts:
        raise DataFileError(f"{path}: no rows after the header")
    return texts, labels


# ----------------------------------------------------------------------------- translation
def _is_tsv(path: str) -> bool:
    return path.lower().endswith((".tsv", ".tsv.gz"))


def read_parallel_tsv(path: pathlib.Path) -> tuple[list[str], list[str]]:
    """Reads (sources, targets) from `source<TAB>target` lines (columns after two ignored)."""
    sources, targets = [], []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) < 2 or not columns[0].strip() or not columns[1].strip():
            raise DataFileError(
                f"{path}:{number}: expected 'SOURCE<TAB>TARGET' (two non-empty tab-separated "
                f"columns); got {line[:80]!r}"
            )
        sources.append(columns[0].strip())
        targets.append(columns[1].strip())
    if not sources:
        raise DataFileError(f"{path}: no examples found (expected lines 'SOURCE<TAB>TARGET')")
    return sources, targets


def read_parallel(source_path: pathlib.Path,
                  target_path: pathlib.Path) -> tuple[list[str], list[str]]:
    """Reads two line-aligned files: line i of one translates line i of the other.

    Lines empty on both sides are skipped; an empty line on one side only is an error.
    """
    sides = [[line for _, line in read_lines(path)] for path in (source_path, target_path)]
    if len(sides[0]) != len(sides[1]):
        raise DataFileError(
            f"{source_path} has {len(sides[0])} lines but {target_path} has {len(sides[1])}; "
            "the two files must be line-aligned (line i of one translates line i of the other)"
        )
    sources, targets = [], []
    for number, (source, target) in enumerate(zip(*sides), start=1):
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
        sources.append(source)
        targets.append(target)
    if not sources:
        raise DataFileError(f"{source_path}, {target_path}: no sentences found")
    return sources, targets


def _language_file(prefix: str, language: str) -> pathlib.Path | None:
    for candidate in (f"{prefix}.{language}", f"{prefix}.{language}.gz"):
        path = pathlib.Path(candidate).expanduser()
        if path.is_file():
            return path
    return None


class FilesSource:
    """`data=files`: reads train / validation / test paths with the task's reader."""

    def __init__(self, train: str, validation: str | None = None, test: str | None = None,
                 validation_fraction: float = 0.1, text_column: str = "text",
                 label_column: str = "label", source_lang: str = "en", target_lang: str = "de",
                 tag_scheme: str = "iob2", limit: int | None = None, seed: int = 42,
                 ignore_index: int | None = None, image_dir: str | None = None,
                 mask_dir: str | None = None, region_dir: str | None = None,
                 pair_key: str | None = None):
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
        return limit_splits(Splits(**loaded), self.limit)

    def sentiment(self) -> Splits:
        return self._splits(
            lambda path: read_text_classification(path, self.text_column, self.label_column)
        )

    def translation(self) -> Splits:
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

        return self._splits(read, resolve)

    def ner(self) -> Splits:
        """token lists -> IOB2 tag lists, from CoNLL column files (`data.tag_scheme`)."""
        from pipelines.data.conll import TAG_SCHEMES, read_conll

        if self.tag_scheme not in TAG_SCHEMES:
            raise DataFileError(f"data.tag_scheme must be one of {', '.join(TAG_SCHEMES)}; "
                                f"received {self.tag_scheme!r}")
        return self._splits(lambda path: read_conll(path, self.tag_scheme))

    def image_classification(self) -> Splits:
        """uint8 images (H, W, 3) -> labels: each path is a folder with one sub-folder of
        images per class, the sub-folder name being the label (`images.read_image_folder`);
        an image that does not decode fails with its file name."""
        from pipelines.data.images import read_image_folder

        return self._splits(read_image_folder)
