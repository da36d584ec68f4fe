"""`data.streaming=true|auto` for the text tasks (sentiment, ner, language_modeling,
masked_lm; translation in test_records) and image folders (image_classification): the
streamed readers give the rows a whole read gives, a streamed task trains on exactly the
examples of a whole read (one epoch, as multisets), a streamed run trains and exports,
`auto` streams by size, and the bad inputs
(a corpus smaller than one batch, `data.out` given to a training run) fail before training."""
import json
import logging
import pathlib
import random

import numpy as np
import pytest
import tensorflow as tf

from pipelines.config import ConfigError, check
from pipelines.data import open_source
from pipelines.data.streaming import StreamingSplit, choose_streaming, example_dataset
from pipelines.prepare import compose_config, prepare
from pipelines.run import execute
from pipelines.tasks import build_task

WORDS = "the a good bad film plot music awful great dull fine long short Paris Anna".split()


def _labelled(path: pathlib.Path, count: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    path.write_text("".join(f"{rng.choice(['pos', 'neg'])} "
                            f"{' '.join(rng.choices(WORDS, k=rng.randint(1, 30)))}\n"
                            for _ in range(count)))
    return str(path)


def _conll(path: pathlib.Path, count: int, seed: int = 0) -> str:
    rng, lines = random.Random(seed), ["-DOCSTART- -X- O", ""]
    for _ in range(count):
        lines += [f"{rng.choice(WORDS)} NN {rng.choice(['O', 'O', 'B-PER', 'B-LOC'])}"
                  for _ in range(rng.randint(1, 20))] + [""]
    path.write_text("\n".join(lines))
    return str(path)


def _text(path: pathlib.Path, documents: int, seed: int = 0) -> str:
    rng, lines = random.Random(seed), []
    for _ in range(documents):
        lines += [" ".join(rng.choices(WORDS, k=rng.randint(3, 12)))
                  for _ in range(rng.randint(1, 5))] + [""]
    path.write_text("\n".join(lines))
    return str(path)


def _files(task: str, train: str, *overrides, streaming="true"):
    return compose_config([f"task={task}", "data=files", f"data.train={train}",
                           f"data.validation={train}", f"data.streaming={streaming}", *overrides])


def _rows(split) -> list:
    """A split's rows as Python values, by tf.data for a streamed one."""
    if not isinstance(split, StreamingSplit):
        return list(zip(*split))

    def value(v):
        if isinstance(v, bytes):
            return v.decode()
        return [value(x) for x in v.tolist()] if isinstance(v, np.ndarray) else int(v)

    return [tuple(value(v) for v in row)
            for row in example_dataset(split, False, 0).as_numpy_iterator()]


# ----------------------------------------------------------------------------- readers
@pytest.mark.parametrize("task, format, name, text, overrides", [
    ("sentiment", "labelled_text", "s.txt",
     "\ufeffpos  a good film \n\n neg\u00a0bad\u2009one\r\n\tpos x\n", []),
    ("sentiment", "labelled_text", "s.csv", 'text,label\n"a, quoted\nline",pos\nplain,neg\n', []),
    ("ner", "conll", "n.conll", "-DOCSTART- O\n\nEU x B-ORG\nrejects O\nGerman B-MISC\n\n\n\n"
     "Peter B-PER\nBlackburn\u00a0I-PER\n", []),
    ("ner", "conll", "n1.conll", "EU I-ORG\nrejects O\nGerman I-MISC\ncall I-MISC\nB I-LOC\n\n"
     "Peter I-PER\n-DOCSTART- O\nBlackburn I-PER", ["data.tag_scheme=iob1"]),
    ("language_modeling", "text_lines", "t.txt", "one\ntwo\n\n\n three\n\nfour\n", []),
])
def test_a_streamed_file_gives_the_rows_a_whole_read_gives(tmp_path, task, format, name, text,
                                                            overrides):
    (tmp_path / name).write_text(text, newline="")
    cfg = _files(task, str(tmp_path / name), *overrides)
    streamed = open_source(cfg.data).read(format).train
    whole = open_source(_files(task, str(tmp_path / name), *overrides,
                               streaming="false").data).read(format).train
    assert isinstance(streamed, StreamingSplit) and len(streamed[0]) == len(whole[0]) > 1
    assert _rows(streamed) == list(streamed.rows()) == _rows(whole)


def test_streamed_text_files_number_their_documents_across_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\n\nthree\n\nfour\n")
    (tmp_path / "b.txt").write_text("\nfive\nsix\n")
    train = f"'{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}'"
    streamed = open_source(_files("language_modeling", train).data).read("text_lines").train
    assert [(path.rsplit("/", 1)[1], first) for path, first in streamed.files] == [
        ("a.txt", 0), ("b.txt", 3)]
    assert _rows(streamed) == [("one", 0), ("two", 0), ("three", 1), ("four", 2), ("five", 3),
                               ("six", 3)] == _rows(open_source(_files(
                                   "language_modeling", train, streaming="false").data).read(
                                   "text_lines").train)


def test_a_lone_carriage_return_is_refused_when_streaming(tmp_path):
    (tmp_path / "s.txt").write_bytes(b"pos good\rneg bad\npos fine\n")
    with pytest.raises(ValueError, match=r"s.txt:1: a carriage return without a line feed.*"
                                         r"data.streaming=false"):
        open_source(_files("sentiment", str(tmp_path / "s.txt")).data).read("labelled_text")


def test_prepared_shards_stream_for_every_text_format(tmp_path):
    small = ["data.num_train=30", "data.num_validation=4", "data.num_test=4", "data.shards=3"]
    for task, format in (("sentiment", "labelled_text"), ("ner", "conll"),
                         ("language_modeling", "text_lines")):
        out = tmp_path / task
        cfg = compose_config([f"task={task}", f"data.out={out}", *small])
        prepare(cfg, "test")
        read = open_source(compose_config([f"task={task}", "data=tfrecord", f"data.path={out}",
                                           "data.streaming=true"]).data).read(format).train
        assert isinstance(read, StreamingSplit) and len(read.files) == 3
        assert _rows(read) == list(read.rows()) == _rows(open_source(cfg.data).read(format).train)


def test_a_python_reader_shards_by_example_the_others_by_file(tmp_path):
    (tmp_path / "s.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    policy = tf.data.experimental.AutoShardPolicy
    csv = open_source(_files("sentiment", str(tmp_path / "s.csv")).data).read("labelled_text")
    text = open_source(_files("sentiment", _labelled(tmp_path / "s.txt", 4)).data).read(
        "labelled_text")
    assert not csv.train.shardable and text.train.shardable
    for split in (csv.train, text.train):  # one file, two workers: by example
        rows = [list(split.dataset(False, 0, shard=(2, worker)).as_numpy_iterator())
                for worker in (0, 1)]
        assert len(rows[0]) + len(rows[1]) == split.count and rows[0] != rows[1]
    assert policy.OFF == split.dataset(False, 0, shard=(2, 0)).options() \
        .experimental_distribute.auto_shard_policy


# ----------------------------------------------------------------------------- tasks
def _adapted(cfg):
    task = build_task(cfg)
    splits = task.load()
    task.adapt(splits)
    return task, splits


def _epoch(dataset, count: int) -> list:
    """The first `count` examples of a batch-size-1 training stream (one epoch: the shuffle
    comes before the repeat), as sorted (inputs, targets) tuples."""
    rows = []
    for x, y in dataset.take(count).as_numpy_iterator():
        x = x["word_ids"] if isinstance(x, dict) else x
        rows.append((tuple(np.asarray(x).ravel().tolist()), tuple(np.asarray(y).ravel().tolist())))
    return sorted(rows)


@pytest.mark.parametrize("task, write, overrides", [
    ("sentiment", _labelled, ["task.vocabulary_size=40"]),  # length buckets on (the default)
    ("sentiment", _labelled, ["task.length_buckets=null"]),
    ("ner", _conll, ["task.vocabulary_size=40"]),  # length buckets on (the default)
    ("language_modeling", _text, ["task.sequence_length=8", "task.vocabulary_size=60"]),
])
def test_a_streamed_task_trains_on_the_examples_of_a_whole_read(tmp_path, task, write,
                                                                 overrides):
    train = write(tmp_path / "train.txt", 40)
    whole, whole_splits = _adapted(_files(task, train, *overrides, streaming="false"))
    streamed, splits = _adapted(_files(task, train, *overrides))
    assert isinstance(splits.train, StreamingSplit)
    count = whole.train_examples(whole_splits)
    assert streamed.train_examples(splits) == count > 4
    epoch = _epoch(streamed.dataset(splits.train, True, 1), count)
    assert epoch == _epoch(whole.dataset(whole_splits.train, True, 1), count)
    if task != "language_modeling":  # bucketed: each example cut to its bucket's length
        lengths = {len(x) for x, _ in epoch}
        assert lengths <= {16, 32, 64} if "task.length_buckets=null" not in overrides else {64}


def test_a_streamed_masked_lm_packs_the_sequences_of_a_whole_read(tmp_path):
    overrides = ["model=transformer", "task.vocabulary_size=60", "task.max_length=16",
                 "trainer.batch_size=4"]
    train = _text(tmp_path / "train.txt", 15)
    whole, whole_splits = _adapted(_files("masked_lm", train, *overrides, streaming="false"))
    streamed, splits = _adapted(_files("masked_lm", train, *overrides))
    assert streamed.text_ids.vocabulary == whole.text_ids.vocabulary
    count = len(whole_splits.train[0])

    def packed(task, pair):  # (token ids, segment ids); no next-sentence labels here
        return sorted((tuple(ids.tolist()), tuple(segments.tolist())) for ids, segments, _ in
                      task.sequences(pair, True).take(count).as_numpy_iterator())

    assert packed(streamed, splits.train) == packed(whole, whole_splits.train)
    x, y = next(iter(streamed.dataset(splits.train, True, 4)))  # masked, bucketed
    assert x["token_ids"].shape[0] == 4 and x["token_ids"].shape[1] in (16,)
    with pytest.raises(ConfigError, match=r"task.next_sentence=True needs it read whole"):
        check(_files("masked_lm", train, *overrides, "task.next_sentence=true"))


SMOKE = ["debug=smoke", "logger=none", "trainer.batch_size=8"]


def test_a_streamed_sentiment_run_trains_and_exports(tmp_path):
    cfg = _files("sentiment", _labelled(tmp_path / "train.txt", 64), *SMOKE)
    check(cfg)
    result = execute(cfg, tmp_path / "run")
    assert isinstance(result.task.load().train, StreamingSplit)
    assert set(result.metrics) == {"accuracy", "macro_f1"}
    served = tf.saved_model.load(str(tmp_path / "run" / "saved_model")).signatures[
        "serving_default"](text=tf.constant(["a good film"]))
    assert served["probabilities"].shape == (1, 2)


@pytest.mark.slow
@pytest.mark.parametrize("task, write, overrides", [
    ("ner", _conll, []),
    ("language_modeling", _text, ["task.sequence_length=16"]),
    ("masked_lm", _text, ["model=transformer", "task.max_length=32"]),
])
def test_a_streamed_run_trains_and_exports(tmp_path, task, write, overrides):
    cfg = _files(task, write(tmp_path / "train.txt", 64), *SMOKE, *overrides)
    check(cfg)
    result = execute(cfg, tmp_path / "run")
    state = json.loads((tmp_path / "run" / "checkpoints" / "trainer_state.json").read_text())
    assert state["step"] > 0 and (tmp_path / "run" / "saved_model" / "saved_model.pb").is_file()
    assert isinstance(result.task.load().train, StreamingSplit)


# ----------------------------------------------------------------------------- auto, bad input
def test_auto_streams_a_training_file_over_the_threshold_and_says_so(tmp_path, caplog):
    train = _labelled(tmp_path / "train.txt", 40)  # about 1 kB
    with caplog.at_level(logging.INFO, logger="pipelines.data.streaming"):
        big = open_source(_files("sentiment", train, "data.streaming_threshold_mb=0.001",
                                 streaming="auto").data).read("labelled_text")
        small = open_source(_files("sentiment", train, streaming="auto").data).read(
            "labelled_text")
    assert isinstance(big.train, StreamingSplit) and isinstance(small.train[0], list)
    assert "MB >= data.streaming_threshold_mb=0.001: streamed" in caplog.text
    assert "under data.streaming_threshold_mb=256: read whole" in caplog.text
    check(_files("sentiment", train, streaming="auto"))
    with caplog.at_level(logging.WARNING, logger="pipelines.data.streaming"):
        assert not choose_streaming("image_masks", 300_000_000, 256, "data.train=big")
        assert not choose_streaming("conll", 300_000_000, 256, "data.train=big", False)
    assert "data.train=big is 300.0 MB, but the format image_masks is read whole" in caplog.text
    assert "without data.validation" in caplog.text


@pytest.mark.parametrize("override, message", [
    ("data.streaming=maybe", r"data.streaming must be true, false or auto.*received "
                             r"data.streaming='maybe'"),
    ("data.streaming_threshold_mb=0", r"data.streaming_threshold_mb must be > 0"),
    ("data.shuffle_buffer=0", r"data.shuffle_buffer must be >= 1"),
    ("data.out=prepared", r"data.out=prepared is a key of python -m pipelines.prepare.*drop it"
                          r".*data=tfrecord data.path=DIR"),
    ("data.shards=4", r"data.shards=4 is a key of python -m pipelines.prepare"),
])
def test_data_keys_a_training_run_cannot_use_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        check(compose_config(["task=sentiment", "data=files", "data.train=x.txt", override]))


def test_a_streamed_corpus_smaller_than_one_batch_names_the_file_before_training(tmp_path):
    train = _labelled(tmp_path / "tiny.txt", 5)
    cfg = _files("sentiment", train, *SMOKE, "trainer.batch_size=16")
    with pytest.raises(ValueError, match=rf"data.train={train} \(streamed\): trainer.batch_size="
                                         r"16 is larger than the training split \(5 examples\): "
                                         r"one global batch"):
        execute(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- image folders
def _image_folder(root: pathlib.Path, per_class: int = 5, size: int = 12) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, kind in (("cat", "PNG"), ("dog", "JPEG"), ("owl", "BMP")):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{index}.{kind.lower()}", kind)
    (root / "owl" / "notes.txt").write_text("not an image")  # skipped, as a whole read does
    return str(root)


@pytest.mark.parametrize("mixed", [False, True], ids=["one size", "mixed sizes"])
def test_a_streamed_image_folder_trains_on_the_images_of_a_whole_read(tmp_path, mixed):
    from PIL import Image

    overrides = ["task.augment.flip=false", "task.image_size=8", "trainer.batch_size=4"]
    folder = _image_folder(tmp_path / "train")
    if mixed:  # one image of another size: each image is resized alone, not by the batch
        Image.new("RGB", (10, 7), (200, 30, 90)).save(tmp_path / "train" / "cat" / "0.png")
    whole, whole_splits = _adapted(_files("image_classification", folder, *overrides,
                                          streaming="false"))
    streamed, splits = _adapted(_files("image_classification", folder, *overrides))
    assert isinstance(splits.train, StreamingSplit) and len(splits.train.files) == 15
    assert splits.train.shape == (None if mixed else (12, 12, 3))
    assert streamed.label_names == whole.label_names == ["cat", "dog", "owl"]
    np.testing.assert_allclose(streamed.mean, whole.mean)
    np.testing.assert_allclose(streamed.variance, whole.variance)
    assert _epoch(streamed.dataset(splits.train, True, 1), 15) == _epoch(
        whole.dataset(whole_splits.train, True, 1), 15)
    policy = tf.data.experimental.AutoShardPolicy
    assert splits.train.shardable  # a file per image: each worker reads its own


def test_a_streamed_image_folder_limits_like_a_whole_read_and_names_what_tf_cannot_decode(
        tmp_path):
    from PIL import Image

    folder = _image_folder(tmp_path / "train")
    limited = [_files("image_classification", folder, "data.limit=4", streaming=streaming)
               for streaming in ("true", "false")]
    streamed, whole = (open_source(cfg.data).read("labelled_images").train for cfg in limited)
    assert list(streamed[1]) == whole[1] and len(streamed.files) == 4
    decoded = [tf.io.decode_image(data, channels=3).numpy() for data in streamed[0]]
    assert all(np.array_equal(a, b) for a, b in zip(decoded, whole[0]))
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "cat" / "scan.tiff", "TIFF")
    with pytest.raises(ValueError, match=r"cat/scan.tiff: a TIFF file; data.streaming=true "
                                         r"decodes images in tf.data.*data.streaming=false"):
        open_source(_files("image_classification", folder).data).read("labelled_images")


@pytest.mark.slow
def test_a_streamed_image_classification_run_trains_and_exports(tmp_path):
    cfg = _files("image_classification", _image_folder(tmp_path / "train", per_class=8),
                 "model=cnn", *SMOKE)
    check(cfg)
    result = execute(cfg, tmp_path / "run")
    assert set(result.metrics) == {"accuracy"}
    assert (tmp_path / "run" / "saved_model" / "saved_model.pb").is_file()


def test_two_workers_read_their_own_files_through_the_scan_and_image_readers(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n")
    (tmp_path / "b.txt").write_text("four\n\nfive\n")
    text = open_source(_files("language_modeling", f"'{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}'"
                              ).data).read("text_lines").train
    images = open_source(_files("image_classification", _image_folder(tmp_path / "images", 1))
                         .data).read("labelled_images").train
    for split, expected in ((text, [["one", "two", "three"], ["four", "five"]]),
                            (images, [["cat", "owl"], ["dog"]])):
        for worker in (0, 1):
            got = [row[0 if split is text else 1].decode() for row in
                   split.dataset(False, 0, shard=(2, worker)).as_numpy_iterator()]
            assert got == expected[worker]
