"""Image readers for `data=files`: one decoder for training and serving.

Images are decoded with TensorFlow's own `tf.io.decode_image` (PNG, JPEG, GIF, BMP), the
op the exported SavedModel runs, so a file gives the model the same pixels in training as
in serving. Every image becomes uint8 (H, W, 3): grayscale is repeated into three channels
and an alpha channel is dropped.
"""
from __future__ import annotations

import pathlib

import numpy as np

from pipelines.data.files import DataFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, 3); DataFileError naming `name` if undecodable."""
    import tensorflow as tf

    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        message = str(getattr(error, "message", error)).strip().splitlines()[0]
        raise DataFileError(
            f"{name}: cannot decode it as an image (expected PNG, JPEG, GIF or BMP; {message})"
        ) from None
    return image.numpy()


def read_image(path: pathlib.Path) -> np.ndarray:
    """Reads one image file as uint8 (H, W, 3); DataFileError naming the file otherwise."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as error:
        raise DataFileError(f"{path}: cannot read it ({error})") from None
    if not data:
        raise DataFileError(f"{path}: empty file (expected a PNG, JPEG, GIF or BMP image)")
    return decode_image(data, str(path))


def read_image_folder(root: pathlib.Path) -> tuple[list[np.ndarray], list[str]]:
    """A folder with one sub-folder of images per class -> (images, labels).

    The sub-folder name is the label. Files whose suffix is not an image suffix
    (`IMAGE_SUFFIXES`, any case) are skipped, hidden files too; an image that does not
    decode raises DataFileError naming the file. Sorted by class, then file name.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataFileError(
            f"{root}: not a folder; for image_classification data.train (and "
            "data.validation, data.test) name a folder with one sub-folder of images per class"
        )
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataFileError(
            f"{root}: no class sub-folders; expected {root}/<label>/<image>.png (one "
            "sub-folder of images per class)"
        )
    images, labels = [], []
    for folder in classes:
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            images.append(read_image(path))
            labels.append(folder.name)
    if not images:
        raise DataFileError(
            f"{root}: no images in its class sub-folders "
            f"({', '.join(p.name for p in classes[:5])}); expected files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}"
        )
    return images, labels
