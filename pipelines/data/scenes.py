"""Procedural scenes of coloured shapes: one generator for the three vision tasks.

Every scene holds 1-3 non-overlapping shapes on a textured, noisy background, and carries
the targets of all three tasks at once, so classification, segmentation and captioning
train on the same pictures:

- `image`: uint8 (S, S, 3);
- `mask`: uint8 (S, S), 0 = background, `KINDS.index(kind) + 1` on each shape's pixels
  (segmentation classes: `MASK_CLASSES = ("background", *KINDS)`);
- `label`: the kind of the largest shape (classification; `KINDS` are the class names);
- `captions`: 3-5 different true sentences ("a small red circle left of a large blue
  square", "the largest shape is a blue square", ...; captioning);
- `shapes`: the `Shape` records the picture was drawn from (kind, colour, size word,
  centre, radius, pixel area), for tests and for new targets.

The label rule. One shape is "large" (radius 0.16-0.24 of the image side) and the others
are "small" (0.07-0.11), so the large one always covers the most pixels, whatever the kinds
(checked by `tests/pipelines/test_scenes.py`). Recognising a shape at any position, in any
of seven colours, under a textured background, and telling the large one from the small
ones is easy for a small CNN (>= 0.9 accuracy) and out of reach of a linear model on the
pixels (below 0.5 with six classes; chance is 1/6).

API (pure NumPy, no TensorFlow; a 64 x 64 scene takes well under a millisecond):

    from pipelines.data.scenes import make_scene, make_scenes, scene_splits, KINDS

    scene = make_scene(np.random.default_rng(0), size=64)       # one Scene
    batch = make_scenes(np.random.default_rng(0), 100, size=64)  # SceneBatch of arrays:
    batch.images (N, S, S, 3) uint8, batch.masks (N, S, S) uint8, batch.labels [N] str,
    batch.captions [N] lists of str, batch.shapes [N] lists of Shape
    splits = scene_splits(seed=42, sizes={"train": 8000, "validation": 1000, "test": 1000})
    splits["train"].images ...                                   # {split: SceneBatch}

`scene_splits` draws each split from its own generator seeded by (seed, split position),
so the same seed gives the same scenes to every task, and the first n scenes of a split do
not depend on how many are drawn (`data.limit` keeps the same examples).
"""
from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

KINDS = ("circle", "square", "triangle", "diamond", "cross", "star")
MASK_CLASSES = ("background", *KINDS)
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 20),
    "white": (240, 240, 240),
}
LARGE_RADIUS = (0.16, 0.24)  # fractions of the image side
SMALL_RADIUS = (0.07, 0.11)
_NUMBERS = {1: "one", 2: "two", 3: "three"}


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str  # one of KINDS
    colour: str  # one of COLOURS
    size: str  # "large" or "small"
    x: float  # centre, pixels from the left
    y: float  # centre, pixels from the top
    radius: float  # pixels
    area: int  # pixels it covers in the mask


@dataclasses.dataclass
class Scene:
    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) uint8, 0 = background, 1 + KINDS.index(kind)
    label: str  # kind of the largest shape
    captions: list[str]  # 3-5 true sentences
    shapes: list[Shape]  # the large shape first


@dataclasses.dataclass
class SceneBatch:
    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray  # (N, S, S) uint8
    labels: list[str]
    captions: list[list[str]]
    shapes: list[list[Shape]]

    def __len__(self) -> int:
        return len(self.labels)


# ----------------------------------------------------------------------------- drawing
@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (S, S): x grows to the right, y downwards."""
    coordinates = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(coordinates, coordinates)  # xx, yy


def _footprint(kind: str, x: float, y: float, radius: float, angle: float,
               size: int) -> np.ndarray:
    """Boolean (S, S): the pixels whose centres fall inside the shape."""
    inside = np.zeros((size, size), bool)
    # Only the window around the shape is tested: every kind fits in 1.2 * radius.
    reach = 1.2 * radius + 1
    top, bottom = max(int(y - reach), 0), min(int(np.ceil(y + reach)), size)
    left, right = max(int(x - reach), 0), min(int(np.ceil(x + reach)), size)
    xx, yy = _grid(size)
    window = (slice(top, bottom), slice(left, right))
    inside[window] = _inside(kind, xx[window] - x, yy[window] - y, radius, angle)
    return inside


def _inside(kind: str, dx: np.ndarray, dy: np.ndarray, radius: float,
            angle: float) -> np.ndarray:
    """Boolean, the shape of dx: is the offset (dx, dy) from the centre inside the shape?"""
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # rotated frame, v points down
    if kind == "circle":
        return u * u + v * v <= radius * radius
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= 1.05 * radius
    if kind == "cross":
        arm, half = 0.3 * radius, radius
        return (((np.abs(u) <= arm) & (np.abs(v) <= half))
                | ((np.abs(v) <= arm) & (np.abs(u) <= half)))
    if kind == "triangle":
        # Equilateral, apex up: inside the three edges, each at the inradius Rc / 2.
        circumradius = 1.2 * radius
        inside = np.ones_like(u, dtype=bool)
        for normal in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 - 2 * np.pi / 3):
            inside &= u * np.cos(normal) + v * np.sin(normal) <= circumradius / 2
        return inside
    if kind == "star":
        # Five points, one up. Fold the angle into [0, pi/5]: then the boundary is the
        # segment from the tip (R, 0) to the notch (r cos(pi/5), r sin(pi/5)).
        outer, inner, sector = 1.15 * radius, 0.45 * 1.15 * radius, np.pi / 5
        rho = np.hypot(u, v)
        phi = np.mod(np.arctan2(v, u) + np.pi / 2, 2 * sector)
        phi = np.where(phi > sector, 2 * sector - phi, phi)
        px, py = rho * np.cos(phi), rho * np.sin(phi)
        tip_x, notch_x, notch_y = outer, inner * np.cos(sector), inner * np.sin(sector)
        # Same side of the tip-notch line as the centre (0, 0).
        side = (notch_x - tip_x) * py - notch_y * (px - tip_x)
        return side >= 0
    raise ValueError(f"kind must be one of {KINDS}; received kind={kind!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted base colour + two or three random sinusoidal gratings, float32 (S, S, 3)."""
    xx, yy = _grid(size)
    base = (rng.uniform(70, 150) + rng.uniform(-20, 20, size=3)).astype(np.float32)
    texture = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(2, 4)):
        angle = rng.uniform(0, np.pi)
        frequency = rng.uniform(0.05, 0.6)  # radians per pixel: broad waves to fine stripes
        phase = rng.uniform(0, 2 * np.pi)
        texture += rng.uniform(6, 20) * np.cos(
            frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    return base[None, None, :] + texture[:, :, None] * tint[None, None, :]


def _place(rng, size, radius, placed) -> tuple[float, float] | None:
    """A centre that keeps the shape inside the image and clear of the placed ones."""
    bound = 1.2 * radius  # every kind fits in a circle of 1.2 radius
    for _ in range(30):
        x, y = rng.uniform(bound + 1, size - bound - 1, size=2)
        if all(np.hypot(x - s.x, y - s.y) >= bound + 1.2 * s.radius + 2 for s in placed):
            return float(x), float(y)
    return None


def make_scene(rng: np.random.Generator, size: int = 64) -> Scene:
    """One scene; a pure function of the generator's state (see the module docstring)."""
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels; received size={size}")
    image = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    colour_names = list(COLOURS)
    shapes: list[Shape] = []
    for index in range(rng.integers(1, 4)):
        size_word = "large" if index == 0 else "small"
        low, high = LARGE_RADIUS if index == 0 else SMALL_RADIUS
        radius = float(rng.uniform(low, high) * size)
        kind = KINDS[rng.integers(len(KINDS))]
        colour = colour_names[rng.integers(len(colour_names))]
        angle = rng.uniform(-0.2, 0.2)  # ~12 degrees: a square never turns into a diamond
        centre = _place(rng, size, radius, shapes)
        if centre is None:  # no room left for a small one: fewer shapes
            continue
        inside = _footprint(kind, *centre, radius, angle, size)
        # Colour with a jitter and a soft shading gradient across the shape.
        rgb = np.array(COLOURS[colour], np.float32) + rng.uniform(-20, 20, size=3)
        xx, yy = _grid(size)
        slope_x, slope_y = rng.uniform(-0.6, 0.6, size=2)
        shading = slope_x * (xx[inside] - centre[0]) + slope_y * (yy[inside] - centre[1])
        image[inside] = rgb[None, :] + shading[:, None]
        mask[inside] = KINDS.index(kind) + 1
        shapes.append(Shape(kind, colour, size_word, *centre, radius, int(inside.sum())))
    image += rng.uniform(3, 12) * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(image, mask, shapes[0].kind, _captions(rng, shapes, size), shapes)


def make_scenes(rng: np.random.Generator, count: int, size: int = 64) -> SceneBatch:
    """`count` scenes drawn one after the other from `rng`, stacked into arrays."""
    scenes = [make_scene(rng, size) for _ in range(count)]
    return SceneBatch(
        images=np.stack([s.image for s in scenes]) if scenes else np.zeros((0, size, size, 3), np.uint8),
        masks=np.stack([s.mask for s in scenes]) if scenes else np.zeros((0, size, size), np.uint8),
        labels=[s.label for s in scenes],
        captions=[s.captions for s in scenes],
        shapes=[s.shapes for s in scenes],
    )


def scene_splits(seed: int, sizes: dict[str, int], size: int = 64) -> dict[str, SceneBatch]:
    """{split: SceneBatch} with `sizes[split]` scenes each, split i drawn from
    `np.random.default_rng([seed, i])` (i = the split's position in `sizes`)."""
    return {
        split: make_scenes(np.random.default_rng([seed, offset]), count, size)
        for offset, (split, count) in enumerate(sizes.items())
    }


# ----------------------------------------------------------------------------- captions
def _where(shape: Shape, size: int) -> str:
    """'in the top left', 'in the centre', ... from the centre's third of the image."""
    row = ("top", "middle", "bottom")[min(int(3 * shape.y / size), 2)]
    column = ("left", "centre", "right")[min(int(3 * shape.x / size), 2)]
    if row == "middle" and column == "centre":
        return "in the centre"
    if row == "middle":
        return f"on the {column}"
    if column == "centre":
        return f"at the {row}"
    return f"in the {row} {column}"


def _relation(a: Shape, b: Shape) -> str:
    """Where `a` is relative to `b`, along the axis where they are further apart."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _name(shape: Shape, with_size: bool = True) -> str:
    words = [shape.size] if with_size else []
    return " ".join(["a", *words, shape.colour, shape.kind])


def _captions(rng: np.random.Generator, shapes: list[Shape], size: int) -> list[str]:
    """3-5 different true sentences about the scene, wording drawn from `rng`."""
    large, others = shapes[0], shapes[1:]
    count = len(shapes)
    options = [
        [f"{_name(large)} {_where(large, size)}",
         f"{_name(large, with_size=False)} {_where(large, size)}"],
        [f"the largest shape is {_name(large, with_size=False)}",
         f"the biggest shape is {_name(large, with_size=False)}"],
        [f"{_NUMBERS[count]} shape{'s' if count > 1 else ''} on a textured background",
         f"{_NUMBERS[count]} shape{'s' if count > 1 else ''} on a noisy background"],
    ]
    if others:
        listed = " and ".join(_name(s) for s in shapes)
        options.append([listed, f"{_NUMBERS[count]} shapes : {listed}"])
        for other in others:
            options.append([f"{_name(other)} {_relation(other, large)} {_name(large)}",
                            f"{_name(large)} {_relation(large, other)} {_name(other)}"])
    else:
        options.append([f"{_name(large)} on its own", f"a single {large.colour} {large.kind}"])
    picked = [group[rng.integers(len(group))] for group in options]
    order = rng.permutation(len(picked))
    keep = int(rng.integers(3, min(5, len(picked)) + 1))
    return [picked[i] for i in order[:keep]]


# ----------------------------------------------------------------------------- vocabulary
def parse_pairs(pairs: list[str]) -> list[tuple[str, str]]:
    """["red circle", "blue-star"] -> [("red", "circle"), ("blue", "star")]: colour-shape
    pairs of the scene vocabulary (a space, "-" or "_" between the words), or a ValueError
    that lists the valid colours and shapes."""
    parsed = []
    for pair in pairs:
        words = [w for w in re.split(r"[\s_-]+", str(pair).strip().lower()) if w]
        if len(words) != 2 or words[0] not in COLOURS or words[1] not in KINDS:
            raise ValueError(
                f"task.holdout_pairs: {pair!r} is not a colour-shape pair of the generated "
                f"scenes (write 'colour shape', e.g. 'red circle'); colours: "
                f"{', '.join(COLOURS)}; shapes: {', '.join(KINDS)}")
        parsed.append((words[0], words[1]))
    return parsed
