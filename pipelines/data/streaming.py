"""`data.streaming=true`: a training split that stays in its files, read by tf.data.

A `StreamingSplit` stands in the train slot of `Splits` where a source would put its two
lists. It is a pair of `StreamingColumn`s, so the code that unpacks a split
(`sources, targets = splits.train`) and counts it (`len(splits.train[0])`) runs unchanged,
and nothing holds the examples in Python: a column's length is counted once by the source
(a checking pass over the files, or the TFRecord manifest), iterating it streams the files,
`pick` takes the rows a vocabulary learns on in one pass, and `text_batches` gives a column
to a vocabulary learner as tf.data.

Training data come from `example_dataset(pair, training, seed)`, the one place where a
task's tf.data pipeline starts, for lists and streaming splits alike. A streaming split's
pipeline: its file groups (a shard, or the PREFIX.xx files of one corpus) shuffled, read
by `reader` and interleaved, examples shuffled in a bounded buffer (`data.shuffle_buffer`),
repeated. A task whose examples span rows (language modeling's windows of a token stream)
builds them per file group (`per_group`), before the interleave. Under `multi_worker` the
training split shards itself, before the task's steps: each worker reads its own file
groups when there are at least as many as workers (and no `data.limit`), else every file
and its share of the examples; tf.data's auto-shard rewrite is turned off for it (its FILE
policy cannot walk through length bucketing's `group_by_window`). A Python reader
(`python_reader`) always shards by example. Evaluation splits keep the DATA rewrite.

The readers here turn files into the examples the whole-file readers of `files` and `conll`
give, line for line (the source's checking pass has refused what they would read
differently): `parallel_lines`, `parallel_tsv_lines` (parallel_text), `labelled_lines`
(labelled_text `LABEL TEXT` lines), `conll_sentences` (conll), `document_lines`
(text_lines), `image_file` (labelled_images: the shuffled list of an image folder's files,
each read whole by tf.data and decoded by the task); csv/tsv tables go through the csv
module (`python_reader`).

Which formats may stream is `STREAMING_FORMATS`: the tasks reading them build their
training data through `example_dataset`.

TensorFlow is imported where a dataset is built, not at import.
"""
from __future__ import annotations

import itertools
import logging
import random
from typing import Callable, Iterator, Sequence

log = logging.getLogger(__name__)

# The formats whose tasks take a StreamingSplit as their train split, and the tasks.
STREAMING_FORMATS = ("parallel_text", "labelled_text", "conll", "text_lines", "labelled_images")
STREAMING_TASKS = ("translation, sentiment, ner, language_modeling, masked_lm, "
                   "image_classification")

ROW_BATCH = 4096  # rows per tf.data batch when a split is iterated in Python


def check_streaming_format(format: str, source: str) -> None:
    """`data.streaming=true` for a format whose tasks read their train split whole: refused."""
    if format not in STREAMING_FORMATS:
        raise ValueError(
            f"data.streaming=true streams the formats {', '.join(STREAMING_FORMATS)} "
            f"(task={STREAMING_TASKS}); the format {format!r} is read whole. Set "
            f"data.streaming=false (data={source})")


def choose_streaming(format: str, size: int, threshold_mb: float, where: str,
                     can_stream: bool = True) -> bool:
    """`data.streaming=auto`: stream the training split of `size` bytes (`where` names it)
    when it is at least `data.streaming_threshold_mb` and its format streams; logged."""
    megabytes = f"{size / 1e6:.1f}" if size >= 1e5 else f"{size / 1e6:.4f}"
    if size / 1e6 < threshold_mb:
        log.info("data.streaming=auto: %s is %s MB, under data.streaming_threshold_mb=%g: "
                 "read whole", where, megabytes, threshold_mb)
        return False
    if format not in STREAMING_FORMATS:
        log.warning("data.streaming=auto: %s is %s MB, but the format %s is read whole "
                    "(streamed formats: %s)", where, megabytes, format,
                    ", ".join(STREAMING_FORMATS))
        return False
    if not can_stream:
        log.warning("data.streaming=auto: %s is %s MB, but without data.validation the "
                    "validation split is held out of it, so it is read whole; give "
                    "data.validation=PATH to stream it", where, megabytes)
        return False
    log.info("data.streaming=auto: %s is %s MB >= data.streaming_threshold_mb=%g: streamed "
             "from its files (data.streaming=true)", where, megabytes, threshold_mb)
    return True


def check_one_batch(split, batch_size: int) -> None:
    """A training split with fewer examples than one global batch (`trainer.batch_size`,
    across every replica and worker): refused before anything trains, naming its files."""
    count = len(split[0])
    if count >= batch_size:
        return
    where = f"{split.where} (streamed): " if isinstance(split, StreamingSplit) else ""
    raise ValueError(
        f"{where}trainer.batch_size={batch_size} is larger than the training split ({count} "
        f"examples): one global batch (all replicas and workers together) needs "
        f"{batch_size}. Give more training data or a smaller trainer.batch_size")


class StreamingSplit(tuple):
    """(inputs, targets) of a split that stays in its files.

    Args:
        files: the file groups, each a tuple one `reader` call reads: paths, and values
            that go with them (a TFRecord shard: `(shard,)`; a parallel corpus:
            `(PREFIX.en, PREFIX.de)`; a text file: `(path, its first document id)`).
        reader: `reader(*group)` -> a `tf.data.Dataset` of (input, target) examples of one
            group, in file order (called inside tf.data: tensors in, dataset out).
        count: how many examples the files hold (the source counted them).
        shuffle_buffer: examples in the training shuffle buffer (`data.shuffle_buffer`).
        limit: keep only the first `limit` examples (`data.limit`); None: all.
        python_rows: `python_rows()` -> the (input, target) rows in file order without
            tf.data (the files' own checking reader: much faster per row); None: iteration
            runs the tf.data pipeline.
        shardable: whether `reader` can be sharded by file (its files are read by
            TextLineDataset or TFRecordDataset); False (a Python reader): by example.
        where: the files, as an error message names them (`data.train=PATH`).
        row: `row(i, column)` -> that value of example i without a pass over the files,
            for a split of one file per example (an image folder: a label, or one file's
            bytes); None: iterating and picking stream the files.
        per_file: `reader(*group)` returns the group's one example (tensors), not a
            dataset: the groups are then read by a parallel `map` (an image folder: one
            image per file), not interleaved one single-example dataset at a time.
        shape: the shape every input has when the source knows it is one (an image folder
            of one image size: (H, W, 3)), so that a task may batch before resizing; None:
            inputs may differ.
    """

    def __new__(cls, files: Sequence[tuple], reader: Callable, count: int,
                shuffle_buffer: int = 10_000, limit: int | None = None,
                python_rows: Callable | None = None, shardable: bool = True,
                where: str | None = None, row: Callable | None = None,
                per_file: bool = False, shape: tuple | None = None):
        columns = (StreamingColumn(0), StreamingColumn(1))
        split = super().__new__(cls, columns)
        for column in columns:
            column.split = split
        return split

    def __init__(self, files, reader, count, shuffle_buffer=10_000, limit=None,
                 python_rows=None, shardable=True, where=None, row=None, per_file=False,
                 shape=None):
        if not files:
            raise ValueError("a streaming split needs at least one file")
        if shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1; received {shuffle_buffer}")
        self.files = [tuple(value if isinstance(value, int) else str(value) for value in group)
                      for group in files]
        self.reader, self.shuffle_buffer = reader, int(shuffle_buffer)
        self.limit = limit
        self.count = int(count) if limit is None else min(int(count), int(limit))
        self.python_rows, self.shardable, self.row = python_rows, shardable, row
        self.per_file, self.shape = per_file, shape
        self.where = where or ", ".join(str(value) for value in self.files[0]
                                        if not isinstance(value, int))

    def __repr__(self) -> str:
        return f"StreamingSplit({self.count} examples in {len(self.files)} file groups)"

    def limited(self, limit: int | None) -> "StreamingSplit":
        """The first `limit` examples (in file order); None: this split."""
        if limit is None or limit >= self.count:
            return self
        return StreamingSplit(self.files, self.reader, self.count, self.shuffle_buffer,
                              limit, self.python_rows, self.shardable, self.where, self.row,
                              self.per_file, self.shape)

    def examples(self, training: bool = False, seed: int | None = None,
                 per_group: Callable | None = None, shard: tuple[int, int] | None = None):
        """tf.data of (input, target). In order by default: one file group after another,
        the order rows are counted, sampled and limited in. For training (without a limit)
        the groups are shuffled and up to four read at a time. `per_group(examples)` -> the
        dataset a task builds of one group's examples (of all of them with a limit).
        `shard=(workers, index)`: only every workers-th file group, from the index-th."""
        import tensorflow as tf

        files = tf.data.Dataset.from_tensor_slices(tuple(list(c) for c in zip(*self.files)))
        if shard is not None:
            files = files.shard(*shard)
        reader = self.reader
        if self.per_file:
            if per_group is None:  # one example per group: a parallel map, in order
                if training and self.limit is None:
                    files = files.shuffle(len(self.files), seed=seed,
                                          reshuffle_each_iteration=True)
                ds = files.map(reader, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                return ds.take(self.limit) if self.limit is not None else ds
            reader = lambda *group: tf.data.Dataset.from_tensors(self.reader(*group))  # noqa: E731
        if not training or self.limit is not None:
            if per_group is not None and self.limit is None:
                return files.flat_map(lambda *group: per_group(reader(*group)))
            ds = files.flat_map(reader)
            ds = ds.take(self.limit) if self.limit is not None else ds
            return per_group(ds) if per_group is not None else ds
        read = reader if per_group is None else (lambda *group: per_group(reader(*group)))
        if len(self.files) == 1:  # nothing to shuffle or interleave: a parallel interleave
            return files.flat_map(read)  # of one file costs more than the task reads
        files = files.shuffle(len(self.files), seed=seed, reshuffle_each_iteration=True)
        return files.interleave(read, cycle_length=min(4, len(self.files)),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def dataset(self, training: bool, seed: int, per_group: Callable | None = None,
                shard: tuple[int, int] | None = None):
        """The training (or one-pass) pipeline; see the module docstring. `shard=(workers,
        index)`: this worker's share; by default TF_CONFIG's for training, none otherwise."""
        import tensorflow as tf

        # Training under multi_worker shards here, before the task's own steps (bucketing's
        # group_by_window stops tf.data's FILE rewrite from finding the files): each worker
        # reads its own file groups when every worker gets one, else every file and its
        # share of the examples. Evaluation keeps tf.data's DATA rewrite.
        policy = tf.data.experimental.AutoShardPolicy
        if shard is None and training and worker_count() > 1:
            shard = (worker_count(), worker_index())
        by_file = (shard is not None and self.shardable and len(self.files) >= shard[0]
                   and self.limit is None)
        ds = self.examples(training, seed, per_group, shard if by_file else None)
        if shard is not None:
            if not by_file:
                ds = ds.shard(*shard)
            log.info("streaming %d file(s) %s across %d workers", len(self.files),
                     "sharded by file" if by_file else
                     "sharded by example (fewer shardable files than workers, or data.limit)",
                     shard[0])
        if training:
            ds = ds.shuffle(min(self.shuffle_buffer, max(self.count, 1)), seed=seed,
                            reshuffle_each_iteration=True).repeat()
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            policy.OFF if shard is not None else policy.DATA)
        return ds.with_options(options)

    def rows(self) -> Iterator[tuple]:
        """Python (input, target) rows in file order, streamed."""
        if self.python_rows is not None:
            yield from itertools.islice(self.python_rows(), self.limit)
            return
        for row in self.examples().as_numpy_iterator():
            yield tuple(_python_value(value) for value in row)


class StreamingColumn:
    """One column of a `StreamingSplit`: counted, iterated (streaming the files), picked
    from; never held as a list."""

    def __init__(self, index: int):
        self.index = index
        self.split: StreamingSplit | None = None  # set by StreamingSplit.__new__

    def __len__(self) -> int:
        return self.split.count

    def __iter__(self):
        if self.split.row is not None:
            for number in range(len(self)):
                yield self.split.row(number, self.index)
            return
        for row in self.split.rows():
            yield row[self.index]

    def __getitem__(self, key):
        raise TypeError("a streaming column (data.streaming=true) is not indexed: iterate it, "
                        "or pick(column, indices) the rows it needs")

    def pick(self, indices: Sequence[int]) -> list:
        """The values at the sorted `indices`, in one pass over the files (or, with
        `StreamingSplit.row`, from those examples' own files)."""
        if self.split.row is not None:
            return [self.split.row(int(number), self.index) for number in indices]
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


def sample_rows(column, sample: int | None, seed: int):
    """At most `sample` values of `column` (None: all of them), drawn with `seed`, in corpus
    order: the same rows for a list and for a streaming column of the same corpus. A list;
    for a streaming column of no more than `sample` rows the column itself (iterate it, or
    `text_batches` it: never held whole)."""
    if sample is None or len(column) <= sample:
        return column if isinstance(column, StreamingColumn) else list(column)
    chosen = sorted(random.Random(seed).sample(range(len(column)), int(sample)))
    return pick(column, chosen)


def _python_value(value):
    """A numpy value of a tf.data example as the whole-file readers give it: str, a list of
    str, an int."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_python_value(item) for item in value]
    return value


def text_batches(texts, column: int | None = None, batch: int = 1024):
    """tf.data of batches of strings, for a vocabulary learner: a list sliced, a streaming
    column read from its files in one pass (never a list). `column`: the split's column,
    for a streaming one (its own by default)."""
    import tensorflow as tf

    if isinstance(texts, StreamingColumn):
        index = texts.index if column is None else column
        return texts.split.examples().map(lambda *row: row[index]).batch(batch)
    return tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), tf.string)).batch(batch)


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


def worker_index() -> int:
    """This process's place among the workers of TF_CONFIG (the chief first); 0 without one."""
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        jobs = resolver.cluster_spec().as_dict()
        kind, index = resolver.task_type, int(resolver.task_id or 0)
    except (ValueError, KeyError, TypeError):
        return 0
    return index if kind != "worker" else index + len(jobs.get("chief", []))


def example_dataset(pair, training: bool, seed: int, per_group: Callable | None = None):
    """The raw (input, target) examples of a split as tf.data: the start of a task's
    pipeline. Lists: sliced, and for training shuffled whole and repeated; a
    `StreamingSplit`: its file pipeline (`StreamingSplit.dataset`). `per_group`: what a
    task builds of consecutive examples (of a file group; of a whole list)."""
    import tensorflow as tf

    if isinstance(pair, StreamingSplit):
        return pair.dataset(training, seed, per_group)
    ds = tf.data.Dataset.from_tensor_slices(tuple(pair))
    if per_group is not None:
        ds = per_group(ds)
    if training:
        ds = ds.shuffle(len(pair[0]), seed=seed, reshuffle_each_iteration=True).repeat()
    return ds


# What Python's str.strip() strips, as an RE2 class (\s alone is ASCII, without \v): so the
# streamed lines equal the lines `data.files` reads whole.
_SPACE = r"[\s\x0b\x1c-\x1f\x85\p{Z}]"
_WORD = r"[^\s\x0b\x1c-\x1f\x85\p{Z}]"  # what str.split() keeps
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


def _first_word(lines):
    """Stripped lines (B,) -> their first whitespace-separated word, as `str.split()[0]`."""
    import tensorflow as tf

    return tf.strings.regex_replace(lines, rf"(?s){_SPACE}.*", "", replace_global=False)


def labelled_lines(path):
    """`reader` of `LABEL TEXT` lines: (text, label), blank lines skipped (the
    `files.labelled_rows` pass checked every line has both)."""
    import tensorflow as tf

    def columns(lines):
        lines = tf.boolean_mask(lines, tf.strings.length(lines) > 0)
        texts = tf.strings.regex_replace(lines, rf"^{_WORD}+{_SPACE}+", "",
                                         replace_global=False)
        return texts, _first_word(lines)

    return _lines(path).map(columns).unbatch()


def conll_sentences(path, iob1: bool = False):
    """`reader` of a CoNLL file: (tokens, tags) per sentence, the first and last column of
    its lines; blank and `-DOCSTART-` lines end a sentence (`conll.conll_rows` checked the
    file). A batch of lines at a time: the sentences it closes come out, the one it leaves
    open is carried to the next batch (an empty last line closes the file's last one).
    With `iob1` the tags are converted to IOB2 (`conll.iob1_to_iob2`)."""
    import tensorflow as tf

    batches = _lines(path).concatenate(tf.data.Dataset.from_tensors(tf.constant([""])))

    def step(carried, lines):
        tokens = _first_word(lines)
        tags = tf.strings.regex_replace(lines, rf"(?s).*{_SPACE}", "", replace_global=False)
        boundary = tf.logical_or(tf.equal(lines, ""), tf.equal(tokens, "-DOCSTART-"))
        words = tf.logical_not(boundary)
        # sentence k of the batch holds the words after its k-th boundary (0: the carried one)
        ids = tf.cumsum(tf.cast(boundary, tf.int64))
        ids = tf.concat([tf.zeros_like(carried[0], tf.int64), ids[words]], 0)
        tokens = tf.concat([carried[0], tokens[words]], 0)
        tags = tf.concat([carried[1], tags[words]], 0)
        closed = tf.reduce_sum(tf.cast(boundary, tf.int64))
        done = ids < closed
        rows = [tf.RaggedTensor.from_value_rowids(column[done], ids[done], nrows=closed)
                for column in (tokens, tags)]
        kept = rows[0].row_lengths() > 0  # boundaries in a row close nothing
        open_ = tf.logical_not(done)
        return ((tokens[open_], tags[open_]),
                tuple(tf.ragged.boolean_mask(row, kept) for row in rows))

    empty = tf.zeros([0], tf.string)
    sentences = batches.scan((empty, empty), step).unbatch()
    return sentences.map(lambda tokens, tags: (tokens, iob1_to_iob2(tags))) if iob1 else sentences


def iob1_to_iob2(tags):
    """IOB1 tags (T,) -> IOB2, in the graph: an I-X that follows neither B-X nor I-X
    starts an entity (B-X), as `conll.iob1_to_iob2`."""
    import tensorflow as tf

    types = tf.strings.regex_replace(tags, "^[BI]-", "")
    before = tf.concat([["O"], tags[:-1]], 0)
    before_types = tf.concat([["O"], types[:-1]], 0)
    starts = tf.logical_and(tf.strings.regex_full_match(tags, "I-.*"),
                            tf.logical_or(tf.equal(before, "O"),
                                          tf.not_equal(before_types, types)))
    return tf.where(starts, tf.strings.join(["B-", types]), tags)


def document_lines(path, first_document):
    """`reader` of a plain text file: (line, document id), blank lines skipped; a blank
    line after text ends a document, whose ids count from `first_document` (the documents
    of the files before it: `files.text_line_rows`)."""
    import tensorflow as tf

    def step(state, lines):
        closed, after_text = state
        text = tf.strings.length(lines) > 0
        before = tf.concat([[after_text], text[:-1]], 0)
        closes = tf.cast(tf.logical_and(tf.logical_not(text), before), tf.int64)
        ids = closed + tf.cumsum(closes) + tf.cast(first_document, tf.int64)
        return ((closed + tf.reduce_sum(closes), text[-1]),
                (tf.boolean_mask(lines, text), tf.boolean_mask(ids, text)))

    start = (tf.constant(0, tf.int64), tf.constant(False))
    return _lines(path).scan(start, step).unbatch()


def python_reader(rows: Callable, kinds: tuple = ("string", "string")):
    """`reader` of a file through the Python function `rows(path)` -> (input, target)
    rows (a csv table: the csv module's dialect has no tf.data equivalent), `ROW_BATCH`
    rows per call into tf.data. `kinds`: the two columns' dtypes. tf.data cannot shard it by
    file (`StreamingSplit(shardable=False)`)."""
    import tensorflow as tf

    signature = tuple(tf.TensorSpec([None], kind) for kind in kinds)

    def batches(path):
        chunk = []
        for row in rows(path.decode("utf-8")):
            chunk.append(row)
            if len(chunk) == ROW_BATCH:
                yield tuple(list(column) for column in zip(*chunk))
                chunk = []
        if chunk:
            yield tuple(list(column) for column in zip(*chunk))

    def reader(path):
        return tf.data.Dataset.from_generator(batches, args=(path,),
                                              output_signature=signature).unbatch()

    return reader


def image_file(path, label, size):
    """`reader` of one image of a folder (`per_file`): (its encoded bytes, its label). The
    task decodes it; `size` (the bytes the file had when listed) checks that it was not
    truncated since."""
    import tensorflow as tf

    image = tf.io.read_file(path)
    same = tf.equal(tf.strings.length(image), tf.cast(size, tf.int32))
    with tf.control_dependencies([tf.debugging.Assert(
            same, ["an image file changed size since it was listed:", path])]):
        return tf.identity(image), label
