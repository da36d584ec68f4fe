"""IDX (MNIST, Fashion-MNIST) files to the image-folder layout that `data=files` reads.

    python -m pipelines.data.idx train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz mnist/train
    python -m pipelines.data.idx t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz mnist/test

writes `OUT/<label>/<index>.png`. Plain or gzipped files; no TensorFlow needed.
"""
from __future__ import annotations

import argparse
import gzip
import pathlib

import numpy as np


def read_idx(path: str | pathlib.Path) -> np.ndarray:
    """An IDX file as an array: magic (0, 0, type 0x08 = uint8, ndim), then big-endian sizes."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an unsigned-byte IDX file (expected magic 0x0000 08 NN)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {body.size} values")
    return body.reshape(shape)


def write_folders(images: np.ndarray, labels: np.ndarray, out: str | pathlib.Path) -> int:
    """Writes each image as `out/<label>/<index>.png`; returns how many."""
    from PIL import Image

    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    out = pathlib.Path(out)
    for label in np.unique(labels):
        (out / str(label)).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(out / str(label) / f"{index:05d}.png")
    return len(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images"), parser.add_argument("labels"), parser.add_argument("out")
    args = parser.parse_args(argv)
    count = write_folders(read_idx(args.images), read_idx(args.labels), args.out)
    print(f"wrote {count} images under {args.out}")


if __name__ == "__main__":
    main()
