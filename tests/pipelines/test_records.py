"""`python -m pipelines.prepare` -> `data=tfrecord`, and `data.streaming=true`: the round trip
gives the source's splits back, a manifest of another task is refused, a corrupted shard is
named with its record (or skipped), a streamed corpus gives the lines a whole read gives and
trains, and a corpus smaller than one batch is refused before training."""
import gzip
import json
import logging
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from pipelines.data import open_source
from pipelines.data.files import DataFileError, read_parallel, read_parallel_tsv
from pipelines.data.records import MANIFEST, TfrecordSource
from pipelines.data.streaming import StreamingSplit, example_dataset, sample_rows
from pipelines.prepare import compose_config, main, prepare
from pipelines.run import execute

SMALL = ["data.num_train=40", "data.num_validation=8", "data.num_test=6"]


def _prepare(tmp_path, task, *overrides, shards=3):
    out = tmp_path / f"prepared_{task}"
    cfg = compose_config([f"task={task}", f"data.out={out}", f"data.shards={shards}", *overrides])
    manifest = prepare(cfg, "python -m pipelines.prepare (test)")
    return cfg, out, manifest


def _tfrecord(task, out, *overrides):
    return open_source(compose_config([f"task={task}", "data=tfrecord", f"data.path={out}",
                                       *overrides]).data)


def _same(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            assert a == b


@pytest.mark.parametrize("task", ["translation", "sentiment", "ner", "language_modeling",
                                  "segmentation", "image_classification", "captioning"])
def test_prepare_then_tfrecord_gives_the_source_splits_back(tmp_path, task):
    cfg, out, manifest = _prepare(tmp_path, task, *SMALL)
    original = open_source(cfg.data).read(str(cfg.task.reader))
    read = _tfrecord(task, out).read(str(cfg.task.reader))
    for split in ("train", "validation", "test"):
        for column in (0, 1):
            _same(getattr(read, split)[column], getattr(original, split)[column])
    assert manifest["format"] == cfg.task.reader and manifest["task"] == task
    assert [manifest["splits"][s]["count"] for s in ("train", "validation", "test")] == [40, 8, 6]
    assert [shard["count"] for shard in manifest["splits"]["train"]["shards"]] == [13, 13, 14]
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert len(manifest["config_hash"]) == 64 and manifest["command"].startswith("python -m")
    shape = manifest["splits"]["train"]["image_shape"]  # synthetic images have one size
    assert shape == ([*np.shape(original.train[0][0])[:2], 3] if task in (
        "segmentation", "image_classification", "captioning") else None)


def test_the_config_hash_follows_the_settings_that_decide_the_examples(tmp_path):
    first = _prepare(tmp_path, "translation", *SMALL)[2]["config_hash"]
    again = _prepare(tmp_path, "translation", *SMALL, shards=2)[2]["config_hash"]
    other = _prepare(tmp_path, "translation", *SMALL, "trainer.seed=7")[2]["config_hash"]
    assert first == again != other  # shards do not change the examples; the seed does


def test_the_command_line_writes_a_manifest_and_needs_data_out(tmp_path, capsys):
    assert main(["task=translation", *SMALL, "data.shards=2", f"data.out={tmp_path / 'p'}"]) == 0
    manifest = json.loads((tmp_path / "p" / MANIFEST).read_text())
    assert manifest["command"].endswith(f"data.out={tmp_path / 'p'}")
    assert main(["task=translation", *SMALL]) == 2
    assert "needs data.out=DIR" in capsys.readouterr().err


def test_a_manifest_of_another_task_is_refused_naming_both(tmp_path):
    _, out, _ = _prepare(tmp_path, "translation", *SMALL)
    with pytest.raises(DataFileError, match=r"holds parallel_text examples prepared for "
                                            r"task=translation, but task=sentiment reads "
                                            r"labelled_text.*pipelines.prepare task=sentiment"):
        _tfrecord("sentiment", out).read("labelled_text")


def _corrupt(path: pathlib.Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one byte flipped in the middle: a record's checksum no longer matches
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_corrupted_shard_is_named_with_its_record_or_skipped(tmp_path, how, caplog):
    cfg, out, manifest = _prepare(tmp_path, "translation", *SMALL)
    shard = manifest["splits"]["train"]["shards"][1]
    _corrupt(out / shard["file"], how)
    with pytest.raises(DataFileError, match=rf"{shard['file']}: record ([1-9]|1[0-2]) is "
                                            r"corrupted or truncated.*data.skip_corrupt=true"):
        _tfrecord("translation", out).read("parallel_text")
    with caplog.at_level(logging.WARNING, logger="pipelines.data.records"):
        read = _tfrecord("translation", out, "data.skip_corrupt=true").read("parallel_text")
    assert shard["file"] in caplog.text and "skipped with its 13 examples" in caplog.text
    original = open_source(cfg.data).read("parallel_text")
    assert read.train[0] == original.train[0][:13] + original.train[0][26:]  # the others kept
    assert read.validation == original.validation


def test_a_shard_changed_at_a_record_boundary_is_refused(tmp_path):
    _, out, manifest = _prepare(tmp_path, "translation", *SMALL)
    shard = manifest["splits"]["test"]["shards"][0]
    records = list(tf.data.TFRecordDataset(str(out / shard["file"])).as_numpy_iterator())
    with tf.io.TFRecordWriter(str(out / shard["file"])) as writer:
        for record in records[:-1]:
            writer.write(record)
    with pytest.raises(DataFileError, match=rf"{shard['file']}: holds 1 records, manifest.json "
                                            r"says 2"):
        TfrecordSource(str(out), "translation").read("parallel_text")


# ----------------------------------------------------------------------------- streaming
def _write_corpus(folder: pathlib.Path, name: str, pairs, gz: bool = False):
    for side, language in ((0, "en"), (1, "de")):
        text = "".join(pair[side] + "\n" for pair in pairs)
        path = folder / f"{name}.{language}{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return str(folder / name)


def _synthetic_pairs(count, seed=0):
    cfg = compose_config(["task=translation", f"data.num_train={count}", "data.num_validation=1",
                          "data.num_test=1", f"trainer.seed={seed}"])
    train = open_source(cfg.data).read("parallel_text").train
    return list(zip(*train))


@pytest.mark.parametrize("kind", ["prefix", "gz", "tsv"])
def test_a_streamed_corpus_gives_the_lines_a_whole_read_gives(tmp_path, kind):
    pairs = [("\ufeff a cat ", "eine Katze"), ("", ""), ("\u00a0two\u2009dogs\u3000", " zwei Hunde"),
             (" ", "\u2028"), ("the end\r", "das Ende")]  # BOM, blank pairs, Unicode spaces
    if kind == "tsv":
        train_path = tmp_path / "train.tsv"  # a blank pair is a blank line
        train_path.write_text("".join((f"{s}\t{t}\textra" if (s + t).strip() else " ") + "\n"
                                      for s, t in pairs))
        train_path, whole = str(train_path), read_parallel_tsv(train_path)
    else:
        train_path = _write_corpus(tmp_path, "train", pairs, gz=kind == "gz")
        suffix = ".gz" if kind == "gz" else ""
        whole = read_parallel(*(pathlib.Path(f"{train_path}.{language}{suffix}")
                                for language in ("en", "de")))
    validation = _write_corpus(tmp_path, "val", pairs[:1])
    source = open_source(compose_config(["task=translation", "data=files",
                                         f"data.train={train_path}",
                                         f"data.validation={validation}",
                                         "data.streaming=true"]).data)
    train = source.read("parallel_text").train
    assert isinstance(train, StreamingSplit) and len(train[0]) == 3
    assert [list(train[0]), list(train[1])] == [whole[0], whole[1]] == [
        ["a cat", "two\u2009dogs", "the end"], ["eine Katze", "zwei Hunde", "das Ende"]]
    examples = example_dataset(train, training=False, seed=0).as_numpy_iterator()
    assert [(s.decode(), t.decode()) for s, t in examples] == list(zip(*whole))


def test_a_streamed_vocabulary_sample_is_the_sample_of_the_whole_corpus(tmp_path):
    pairs = _synthetic_pairs(300)
    prefix = _write_corpus(tmp_path, "train", pairs)
    source = open_source(compose_config(["task=translation", "data=files", f"data.train={prefix}",
                                         f"data.validation={prefix}", "data.streaming=true"]).data)
    train = source.read("parallel_text").train
    sources = [pair[0] for pair in pairs]
    assert sample_rows(train[0], 50, seed=3) == sample_rows(sources, 50, seed=3)
    assert len(sample_rows(train[0], 50, seed=3)) == 50
    limited = open_source(compose_config([
        "task=translation", "data=files", f"data.train={prefix}", f"data.validation={prefix}",
        "data.streaming=true", "data.limit=20"]).data).read("parallel_text").train
    assert len(limited[0]) == 20 and list(limited[0]) == sources[:20]


def test_streaming_training_shuffles_within_a_bounded_buffer_over_shuffled_shards(tmp_path):
    _, out, _ = _prepare(tmp_path, "translation", *SMALL, shards=4)
    train = _tfrecord("translation", out, "data.streaming=true",
                      "data.shuffle_buffer=5").read("parallel_text").train
    assert isinstance(train, StreamingSplit) and len(train.files) == 4 and len(train[0]) == 40
    epoch = [s.decode() for s, _ in example_dataset(train, True, seed=1).take(40).as_numpy_iterator()]
    assert sorted(epoch) == sorted(train[0]) and epoch != list(train[0])
    policy = tf.data.experimental.AutoShardPolicy
    options = example_dataset(train, True, seed=1).options()
    assert options.experimental_distribute.auto_shard_policy == policy.DATA  # one worker


def test_streaming_refuses_what_it_cannot_stream(tmp_path):
    prefix = _write_corpus(tmp_path, "train", [("a", "b")])
    files = ["data=files", f"data.train={prefix}", "data.streaming=true"]
    with pytest.raises(DataFileError, match="no validation split can be held out.*data.validation"):
        open_source(compose_config(["task=translation", *files]).data).read("parallel_text")
    with pytest.raises(ValueError, match=r"streams the formats parallel_text, labelled_text.*"
                                         r"'image_masks' is read whole.*data.streaming=false"):
        open_source(compose_config(["task=segmentation", "data=files", f"data.train={tmp_path}",
                                    f"data.validation={tmp_path}",
                                    "data.streaming=true"]).data).read("image_masks")


SMOKE = ["model=transformer", "debug=smoke", "logger=none", "export.enabled=false",
         "model.hidden_dim=32", "model.intermediate_dim=64", "model.num_heads=2",
         "task.vocabulary_size=200", "decode.beam_size=1"]


@pytest.mark.slow
@pytest.mark.parametrize("data", ["files", "tfrecord"])
def test_translation_trains_from_a_streamed_corpus(tmp_path, data):
    prefix = _write_corpus(tmp_path, "train", _synthetic_pairs(200))
    validation = _write_corpus(tmp_path, "val", _synthetic_pairs(20, seed=1))
    overrides = ["data=files", f"data.train={prefix}", f"data.validation={validation}"]
    if data == "tfrecord":
        _, out, _ = _prepare(tmp_path, "translation", *overrides)
        overrides = ["data=tfrecord", f"data.path={out}"]
    cfg = compose_config(["task=translation", *SMOKE, *overrides, "data.streaming=true",
                          "task.vocabulary_sample=100"])
    result = execute(cfg, tmp_path / "run")
    assert isinstance(result.task.data.read("parallel_text").train, StreamingSplit)
    state = json.loads((tmp_path / "run" / "checkpoints" / "trainer_state.json").read_text())
    assert state["step"] == 2 and set(result.metrics) == {"bleu", "chrf"}


def test_a_streamed_corpus_smaller_than_one_batch_is_refused_before_training(tmp_path):
    prefix = _write_corpus(tmp_path, "train", _synthetic_pairs(10))
    cfg = compose_config(["task=translation", *SMOKE, "data=files", f"data.train={prefix}",
                          f"data.validation={prefix}", "data.streaming=true"])
    with pytest.raises(ValueError, match=r"trainer.batch_size=16 is larger than the training "
                                         r"split \(10 examples\)"):
        execute(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_two_workers_read_half_each_by_file_or_by_example(tmp_path):
    # The split shards itself (tf.data's FILE rewrite cannot walk through bucketing's
    # group_by_window); tests/e2e/test_distribute.py runs two real workers.
    _, out, _ = _prepare(tmp_path, "translation", *SMALL, shards=4)  # shards of 10
    by_file = _tfrecord("translation", out, "data.streaming=true").read("parallel_text").train
    prefix = _write_corpus(tmp_path, "train", _synthetic_pairs(10))
    by_example = open_source(compose_config([
        "task=translation", "data=files", f"data.train={prefix}", f"data.validation={prefix}",
        "data.streaming=true"]).data).read("parallel_text").train
    for train, expected in ((by_file, [list(range(0, 10)) + list(range(20, 30)),
                                       list(range(10, 20)) + list(range(30, 40))]),
                            (by_example, [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]])):
        rows = list(train[0])
        for worker in (0, 1):
            sharded = train.dataset(training=False, seed=0, shard=(2, worker))
            assert sharded.options().experimental_distribute.auto_shard_policy == \
                tf.data.experimental.AutoShardPolicy.OFF  # not sharded twice
            got = [rows.index(s.decode()) for s, _ in sharded.as_numpy_iterator()]
            assert got == expected[worker], worker


def test_the_trainer_keeps_a_streaming_splits_shard_policy(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from pipelines.data import streaming

    from pipelines.tasks import build_task
    from pipelines.trainer import Trainer

    _, out, _ = _prepare(tmp_path, "translation", *SMALL, shards=4)
    task = build_task(compose_config(["task=translation", *SMOKE, "data=tfrecord",
                                      f"data.path={out}", "data.streaming=true"]))
    splits = task.load()
    task.adapt(splits)
    seen = []
    strategy = SimpleNamespace(experimental_distribute_dataset=seen.append)
    policy = tf.data.experimental.AutoShardPolicy
    monkeypatch.setattr(streaming, "worker_count", lambda: 2)  # worker 0 of 2
    monkeypatch.setattr(streaming, "worker_index", lambda: 0)
    for pair, expected in ((splits.train, policy.OFF), (splits.validation, policy.DATA)):
        Trainer._distribute(SimpleNamespace(strategy=strategy),
                            task.dataset(pair, training=True, batch_size=4))
        assert seen[-1].options().experimental_distribute.auto_shard_policy == expected
