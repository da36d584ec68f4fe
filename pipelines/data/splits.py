"""The raw splits every source returns: Python lists, before any tensor exists."""
from __future__ import annotations

import dataclasses
import random

from pipelines.data.streaming import StreamingSplit


@dataclasses.dataclass
class Splits:
    """train / validation / test, each a tuple of parallel lists (inputs, targets).

    With `data.streaming=true` train may be a `streaming.StreamingSplit`: a pair of
    columns that stay in their files (counted, iterated, read by tf.data), never lists.

    `test` may be None (evaluate on validation); `validation` is always present: sources
    hold out part of train when the user gives none.
    """

    train: tuple[list, list]  # or a StreamingSplit
    validation: tuple[list, list]
    test: tuple[list, list] | None = None

    @property
    def evaluation(self) -> tuple[list, list]:
        """The split `metrics.json` reports: test, else validation."""
        return self.test if self.test is not None else self.validation

    @property
    def evaluation_name(self) -> str:
        return "test" if self.test is not None else "validation"


def limit_splits(splits: Splits, limit: int | None, seed: int | None = None) -> Splits:
    """`data.limit`: `limit` examples of every split. With `seed` (`data.seed`) they are drawn
    at random and kept in their order: files and datasets are often sorted by label (image
    folders are read class by class), so the first `limit` could all be one class; the same
    seed gives the same subset, and a larger limit keeps a smaller one's examples. Without a
    seed (generated data, already random) the first `limit`."""
    if limit is None:
        return splits

    def draw(pair):
        if isinstance(pair, StreamingSplit):  # data.streaming=true: its first `limit`
            return pair.limited(limit)
        if pair is None or len(pair[0]) <= limit:
            return pair
        keep = limit_indices(len(pair[0]), limit, seed)
        return tuple([column[i] for i in keep] for column in pair)

    return Splits(draw(splits.train), draw(splits.validation), draw(splits.test))


def limit_indices(count: int, limit: int, seed: int | None = None) -> list[int]:
    """The sorted indices of the `limit` of `count` examples `data.limit` keeps (see
    `limit_splits`): a seeded draw, or without a seed the first `limit`."""
    order = list(range(count))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return sorted(order[:limit])


def hold_out(train: tuple[list, list], fraction: float, seed: int) -> tuple[tuple, tuple]:
    """Splits `fraction` of train off as validation, shuffled with `seed`."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.validation_fraction must be in (0, 1); received {fraction}")
    order = list(range(len(train[0])))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(len(order) * fraction))
    pick = lambda idx: tuple([column[i] for i in idx] for column in train)  # noqa: E731
    return pick(order[n_val:]), pick(order[:n_val])


