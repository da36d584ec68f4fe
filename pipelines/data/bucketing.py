"""Length bucketing for text (`task.length_buckets`): batches of sentences of similar length,
each batch padded only to its bucket's length.

Without buckets every batch is padded to `max_length`, so a 10-token sentence pays for 64
recurrent steps or a 64 x 64 attention map. With buckets `[16, 32, 64]` a batch holds sentences
of one bucket only and is cut to that bucket's length: the cost follows the real lengths, and
the batch shapes stay few and static (one trace, one XLA compile per bucket and batch size), as
TPUs and `jit_compile` want. Padding is masked in every text encoder, so the outputs for a
sentence do not depend on the bucket it lands in.
"""
from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf


def resolve_buckets(buckets: Sequence[int] | None, max_length: int,
                    key: str = "task.length_buckets") -> list[int] | None:
    """The bucket lengths to use: `buckets` up to `max_length`, closed by `max_length`.

    Bucket lengths must be positive and strictly increasing. Lengths at or past `max_length`
    are dropped (no example is longer than `max_length` after truncation) and `max_length`
    always closes the list, so a default such as [16, 32, 64] still fits a run with
    `task.max_length=128` (buckets 16, 32, 64, 128) or 24 (16, 24). None: no bucketing.
    """
    if buckets is None:
        return None
    buckets = list(buckets)
    if not buckets or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in buckets):
        raise ValueError(f"{key} must be a non-empty list of positive ints or null; "
                         f"received {buckets}")
    if any(b >= c for b, c in zip(buckets, buckets[1:])):
        raise ValueError(f"{key} must be strictly increasing; received {buckets}")
    return [b for b in buckets if b < max_length] + [max_length]


def bucket_by_length(dataset: tf.data.Dataset, length_fn: Callable[..., tf.Tensor],
                     buckets: Sequence[int], batch_size: int, drop_remainder: bool,
                     sequences: Sequence[bool]) -> tf.data.Dataset:
    """Groups unbatched examples by length into batches cut to their bucket's length.

    Args:
        dataset: unbatched tuples whose sequence components are padded to `buckets[-1]` along
            their first axis (the padding must trail: the cut keeps the first L steps).
        length_fn: the tuple's components -> its real length, a scalar int tensor.
        buckets: increasing bucket lengths, the last one the padded length.
        batch_size: examples per batch.
        drop_remainder: drop a bucket's last, partial batch (training: static batch size; a
            repeated stream never ends, so only validation has partial batches to keep).
        sequences: per component, whether it has the time axis to cut (ids, tags) or not
            (a sentence's label); an int caps the cut at that length (a translation's source
            and target have lengths of their own: each is cut to min(bucket, its length)).

    Returns:
        Batches (B, L_k, ...) with L_k a bucket length: each example lands in the smallest
        bucket that holds it. Batches come out in the order they fill; the examples within a
        batch keep the input order, so a seeded shuffle upstream keeps the stream
        reproducible. Every example of a finite input appears exactly once (without
        `drop_remainder`).
    """
    lengths = tf.constant(list(buckets), tf.int64)
    sequences = tuple(sequences)

    def key(*element):
        length = tf.cast(length_fn(*element), tf.int64)
        # The smallest bucket >= length; longer than the last bucket cannot happen after
        # padding to it, clamped anyway.
        index = tf.searchsorted(lengths, tf.reshape(length, [1]), side="left",
                                out_type=tf.int64)[0]
        return tf.minimum(index, tf.constant(len(buckets) - 1, tf.int64))

    def cut(bucket):
        def fn(*batch):
            length = lengths[bucket]
            return tuple(x if cap is False else
                         x[:, :length] if cap is True else x[:, :tf.minimum(length, cap)]
                         for x, cap in zip(batch, sequences))
        return fn

    def reduce(bucket, window):
        return window.batch(batch_size, drop_remainder=drop_remainder).map(cut(bucket))

    return dataset.group_by_window(key, reduce, window_size=batch_size)
