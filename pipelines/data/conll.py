"""CoNLL column files for NER: one token per line, the tag in the last column.

Blank lines separate sentences, `-DOCSTART-` lines are ignored. Tags are IOB2 (every entity
starts with B-); IOB1 files (B- only between two adjacent entities of one type, as in the
original CoNLL-2003 `eng.*` files) are converted with `tag_scheme="iob1"`.
"""
from __future__ import annotations

import pathlib
import re

from pipelines.data.files import DataFileError, read_lines

_TAG = re.compile(r"^(O|[BI]-\S+)$")
TAG_SCHEMES = ("iob2", "iob1")


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 -> IOB2: an I-X that does not continue an X entity starts one (B-X).

    Valid IOB2 passes through unchanged, so applying it to IOB2 is harmless.
    """
    converted = []
    for index, tag in enumerate(tags):
        if tag.startswith("I-"):
            previous = converted[index - 1] if index else "O"
            if previous == "O" or previous[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        converted.append(tag)
    return converted


def read_conll(path: pathlib.Path,
               tag_scheme: str = "iob2") -> tuple[list[list[str]], list[list[str]]]:
    """Reads (token lists, IOB2 tag lists) from a CoNLL file (`.gz` too); see `conll_rows`."""
    sentences, all_tags = [], []
    for tokens, tags in conll_rows(path, tag_scheme):
        sentences.append(tokens)
        all_tags.append(tags)
    return sentences, all_tags


def conll_rows(path: pathlib.Path, tag_scheme: str = "iob2"):
    """Yields the (tokens, IOB2 tags) of a CoNLL file's sentences one at a time, checked.

    Raises `DataFileError` naming the file and line for a line with a single column, a token
    of invisible characters only, a tag that is not O / B-X / I-X, or, with iob2, an I-X that
    follows neither B-X nor I-X.
    """
    if tag_scheme not in TAG_SCHEMES:
        raise DataFileError(f"data.tag_scheme must be one of {', '.join(TAG_SCHEMES)}; "
                            f"received {tag_scheme!r}")
    tokens, tags, found = [], [], False

    def sentence():
        return list(tokens), iob1_to_iob2(tags) if tag_scheme == "iob1" else list(tags)

    for number, line in read_lines(path):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if tokens:
                found = True
                yield sentence()
                tokens.clear()
                tags.clear()
            continue
        if len(columns) < 2:
            raise DataFileError(
                f"{path}:{number}: expected at least two whitespace-separated columns "
                f"(TOKEN ... TAG, the tag last); got {line.strip()[:80]!r}"
            )
        if not any(character.isprintable() for character in columns[0]):
            raise DataFileError(
                f"{path}:{number}: the token {columns[0]!r} is only whitespace or invisible "
                "characters; expected a visible token in the first column"
            )
        tag = columns[-1]
        if not _TAG.match(tag):
            raise DataFileError(
                f"{path}:{number}: invalid tag {tag!r}; expected O, B-TYPE or I-TYPE "
                "(IOB2, or IOB1 with data.tag_scheme=iob1) in the last column"
            )
        if tag_scheme == "iob2" and tag.startswith("I-"):
            previous = tags[-1] if tags else "O"
            if previous == "O" or previous[2:] != tag[2:]:
                raise DataFileError(
                    f"{path}:{number}: tag {tag!r} follows {previous!r}; in IOB2 an entity "
                    f"starts with B-{tag[2:]}. If the file is IOB1, set data.tag_scheme=iob1"
                )
        tokens.append(columns[0])
        tags.append(tag)
    if tokens:
        yield sentence()
    elif not found:
        raise DataFileError(f"{path}: no sentences found (expected CoNLL lines "
                            "'TOKEN ... TAG' with blank lines between sentences)")
