"""Image readers for `data=files`: one decoder for training and serving.

Images are decoded with TensorFlow's own `tf.io.decode_image` (PNG, JPEG, GIF, BMP), the
op the exported SavedModel runs, so a file gives the model the same pixels in training as
in serving. Every image becomes uint8 (H, W, 3): grayscale is repeated into three channels
and an alpha channel is dropped.
"""
from __future__ import annotations

import pathlib

import numpy as np

import tensorflow as tf

from pipelines.data.files import IMAGE_SUFFIXES, VOID, DataFileError

__all__ = ["IMAGE_SUFFIXES", "VOID", "check_streamed_image", "decode", "decode_image",
           "decode_pixels",
           "decode_images", "image_folder_files", "load_image", "pixel_statistics", "read_image",
           "read_image_folder", "resize", "resize_image", "resize_mask"]


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, 3): TensorFlow's decoder (the one the export runs:
    PNG, JPEG, GIF, BMP), Pillow for what it cannot read (TIFF, WebP); DataFileError naming
    `name` if neither can."""
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return image.numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        message = str(getattr(error, "message", error)).strip().splitlines()[0]
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as decoded:
            return np.array(decoded.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # Pillow's errors
        raise DataFileError(
            f"{name}: cannot decode it as an image (expected PNG, JPEG, GIF, BMP or TIFF; "
            f"{message})") from None


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
    files = image_folder_files(root)
    return [read_image(path) for path, _ in files], [label for _, label in files]


def image_folder_files(root: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
    """(image file, label) of a folder with one sub-folder of images per class, as
    `read_image_folder` reads them (sorted by class, then file name), none read yet."""
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
    files = [(path, folder.name) for folder in classes for path in sorted(folder.iterdir())
             if not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataFileError(
            f"{root}: no images in its class sub-folders "
            f"({', '.join(p.name for p in classes[:5])}); expected files ending in "
            f"{', '.join(IMAGE_SUFFIXES)}"
        )
    return files


# What tf.io.decode_image reads (Pillow's format names): a streamed image is decoded in tf.data.
TF_IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "GIF", "BMP")  # MPO: a camera's multi-picture JPEG


def check_streamed_image(path: pathlib.Path) -> tuple[int, tuple[int, int]]:
    """An image of a streamed folder (`data.streaming=true`), checked by its header (Pillow)
    without decoding it: its size in bytes and its (height, width). DataFileError naming
    the file when it is empty,
    not an image, or of a format tf.data cannot decode (TIFF, WebP: read whole instead)."""
    from PIL import Image

    from pipelines.data.files import PIL_ERRORS

    try:
        size = path.stat().st_size
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
    except PIL_ERRORS + (Image.DecompressionBombError,) as error:
        raise DataFileError(f"{path}: cannot read it as an image ({error})") from None
    if not size or kind not in TF_IMAGE_FORMATS:
        raise DataFileError(
            f"{path}: a {kind or 'empty'} file; data.streaming=true decodes images in tf.data, "
            f"which reads {', '.join(TF_IMAGE_FORMATS)}: convert it, or set "
            "data.streaming=false (read whole, Pillow reads the rest)")
    return size, (height, width)


# ----------------------------------------------------------------------------- for the tasks
# Training and serving decode and resize with the same ops (bilinear with antialiasing, any
# size in, S x S out); masks use nearest neighbours (labels never blend).
def resize(images, size: int):
    """(..., H, W, 3) uint8 or float -> float32 (..., size, size, 3) in [0, 255].

    Bilinear with antialiasing (a smooth downscale), aspect ratio not kept. Training and the
    exported signature both call this, so a PNG gives the model the same pixels in both.
    """
    return tf.image.resize(tf.cast(images, tf.float32), (size, size), method="bilinear",
                           antialias=True)


def decode_pixels(image_bytes, shape: tuple | None = None):
    """One encoded JPEG/PNG/GIF/BMP (scalar string) -> uint8 (H, W, 3), in the graph;
    `shape` (H, W, 3) when every image is known to have it (checked as it decodes)."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    if shape is not None:
        return tf.ensure_shape(image, shape)
    image.set_shape([None, None, 3])
    return image


def decode(image_bytes, size: int):
    """One encoded JPEG/PNG/GIF/BMP (scalar string) -> float32 (size, size, 3), in the graph."""
    return resize(decode_pixels(image_bytes), size)


def decode_images(image_bytes, size: int):
    """Encoded strings (B,) -> float32 (B, size, size, 3) in [0, 255], in the graph."""
    return tf.map_fn(lambda data: decode(data, size), image_bytes,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))


def load_image(image) -> np.ndarray:
    """An image array (H, W), (H, W, 1|3|4), or encoded bytes -> uint8 (H, W, 3)."""
    if isinstance(image, (bytes, np.bytes_)):
        return decode_image(bytes(image))
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def resize_image(image, size: int) -> np.ndarray:
    """Any raw image (see `load_image`) -> float32 (size, size, 3), rounded."""
    image = load_image(image)
    if image.shape[:2] == (size, size):
        return image.astype(np.float32)
    return resize(image, size).numpy().round()


def resize_mask(mask, size: int) -> np.ndarray:
    """(H, W) labels, or an encoded single-channel image -> (size, size), nearest."""
    if isinstance(mask, (bytes, np.bytes_)):
        import io

        from PIL import Image

        with Image.open(io.BytesIO(mask)) as decoded:
            mask = np.array(decoded)  # palette images give their indices
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape == (size, size):
        return mask
    return tf.image.resize(mask[..., None].astype(np.int32), [size, size],
                           method="nearest").numpy()[..., 0]


def pixel_statistics(images, sample: int = 2000, seed: int = 0,
                     prepare=None) -> tuple[list, list]:
    """Per-channel mean and variance of a seeded sample of `sample` images, for the model's
    input standardisation. A sample, not the first images: folders are read class by class.
    `prepare` maps the picked images (an array or a list) to float (n, S, S, 3); by default
    they are stacked as they are (all one size)."""
    from pipelines.data.streaming import pick

    picked = np.sort(np.random.default_rng(seed).permutation(len(images))[:sample])
    chosen = images[picked] if isinstance(images, np.ndarray) else pick(images, picked)
    pixels = np.asarray(prepare(chosen) if prepare else np.stack(chosen), np.float64)
    mean, variance = pixels.mean(axis=(0, 1, 2)), pixels.var(axis=(0, 1, 2))
    return mean.tolist(), np.maximum(variance, 1e-3).tolist()
