"""Fuzzed user files (issue 19): every `data=files` reader, given a mutated copy of a valid
small file, either parses cleanly (aligned, non-empty examples) or raises `DataFileError`
naming the file (and the line, where the file has lines); never another exception, never a
hang.

Mutations: truncation at a random offset, random or chosen bytes inserted / overwritten /
deleted, re-encoding (latin-1, cp1252, UTF-16, UTF-32), a field cut off a line, a huge line,
NUL bytes, a UTF-8 BOM, CRLF or CR line ends, an empty file; for images also garbage bytes,
wrong-size, colour, palette, 16-bit and 1-bit masks.

The default suite runs FAST examples per reader, derandomised; `-m slow` runs SLOW random
examples per reader and prints how many parsed and how many were refused (`-s` shows it;
docs/robustness.md, "Fuzzed inputs").
"""
from __future__ import annotations

import codecs
import collections
import contextlib
import datetime
import gzip
import io
import json
import pathlib
import re
import signal
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines.data.conll import TAG_SCHEMES, read_conll
from pipelines.data.files import (DataFileError, read_coco_captions, read_parallel,
                                  read_parallel_tsv, read_segmentation, read_text_classification,
                                  read_token_captions)

FAST, SLOW = 100, 1000
HANG_SECONDS = 30  # a reader still busy after this long is a hang
_COMMON = dict(deadline=datetime.timedelta(seconds=10), database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FAST_SETTINGS = settings(max_examples=FAST, derandomize=True, **_COMMON)
SLOW_SETTINGS = settings(max_examples=SLOW, **_COMMON)

OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


# ----------------------------------------------------------------------------- mutations
# Bytes that mean something to one of the formats, and bytes that break UTF-8.
PIECES = [b"\t", b"\n", b"\r", b"\r\n", b"\n\n", b" ", b'"', b",", b"#", b"#0\t", b"\x00",
          codecs.BOM_UTF8, codecs.BOM_UTF16_LE, b"\xff", b"\xc3", b"\xe9", b"\x80",
          "\u3000".encode(), "\u200b".encode(), "\x85".encode(), "\u2028".encode(),
          "\x1c".encode(), "\xa0".encode(), b"-DOCSTART-", b"B-", b"I-", b"O", b"I-PER",
          b"B-LOC", b"E-PER", b"{", b"}", b"[", b"]", b"null", b"1e999", b":", b'"image_id"',
          b'"caption"', b'"images"', b"\\", b'"\\ud800"', b".jpg", b"/", b"..", b"a" * 300,
          b"[" * 5000]
PIECE = st.one_of(st.sampled_from(PIECES), st.binary(min_size=1, max_size=16),
                  st.text(min_size=1, max_size=8).map(str.encode))
ENCODINGS = ["latin-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be", "utf-32"]
BYTE_MUTATIONS = ["truncate", "insert", "overwrite", "delete", "encoding", "bom", "crlf", "cr",
                  "huge_line", "nul", "empty", "cut_field", "duplicate_line", "drop_line"]


def _mutate_bytes(data, raw: bytes) -> tuple[str, bytes]:
    kind = data.draw(st.sampled_from(BYTE_MUTATIONS), label="mutation")
    at = data.draw(st.integers(0, len(raw)), label="offset")
    lines = raw.split(b"\n")
    line = data.draw(st.integers(0, len(lines) - 1), label="line")
    if kind == "truncate":
        return kind, raw[:at]
    if kind in ("insert", "overwrite"):
        piece = data.draw(PIECE, label="piece")
        return kind, raw[:at] + piece + raw[at + (len(piece) if kind == "overwrite" else 0):]
    if kind == "delete":
        return kind, raw[:at] + raw[at + data.draw(st.integers(1, 40)):]
    if kind == "encoding":
        encoding = data.draw(st.sampled_from(ENCODINGS), label="encoding")
        return f"{kind} {encoding}", raw.decode("utf-8", "replace").encode(encoding, "replace")
    if kind == "bom":
        return kind, codecs.BOM_UTF8 + raw
    if kind == "crlf":
        return kind, raw.replace(b"\n", b"\r\n")
    if kind == "cr":
        return kind, raw.replace(b"\n", b"\r")
    if kind == "huge_line":
        unit = data.draw(st.sampled_from([b"x", b"word ", b"\t", b"#"]), label="huge line of")
        return kind, raw[:at] + unit * 300_000 + raw[at:]
    if kind == "nul":
        return kind, raw[:at] + b"\x00" * data.draw(st.integers(1, 4)) + raw[at:]
    if kind == "empty":
        return kind, b""
    if kind == "cut_field":  # a line loses everything from one of its separators on
        cuts = [m.start() for m in re.finditer(rb"[\t, :#]", lines[line])]
        if cuts:
            lines[line] = lines[line][:data.draw(st.sampled_from(cuts))]
    elif kind == "duplicate_line":
        lines.insert(line, lines[line])
    elif kind == "drop_line":
        del lines[line]
    return kind, b"\n".join(lines)


def _mutate_file(data, path: pathlib.Path) -> list[str]:
    """Applies 1-3 byte mutations to `path` in place; returns their names."""
    raw, applied = path.read_bytes(), []
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        kind, raw = _mutate_bytes(data, raw)
        applied.append(kind)
    path.write_bytes(raw)
    return applied


# ----------------------------------------------------------------------------- the property
@contextlib.contextmanager
def _hang_guard(seconds: int = HANG_SECONDS):
    def fail(signum, frame):
        raise TimeoutError(f"reader still busy after {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _line_count(path: pathlib.Path) -> int:
    """Lines of `path` by any line end (\n, \r, \r\n)."""
    raw = path.read_bytes() if path.is_file() else b""
    return max(raw.count(b"\n"), len(raw.splitlines())) + 1


def _check(reader: str, read, paths: list[pathlib.Path], sane, lined: bool = True):
    """Runs `read()`: a clean parse passes `sane`, a refusal is a DataFileError naming one of
    `paths` (a line number, when given, exists in that file; a decoding error has one)."""
    try:
        with _hang_guard():
            result = read()
    except DataFileError as error:
        message = str(error)
    except Exception:
        OUTCOMES[reader]["crash"] += 1
        raise
    else:
        sane(result)
        OUTCOMES[reader]["clean parse"] += 1
        return
    named = [p for p in paths if str(p) in message]
    assert named, f"the error names none of the files: {message[:300]}"
    for path in named:
        if path.suffix == ".gz":  # lines of a corrupted stream cannot be counted from outside
            continue
        for number in re.findall(rf"{re.escape(str(path))}:(\d+)", message):
            assert 1 <= int(number) <= _line_count(path), f"no line {number}: {message[:300]}"
    if lined and re.search(r"not UTF-8|not valid JSON", message):
        assert re.search(r":\d+: ", message), f"a decoding error without a line: {message[:300]}"
    OUTCOMES[reader]["clean error"] += 1


def _strings(values, what):
    assert values and all(isinstance(v, str) and v.strip() == v and v for v in values), \
        f"{what} must be non-empty stripped strings: {values[:5]!r}"


# ----------------------------------------------------------------------------- text readers
SENTIMENT_TXT = "pos a fine film, très bien\n\nneg a dull , slow film\npos Größe matters\n"
SENTIMENT_CSV = 'text,label\n"good, really ü",pos\nbad,neg\n"two\nlines",pos\n'
SENTIMENT_TSV = "label\tsentence\t\n1\tgood ü\tx\n0\tbad\ty\n"
PARALLEL = [("a small house", "ein kleines Haus"), ("the café is open", "das Café ist offen"),
            ("Größe", "size")]
CONLL = ("-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\nGerman JJ B-MISC\n\n"
         "Peter NNP B-PER\nBlackburn NNP I-PER\n\nZürich NNP B-LOC\n")


def _sane_classification(result):
    texts, labels = result
    assert len(texts) == len(labels) > 0 and all(isinstance(t, str) for t in texts)
    _strings(labels, "labels")


def _sane_parallel(result):
    sources, targets = result
    assert len(sources) == len(targets) > 0
    _strings(sources, "sources"), _strings(targets, "targets")


def _sane_conll(result):
    sentences, tags = result
    assert len(sentences) == len(tags) > 0
    for tokens, sentence_tags in zip(sentences, tags):
        assert len(tokens) == len(sentence_tags) > 0
        _strings(tokens, "tokens")
        assert all(not re.search(r"\s", t) for t in tokens), tokens
        previous = "O"
        for tag in sentence_tags:
            assert re.fullmatch(r"O|[BI]-\S+", tag), tag
            assert not tag.startswith("I-") or previous[2:] == tag[2:], sentence_tags  # IOB2
            previous = tag


def _text_case(kind: str, folder: pathlib.Path, scheme: str = "iob2"):
    """(read, paths, sanity) for a valid file (or two) of reader `kind` in `folder`."""
    if kind in ("txt", "csv", "tsv"):
        path = folder / f"train.{kind}"
        path.write_text({"txt": SENTIMENT_TXT, "csv": SENTIMENT_CSV, "tsv": SENTIMENT_TSV}[kind],
                        encoding="utf-8")
        column = "sentence" if kind == "tsv" else "text"
        return (lambda: read_text_classification(path, text_column=column), [path],
                _sane_classification)
    if kind == "parallel_tsv":
        path = folder / "train.tsv"
        path.write_text("".join(f"{s}\t{t}\n" for s, t in PARALLEL), encoding="utf-8")
        return lambda: read_parallel_tsv(path), [path], _sane_parallel
    if kind in ("parallel", "parallel_gz"):
        suffix = ".gz" if kind == "parallel_gz" else ""
        paths = [folder / f"train.en{suffix}", folder / f"train.de{suffix}"]
        for path, side in zip(paths, zip(*PARALLEL)):
            text = "".join(f"{line}\n" for line in side).encode()
            path.write_bytes(gzip.compress(text, mtime=0) if suffix else text)
        return lambda: read_parallel(*paths), paths, _sane_parallel
    if kind == "conll":
        path = folder / "train.conll"
        path.write_text(CONLL, encoding="utf-8")
        return lambda: read_conll(path, scheme), [path], _sane_conll
    raise AssertionError(kind)


TEXT_READERS = ["txt", "csv", "tsv", "parallel_tsv", "parallel", "parallel_gz", "conll"]


def _fuzz_text(kind, data):
    with tempfile.TemporaryDirectory() as name:
        folder = pathlib.Path(name)
        scheme = data.draw(st.sampled_from(TAG_SCHEMES), label="tag_scheme")
        read, paths, sane = _text_case(kind, folder, scheme)
        target, lined = data.draw(st.sampled_from(paths), label="file"), True
        if kind == "parallel_gz" and data.draw(st.booleans(), label="mutate the text inside"):
            plain = folder / "plain"
            plain.write_bytes(gzip.decompress(target.read_bytes()))
            _mutate_file(data, plain)
            target.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
        else:
            _mutate_file(data, target)
            lined = kind != "parallel_gz"  # a broken .gz stream has no line
        _check(kind, read, paths, sane, lined)


@pytest.mark.parametrize("kind", TEXT_READERS)
@FAST_SETTINGS
@given(data=st.data())
def test_fuzzed_text_file_parses_or_names_itself(kind, data):
    _fuzz_text(kind, data)


@pytest.mark.slow
@pytest.mark.parametrize("kind", TEXT_READERS)
@SLOW_SETTINGS
@given(data=st.data())
def test_fuzzed_text_file_parses_or_names_itself_many(kind, data):
    _fuzz_text(kind, data)


@pytest.mark.parametrize("kind", ["txt", "csv", "tsv", "parallel_tsv", "parallel", "conll"])
@pytest.mark.parametrize("mutation", ["bom", "crlf"])
def test_bom_and_crlf_read_like_the_plain_file(tmp_path, kind, mutation):
    """Windows files (a UTF-8 BOM, CRLF line ends) give the same examples."""
    read, paths, _ = _text_case(kind, tmp_path)
    expected = read()
    for path in paths:
        raw = path.read_bytes()
        path.write_bytes(codecs.BOM_UTF8 + raw if mutation == "bom"
                         else raw.replace(b"\n", b"\r\n"))
    first, second = read()
    if kind == "csv":  # a quoted field keeps its line ends
        first = [text.replace("\r\n", "\n") for text in first]
    assert (first, second) == expected


@pytest.mark.parametrize("kind,raw,message", [
    ("txt", "pos fine\nneg caf\xe9\n".encode("latin-1"), r"train.txt:2: not UTF-8 text"),
    ("csv", 'text,label\nfine,pos\n"caf\xe9",neg\n'.encode("cp1252"), r"train.csv:3: not UTF-8"),
    ("csv", "text,label\nfine,pos\n".encode("utf-16"), r"train.csv:1: not UTF-8 text"),
    ("csv", b"text,label\n" + b"x" * 200_000 + b",pos\n", r"train.csv:2: "),
    ("conll", b"EU B-ORG\n\xe2\x80\x8b O\n", r"train.conll:2: .*token"),
    ("conll", b"EU B-ORG\nrejects S-PER\n", r"train.conll:2: invalid tag 'S-PER'"),
])
def test_broken_text_names_file_and_line(tmp_path, kind, raw, message):
    path = tmp_path / f"train.{kind}"
    path.write_bytes(raw)
    read = read_conll if kind == "conll" else read_text_classification
    with pytest.raises(DataFileError, match=message):
        read(path)


# ----------------------------------------------------------------------------- caption files
def _sane_captions(result):
    images, references = result
    assert len(images) == len(references) > 0
    assert all(isinstance(image, bytes) for image in images)
    for refs in references:
        _strings(refs, "captions")


def _fuzz_captions(kind, data):
    with tempfile.TemporaryDirectory() as name:
        folder = pathlib.Path(name)
        images = folder / "images"
        images.mkdir()
        for index in range(3):
            (images / f"{index}.jpg").write_bytes(b"\xff\xd8 not decoded by the reader")
        if kind == "coco":
            path = folder / "captions.json"
            path.write_text(json.dumps({
                "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(3)],
                "annotations": [{"image_id": i % 3, "id": i, "caption": f"a dog {i} à"}
                                for i in range(5)]}, indent=1, ensure_ascii=False),
                encoding="utf-8")
            read = lambda: read_coco_captions(path, images)  # noqa: E731
        else:
            path = folder / "captions.token"
            path.write_text("".join(f"{i % 3}.jpg#{i // 3}\ta dog {i} à\n" for i in range(5)),
                            encoding="utf-8")
            read = lambda: read_token_captions(path, images)  # noqa: E731
        _mutate_file(data, path)
        _check(kind, read, [path, images], _sane_captions)


@pytest.mark.parametrize("kind", ["coco", "tokens"])
@FAST_SETTINGS
@given(data=st.data())
def test_fuzzed_caption_file_parses_or_names_itself(kind, data):
    _fuzz_captions(kind, data)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["coco", "tokens"])
@SLOW_SETTINGS
@given(data=st.data())
def test_fuzzed_caption_file_parses_or_names_itself_many(kind, data):
    _fuzz_captions(kind, data)


@pytest.mark.parametrize("kind,raw,message", [
    ("coco", b"[" * 5000, r"captions.json: not a COCO captions JSON \(nested too deeply\)"),
    ("coco", b'{"images": [],\n "annotations": [}', r"captions.json:2: not valid JSON"),
    ("coco", b'{"images": 3, "annotations": []}', r"captions.json: expected a COCO captions JSON"),
    ("coco", b'{"images": [{"id": [1], "file_name": "a.jpg"}], "annotations": []}',
     r"captions.json: images\[0\] needs an 'id'"),
    ("coco", b'{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": '
             b'[{"image_id": {}, "caption": "a dog"}]}', r"captions.json: annotations\[0\] needs"),
    ("tokens", b"x" * 300 + b".jpg#0\ta dog\n", r"captions.token: image 'x+' has captions but "
                                                 r"cannot be read \(File name too long\)"),
    ("tokens", b"a\x00.jpg#0\ta dog\n", r"captions.token: image a\x00.jpg has captions but is not"),
])
def test_broken_captions_name_the_file(tmp_path, kind, raw, message):
    path = tmp_path / ("captions.json" if kind == "coco" else "captions.token")
    path.write_bytes(raw)
    read = read_coco_captions if kind == "coco" else read_token_captions
    with pytest.raises(DataFileError, match=message):
        read(path, tmp_path)


# ----------------------------------------------------------------------------- image folders
def _encoded(array, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _image_bytes(rng, fmt: str, size=(6, 5)) -> bytes:
    return _encoded(rng.integers(0, 255, (*size, 3), dtype=np.uint8), fmt)


IMAGE_MUTATIONS = ["bytes", "garbage", "empty", "other_format"]


def _mutate_image(data, path: pathlib.Path, rng) -> list[str]:
    kind = data.draw(st.sampled_from(IMAGE_MUTATIONS), label="image mutation")
    if kind == "bytes":
        return _mutate_file(data, path)
    if kind == "garbage":
        path.write_bytes(data.draw(st.binary(min_size=1, max_size=64), label="garbage"))
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # valid bytes of another format under this name
        fmt = data.draw(st.sampled_from(["PNG", "GIF", "BMP", "TIFF"]), label="format")
        path.write_bytes(_image_bytes(rng, fmt))
    return [kind]


def _fuzz_image_folder(data):
    from pipelines.data.images import read_image_folder

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as name:
        root = pathlib.Path(name)
        files = []
        for label, fmt in (("cat", "PNG"), ("dog", "JPEG"), ("emu", "BMP"), ("gnu", "GIF")):
            (root / label).mkdir()
            for index in range(2):
                files.append(root / label / f"{index}.{fmt.lower()}")
                files[-1].write_bytes(_image_bytes(rng, fmt))
        _mutate_image(data, data.draw(st.sampled_from(files), label="file"), rng)

        def sane(result):
            images, labels = result
            assert len(images) == len(labels) == len(files)
            assert all(i.dtype == np.uint8 and i.ndim == 3 and i.shape[-1] == 3 for i in images)

        _check("image_folder", lambda: read_image_folder(root), files, sane, lined=False)


@pytest.fixture(scope="module")
def warm_decoder():
    """The first TF decode pays for the runtime; keep it out of the per-example deadline."""
    from pipelines.data.images import decode_image

    decode_image(_image_bytes(np.random.default_rng(0), "PNG"))


@FAST_SETTINGS
@given(data=st.data())
def test_fuzzed_image_folder_reads_or_names_the_image(warm_decoder, data):
    _fuzz_image_folder(data)


@pytest.mark.slow
@SLOW_SETTINGS
@given(data=st.data())
def test_fuzzed_image_folder_reads_or_names_the_image_many(warm_decoder, data):
    _fuzz_image_folder(data)


MASK_MUTATIONS = ["wrong_size", "colour", "palette", "16bit", "1bit", "rgba", "grey_rgb",
                  "out_of_range"]


def _bad_mask(data, kind: str, mask: np.ndarray) -> bytes:
    if kind == "wrong_size":
        return _encoded(np.zeros((mask.shape[0] + data.draw(st.integers(-3, 3).filter(bool)),
                                  mask.shape[1]), np.uint8), "PNG")
    if kind == "colour":
        return _encoded(np.stack([mask, mask, 255 - mask], -1), "PNG")
    if kind == "grey_rgb":
        return _encoded(np.stack([mask] * 3, -1), "PNG")
    if kind == "rgba":
        return _encoded(mask, "PNG", "RGBA")
    if kind == "palette":
        return _encoded(mask, "PNG", "P")
    if kind == "1bit":
        return _encoded(mask, "PNG", "1")
    if kind == "16bit":
        return _encoded(mask.astype(np.uint16), "PNG")
    return _encoded(mask.astype(np.int32) * 300, "TIFF")  # out_of_range: 0 and 300


def _fuzz_segmentation(data):
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as name:
        root = pathlib.Path(name)
        (root / "images").mkdir(), (root / "masks").mkdir(), (root / "fov").mkdir()
        images, masks, regions = [], [], []
        for index, fmt in enumerate(["PNG", "JPEG", "TIFF"]):
            images.append(root / "images" / f"{index}_img.{fmt.lower()}")
            images[-1].write_bytes(_image_bytes(rng, fmt, (6, 5)))
            mask = rng.choice(np.array([0, 255], np.uint8), (6, 5))
            masks.append(root / "masks" / f"{index}_mask.png")
            masks[-1].write_bytes(_encoded(mask, "PNG"))
            regions.append(root / "fov" / f"{index}_fov.gif")
            regions[-1].write_bytes(_encoded(np.full((6, 5), 255, np.uint8), "GIF"))
        use_region = data.draw(st.booleans(), label="region masks")
        target = data.draw(st.sampled_from(images + masks + (regions if use_region else [])),
                           label="file")
        if target.parent.name != "images" and data.draw(st.booleans(), label="bad mask"):
            kind = data.draw(st.sampled_from(MASK_MUTATIONS), label="mask mutation")
            labels = rng.choice(np.array([0, 1], np.uint8), (6, 5))
            target.write_bytes(_bad_mask(data, kind, labels))
        else:
            _mutate_image(data, target, rng)

        def sane(result):
            encoded, labels = result
            assert len(encoded) == len(labels) == len(images)
            assert all(isinstance(e, bytes) for e in encoded)
            assert all(m.dtype == np.uint8 and m.shape == (6, 5) for m in labels)

        _check("segmentation", lambda: read_segmentation(
            root, mask_dir="masks", pair_key=r"^(\d+)_", region_dir="fov" if use_region else None),
            images + masks + regions + [root / "images", root / "masks", root / "fov"], sane,
            lined=False)


def test_broken_png_mask_names_the_mask(tmp_path):
    """Pillow raises SyntaxError for a broken PNG chunk and DecompressionBombError for a
    header whose size is absurd; both name the mask."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_encoded(np.zeros((6, 5, 3), np.uint8), "PNG"))
    mask = _encoded(np.zeros((6, 5), np.uint8), "PNG")
    data = mask.index(b"IDAT")
    for broken in (mask[:data - 4] + b"\x00" * 4 + mask[data:],  # IDAT claims 0 bytes
                   mask[:16] + (60000).to_bytes(4, "big") * 2 + mask[24:]):  # 60000 x 60000
        (tmp_path / "masks" / "a.png").write_bytes(broken)
        with pytest.raises(DataFileError, match=r"masks/a.png: cannot read it as an image"):
            read_segmentation(tmp_path)


@FAST_SETTINGS
@given(data=st.data())
def test_fuzzed_image_and_mask_folders_read_or_name_the_file(data):
    _fuzz_segmentation(data)


@pytest.mark.slow
@SLOW_SETTINGS
@given(data=st.data())
def test_fuzzed_image_and_mask_folders_read_or_name_the_file_many(data):
    _fuzz_segmentation(data)


@pytest.fixture(scope="module", autouse=True)
def outcome_table():
    """Prints, per reader, the fuzzed inputs tried and how each ended (`pytest -s`)."""
    yield
    if OUTCOMES:
        print("\nreader         tried  clean parses  clean errors  crashes")
        for reader, counts in OUTCOMES.items():
            tried = counts["clean parse"] + counts["clean error"] + counts["crash"]
            print(f"{reader:<14} {tried:>5}  {counts['clean parse']:>12}  "
                  f"{counts['clean error']:>12}  {counts['crash']:>7}")
