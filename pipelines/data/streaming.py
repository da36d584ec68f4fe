"""`data.streaming=true`: a training split that stays in its files, read by tf.data.

A `StreamingSplit` stands in the train slot of `Splits` where a source would put its two
lists. It is a pair of `StreamingColumn`s, so the code that unpacks a split
(`sources, targets = splits.train`) and counts it (`len(splits.train[0])`) runs unchanged,
and nothing holds the examples in Python: a column's length is counted once by the source
(a checking pass over the files, or the TFRecord manifest), iterating it streams the files,
and `pick` takes the rows a vocabulary learns on in one pass.

Training data come from `example_dataset(pair, training, seed)`, the one place where a
task's tf.data pipeline starts, for lists and streaming splits alike. A streaming split's
pipeline: its file groups (a shard, or the PREFIX.xx files of one corpus) shuffled, read
by `reader` and interleaved, examples shuffled in a bounded buffer (`data.shuffle_buffer`),
repeated. Under `multi_worker` the workers shard by file when there are at least as many
files as workers (`AutoShardPolicy.FILE`), else by example (`DATA`).

Which formats may stream is `STREAMING_FORMATS`: the tasks reading them build their
training data through `example_dataset` (translation).

TensorFlow is imported where a dataset is built, not at import.
"""
from __future__ import annotations

import itertools
import random
from typing import Callable, Iterator, Sequence

# The formats whose tasks take a StreamingSplit as their train split.
STREAMING_FORMATS = ("parallel_text",)

ROW_BATCH = 4096  # rows per tf.data batch when a split is iterated in Python


def check_streaming_format(format: str, source: str) -> None:
    """`data.streaming=true` for a format whose tasks read their train split whole: refused."""
    if format not in STREAMING_FORMATS:
        raise ValueError(
            f"data.streaming=true streams the formats {', '.join(STREAMING_FORMATS)} "
            f"(task=translation); the format {format!r} is read whole. Set "
            f"data.streaming=false (data={source})")


class StreamingSplit(tuple):
    """(inputs, targets) of a split that stays in its files.

    Args:
        files: the file groups, each a tuple of paths one `reader` call reads (a TFRecord
            shard: `(shard,)`; a parallel corpus: `(PREFIX.en, PREFIX.de)`).
        reader: `reader(*paths)` -> a `tf.data.Dataset` of (input, target) examples of one
            group, in file order (called inside tf.data: tensors in, dataset out).
        count: how many examples the files hold (the source counted them).
        shuffle_buffer: examples in the training shuffle buffer (`data.shuffle_buffer`).
        limit: keep only the first `limit` examples (`data.limit`); None: all.
        decode: `decode(batch of inputs, batch of targets)` -> Python rows, for iteration.
        python_rows: `python_rows()` -> the (input, target) rows in file order without
            tf.data (the files' own checking reader: much faster per line); None: iteration
            runs the tf.data pipeline, batched.
    """

    def __new__(cls, files: Sequence[tuple[str, ...]], reader: Callable, count: int,
                shuffle_buffer: int = 10_000, limit: int | None = None,
                decode: Callable | None = None, python_rows: Callable | None = None):
        columns = (StreamingColumn(0), StreamingColumn(1))
        split = super().__new__(cls, columns)
        for column in columns:
            column.split = split
        return split

    def __init__(self, files, reader, count, shuffle_buffer=10_000, limit=None, decode=None,
                 python_rows=None):
        if not files:
            raise ValueError("a streaming split needs at least one file")
        if shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1; received {shuffle_buffer}")
        self.files = [tuple(str(path) for path in group) for group in files]
        self.reader, self.shuffle_buffer = reader, int(shuffle_buffer)
        self.limit = limit
        self.count = int(count) if limit is None else min(int(count), int(limit))
        self.decode = decode or _decode_texts
        self.python_rows = python_rows

    def __repr__(self) -> str:
        return f"StreamingSplit({self.count} examples in {len(self.files)} file groups)"

    def limited(self, limit: int | None) -> "StreamingSplit":
        """The first `limit` examples (in file order); None: this split."""
        if limit is None or limit >= self.count:
            return self
        return StreamingSplit(self.files, self.reader, self.count, self.shuffle_buffer,
                              limit, self.decode, self.python_rows)

    def examples(self, training: bool = False, seed: int | None = None):
        """tf.data of (input, target). In order by default: one file group after another,
        the order rows are counted, sampled and limited in. For training (without a limit)
        the groups are shuffled and up to four read at a time."""
        import tensorflow as tf

        files = tf.data.Dataset.from_tensor_slices(tuple(list(c) for c in zip(*self.files)))
        if not training or self.limit is not None:
            ds = files.flat_map(self.reader)
            return ds.take(self.limit) if self.limit is not None else ds
        files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
        return files.interleave(self.reader, cycle_length=min(4, len(self.files)),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def dataset(self, training: bool, seed: int):
        """The training (or one-pass) pipeline; see the module docstring."""
        import tensorflow as tf

        ds = self.examples(training, seed)
        if training:
            ds = ds.shuffle(min(self.shuffle_buffer, max(self.count, 1)), seed=seed,
                            reshuffle_each_iteration=True).repeat()
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = shard_policy(len(self.files))
        return ds.with_options(options)

    def rows(self) -> Iterator[tuple]:
        """Python (input, target) rows in file order, streamed."""
        if self.python_rows is not None:
            yield from itertools.islice(self.python_rows(), self.limit)
            return
        for inputs, targets in self.examples().batch(ROW_BATCH).as_numpy_iterator():
            yield from zip(*self.decode(inputs, targets))


class StreamingColumn:
    """One column of a `StreamingSplit`: counted, iterated (streaming the files), picked
    from; never held as a list."""

    def __init__(self, index: int):
        self.index = index
        self.split: StreamingSplit | None = None  # set by StreamingSplit.__new__

    def __len__(self) -> int:
        return self.split.count

    def __iter__(self):
        for row in self.split.rows():
            yield row[self.index]

    def __getitem__(self, key):
        raise TypeError("a streaming column (data.streaming=true) is not indexed: iterate it, "
                        "or pick(column, indices) the rows it needs")

    def pick(self, indices: Sequence[int]) -> list:
        """The values at the sorted `indices`, in one pass over the files."""
        wanted, out = iter(indices), []
        following = next(wanted, None)
        for number, value in enumerate(self):
            if following is None:
                break
            if number == following:
                out.append(value)
                following = next(wanted, None)
        return out


def pick(column, indices: Sequence[int]) -> list:
    """`[column[i] for i in indices]` for a list, one pass over the files for a streaming
    column (`indices` sorted)."""
    if isinstance(column, StreamingColumn):
        return column.pick(indices)
    return [column[i] for i in indices]


def sample_rows(column, sample: int | None, seed: int) -> list:
    """At most `sample` values of `column` (None: all of them), drawn with `seed`, in corpus
    order: the same rows for a list and for a streaming column of the same corpus."""
    if sample is None or len(column) <= sample:
        return list(column)
    chosen = sorted(random.Random(seed).sample(range(len(column)), int(sample)))
    return pick(column, chosen)


def _decode_texts(inputs, targets) -> tuple[list, list]:
    return ([value.decode("utf-8") for value in inputs],
            [value.decode("utf-8") for value in targets])


def worker_count() -> int:
    """The workers of the cluster in TF_CONFIG (`distribute=multi_worker` sets it); 1
    without one."""
    import tensorflow as tf

    try:
        spec = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    except (ValueError, KeyError):
        return 1
    jobs = spec.as_dict()
    return max(1, sum(len(jobs.get(job, [])) for job in ("chief", "worker")))


def shard_policy(files: int, workers: int | None = None):
    """FILE when every worker gets a file, else DATA (each worker reads every file and keeps
    its share of the examples)."""
    import tensorflow as tf

    workers = worker_count() if workers is None else workers
    policy = tf.data.experimental.AutoShardPolicy
    return policy.FILE if files >= workers else policy.DATA


def example_dataset(pair, training: bool, seed: int):
    """The raw (input, target) examples of a split as tf.data: the start of a task's
    pipeline. Lists: sliced, and for training shuffled whole and repeated; a
    `StreamingSplit`: its file pipeline (`StreamingSplit.dataset`)."""
    import tensorflow as tf

    if isinstance(pair, StreamingSplit):
        return pair.dataset(training, seed)
    ds = tf.data.Dataset.from_tensor_slices(tuple(pair))
    if training:
        ds = ds.shuffle(len(pair[0]), seed=seed, reshuffle_each_iteration=True).repeat()
    return ds


# What Python's str.strip() strips, as an RE2 class (\s alone is ASCII, without \v): so the
# streamed lines equal the lines `data.files` reads whole.
_SPACE = r"[\s\x0b\x1c-\x1f\x85\p{Z}]"
_STRIP = rf"^{_SPACE}+|{_SPACE}+$"


LINE_BATCH = 1024  # lines cleaned per tf.data op


def _lines(path):
    """tf.data of batches of a UTF-8 text file's lines (`.gz` too), the byte-order mark of
    line 1 dropped, stripped as `str.strip` strips."""
    import tensorflow as tf

    compression = tf.where(tf.strings.regex_full_match(tf.strings.lower(path), r".*\.gz"),
                           "GZIP", "")
    batches = tf.data.TextLineDataset(path, compression_type=compression)
    batches = batches.batch(LINE_BATCH).enumerate()

    def clean(number, lines):
        first = tf.where(number == 0, tf.strings.regex_replace(lines[:1], "^\ufeff", ""),
                         lines[:1])
        return tf.strings.regex_replace(tf.concat([first, lines[1:]], 0), _STRIP, "")

    return batches.map(clean)


def parallel_lines(source_path, target_path):
    """`reader` of a line-aligned pair of files: (source, target), pairs empty on both sides
    skipped (`files.parallel_rows` checked the files before, so their batches align)."""
    import tensorflow as tf

    def kept(sources, targets):
        keep = tf.logical_or(tf.strings.length(sources) > 0, tf.strings.length(targets) > 0)
        return tf.boolean_mask(sources, keep), tf.boolean_mask(targets, keep)

    pairs = tf.data.Dataset.zip((_lines(source_path), _lines(target_path)))
    return pairs.map(kept).unbatch()


def parallel_tsv_lines(path):
    """`reader` of `source<TAB>target` lines (`files.parallel_tsv_rows` checked the file)."""
    import tensorflow as tf

    def columns(lines):
        lines = tf.boolean_mask(lines, tf.strings.length(lines) > 0)
        fields = tf.strings.split(lines, "\t", maxsplit=2).to_tensor(shape=[None, 3])  # (B, 3)
        return (tf.strings.regex_replace(fields[:, 0], _STRIP, ""),
                tf.strings.regex_replace(fields[:, 1], _STRIP, ""))

    return _lines(path).map(columns).unbatch()
