"""`data=files`: the user's own files in the formats of README.md.

Every reader checks the whole file before training starts and raises `DataFileError`
naming the file, the line and what was expected.
"""
from __future__ import annotations

import csv
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


class FilesSource:
    """`data=files`: reads train / validation / test paths with the task's reader."""

    def __init__(self, train: str, validation: str | None = None, test: str | None = None,
                 validation_fraction: float = 0.1, text_column: str = "text",
                 label_column: str = "label", source_lang: str = "en", target_lang: str = "de",
                 tag_scheme: str = "iob2", limit: int | None = None, seed: int = 42):
        self.paths = {"train": train, "validation": validation, "test": test}
        self.validation_fraction = validation_fraction
        self.text_column, self.label_column = text_column, label_column
        self.source_lang, self.target_lang, self.tag_scheme = source_lang, target_lang, tag_scheme
        self.limit = limit
        self.seed = seed

    def _splits(self, read) -> Splits:
        loaded = {
            split: read(_existing(path, f"data.{split}"))
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
