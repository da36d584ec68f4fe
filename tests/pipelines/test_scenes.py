"""The procedural scene generator: deterministic, and its label, mask and captions agree
with the shapes it drew; the label is out of reach of a linear model on the pixels."""
import re

import numpy as np
import pytest

from pipelines.data.scenes import (
    COLOURS, KINDS, MASK_CLASSES, LARGE_RADIUS, SMALL_RADIUS, make_scene, make_scenes,
    scene_splits,
)

_NAME = re.compile(r"a (?:(large|small) )?(%s) (%s)" % ("|".join(COLOURS), "|".join(KINDS)))


def _same(a, b):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.labels == b.labels and a.captions == b.captions and a.shapes == b.shapes


def test_same_seed_same_scenes_and_prefixes_are_stable():
    _same(make_scenes(np.random.default_rng(5), 20), make_scenes(np.random.default_rng(5), 20))
    other = make_scenes(np.random.default_rng(6), 20)
    assert not np.array_equal(other.images, make_scenes(np.random.default_rng(5), 20).images)

    small = scene_splits(42, {"train": 5, "validation": 3})
    large = scene_splits(42, {"train": 12, "validation": 7})
    for split, count in (("train", 5), ("validation", 3)):
        assert small[split].images.shape == (count, 64, 64, 3) and small[split].images.dtype == np.uint8
        np.testing.assert_array_equal(small[split].images, large[split].images[:count])
        assert small[split].captions == large[split].captions[:count]
    assert not np.array_equal(large["train"].images[:3], large["validation"].images[:3])


def test_size_is_checked():
    with pytest.raises(ValueError, match="size must be >= 16 pixels; received size=8"):
        make_scene(np.random.default_rng(0), size=8)


@pytest.mark.parametrize("size", [32, 64])
def test_label_and_mask_agree_with_the_shapes(size):
    batch = make_scenes(np.random.default_rng(1), 300, size)
    assert batch.masks.shape == (300, size, size) and batch.masks.dtype == np.uint8
    assert set(batch.labels) == set(KINDS)  # every class occurs
    assert {len(s) for s in batch.shapes} == {1, 2, 3}
    for mask, label, shapes in zip(batch.masks, batch.labels, batch.shapes):
        assert set(np.unique(mask)) <= set(range(len(MASK_CLASSES)))
        large, others = shapes[0], shapes[1:]
        # The label is the kind of the shape with the most pixels, by a clear margin.
        assert label == large.kind and large.size == "large"
        assert all(large.area > other.area and other.size == "small" for other in others)
        assert LARGE_RADIUS[0] * size <= large.radius <= LARGE_RADIUS[1] * size
        assert all(SMALL_RADIUS[0] * size <= o.radius <= SMALL_RADIUS[1] * size for o in others)
        for kind_index, kind in enumerate(KINDS, start=1):
            expected = sum(s.area for s in shapes if s.kind == kind)
            assert (mask == kind_index).sum() == expected
        for shape in shapes:  # every kind covers its own centre
            assert mask[int(shape.y), int(shape.x)] == KINDS.index(shape.kind) + 1


def _relation(a, b):
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _thirds(shape, size):
    return (("top", "middle", "bottom")[min(int(3 * shape.y / size), 2)],
            ("left", "centre", "right")[min(int(3 * shape.x / size), 2)])


def test_captions_are_true_and_varied():
    batch = make_scenes(np.random.default_rng(2), 300)
    wordings = set()
    for captions, shapes in zip(batch.captions, batch.shapes):
        assert 3 <= len(captions) <= 5 and len(set(captions)) == len(captions)
        facts = {(s.size, s.colour, s.kind) for s in shapes}
        for caption in captions:
            for size_word, colour, kind in _NAME.findall(caption):
                assert any(f[1:] == (colour, kind) and size_word in ("", f[0]) for f in facts), \
                    (caption, shapes)
            relation = re.fullmatch(r"(.+) (left of|right of|above|below) (.+)", caption)
            if relation:
                firsts, seconds = ([s for s in shapes if f"a {s.size} {s.colour} {s.kind}" == side]
                                   for side in (relation[1], relation[3]))
                assert any(_relation(a, b) == relation[2] for a in firsts for b in seconds
                           if a is not b), (caption, shapes)
            count = re.match(r"(one|two|three) shapes?", caption)
            if count:
                assert ["one", "two", "three"].index(count[1]) + 1 == len(shapes)
            largest = re.fullmatch(r"the (?:largest|biggest) shape is a (\w+) (\w+)", caption)
            if largest:
                assert (largest[1], largest[2]) == (shapes[0].colour, shapes[0].kind)
            where = re.search(r"(?:in|at|on) the (top|middle|bottom)? ?(left|centre|right)?$",
                              caption)
            large = shapes[0]
            if where and caption.startswith((f"a large {large.colour} {large.kind} ",
                                             f"a {large.colour} {large.kind} ")):
                row, column = _thirds(shapes[0], 64)
                assert where[1] in (None, row) and where[2] in (None, column), (caption, shapes)
            wordings.add(re.sub(_NAME, "X", caption))
    assert len(wordings) >= 15  # varied sentence frames, not one template


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_linear_model_on_pixels_stays_near_chance():
    from sklearn.linear_model import LogisticRegression

    splits = scene_splits(0, {"train": 1200, "test": 400}, size=24)
    flat = {k: b.images.reshape(len(b), -1) / 255.0 for k, b in splits.items()}
    model = LogisticRegression(C=0.01, max_iter=60).fit(flat["train"], splits["train"].labels)
    accuracy = model.score(flat["test"], splits["test"].labels)
    assert accuracy < 0.35, accuracy  # chance is 1/6; the CNN test reaches far above
