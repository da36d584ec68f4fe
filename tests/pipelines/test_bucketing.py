"""Length bucketing (`task.length_buckets`): bucket shapes only, every example once, padding
never changes a prediction, and bucketed runs train, also under XLA."""
import collections

import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir

from pipelines.config import register_schemas
from pipelines.data.bucketing import bucket_by_length, resolve_buckets
from pipelines.data.splits import Splits
from pipelines.run import execute
from pipelines.tasks.ner import Ner
from pipelines.tasks.sentiment import Sentiment
from pipelines.tasks import build_task
from tests.conftest import REPO

register_schemas()

BUCKETS = [4, 8, 16]
MODELS = {
    "lstm": ["model=lstm", "model.units=8", "model.embedding_dim=8"],
    "gru": ["model=gru", "model.units=8", "model.embedding_dim=8"],
    "transformer": ["model=transformer", "model.hidden_dim=16", "model.num_heads=2",
                    "model.intermediate_dim=32"],
}


def _cfg(task, *overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"task={task}", "logger=none",
                                            "trainer.verbose=false", *overrides])


def _sentences(n=101, seed=0):
    """Sentences of 1..16 words (vocabulary w0..w29), every length present."""
    rng = np.random.default_rng(seed)
    return [[f"w{rng.integers(30)}" for _ in range(1 + i % 16)] for i in rng.permutation(n)]


def _sentiment(*overrides, n=101, model="lstm"):
    texts = [" ".join(s) for s in _sentences(n)]
    labels = [str(len(t) % 2) for t in texts]
    task = build_task(_cfg("sentiment", *MODELS[model], "task.max_length=16", *overrides))
    splits = Splits((texts, labels), (texts, labels))
    task.adapt(splits)
    return task, splits


def _ids(x):
    """The token ids of a batch: NER's inputs are a dict (word ids, optional char/case ids)."""
    return x["word_ids"] if isinstance(x, dict) else x


def _like(x, ids):
    """`ids` packed the way the model takes `x` (a dict for NER)."""
    return {"word_ids": ids} if isinstance(x, dict) else ids


def _ner(*overrides, n=101, model="lstm"):
    sentences = _sentences(n)
    tags = [["B-X" if w in ("w1", "w2") else "O" for w in s] for s in sentences]
    task = build_task(_cfg("ner", *MODELS[model], "task.max_length=16", *overrides))
    splits = Splits((sentences, tags), (sentences, tags))
    task.adapt(splits)
    return task, splits


def test_resolve_buckets():
    assert resolve_buckets(None, 64) is None
    assert resolve_buckets([16, 32, 64], 64) == [16, 32, 64]
    assert resolve_buckets([16, 32], 64) == [16, 32, 64]  # max_length always closes the list
    assert resolve_buckets([16, 32, 64], 24) == [16, 24]  # longer than max_length: dropped
    for bad in ([], [0, 8], [8, 8], [16, 8], [4.5]):
        with pytest.raises(ValueError, match="task.length_buckets"):
            resolve_buckets(bad, 64)


@pytest.mark.parametrize("task", ["sentiment", "ner"])
def test_buckets_are_on_by_default_and_null_turns_them_off(task):
    assert list(_cfg(task).task.length_buckets) == [16, 32, 64]
    assert _cfg(task, "task.length_buckets=null").task.length_buckets is None


def test_bucket_by_length_cuts_to_the_smallest_bucket_and_keeps_every_example():
    lengths = np.arange(1, 17).repeat(3)  # 48 examples of length 1..16
    ids = np.zeros((len(lengths), 16), "int32")
    for i, n in enumerate(lengths):
        ids[i, :n] = i + 1  # a row is identified by its value
    ds = tf.data.Dataset.from_tensor_slices((ids, np.arange(len(lengths))))
    seen = []
    for x, y in bucket_by_length(ds, lambda x, y: tf.math.count_nonzero(x), BUCKETS, 5,
                                 drop_remainder=False, sequences=(True, False)):
        assert x.shape[1] in BUCKETS and x.shape[0] <= 5
        for row, index in zip(x.numpy(), y.numpy()):
            length = lengths[index]
            assert x.shape[1] == min(b for b in BUCKETS if b >= length)  # the smallest fit
            np.testing.assert_array_equal(row, ids[index, : x.shape[1]])
            seen.append(int(index))
    assert sorted(seen) == list(range(len(lengths)))


@pytest.mark.parametrize("make", [_sentiment, _ner], ids=["sentiment", "ner"])
def test_training_batches_have_bucket_shapes_and_full_size(make):
    task, splits = make(f"task.length_buckets={BUCKETS}")
    shapes = collections.Counter()
    for x, y in task.dataset(splits.train, training=True, batch_size=8).take(60):
        x = _ids(x)
        shapes[tuple(x.shape)] += 1
        assert x.shape[0] == 8 and y.shape[0] == 8  # drop_remainder: static batch size
        if y.shape.rank == 2:
            assert y.shape == x.shape
        # the bucket is the smallest that holds the batch's longest sentence
        longest = int(tf.reduce_max(tf.math.count_nonzero(x, axis=1)))
        assert x.shape[1] == min(b for b in BUCKETS if b >= longest)
    assert set(shapes) == {(8, b) for b in BUCKETS}, shapes


@pytest.mark.parametrize("make", [_sentiment, _ner], ids=["sentiment", "ner"])
def test_validation_has_every_example_once(make):
    task, splits = make(f"task.length_buckets={BUCKETS}")
    plain, _ = make("task.length_buckets=null")

    def rows(ds):
        out = collections.Counter()
        for x, y in ds:
            x, y = _ids(x).numpy(), y.numpy()
            for i in range(len(x)):
                n = int(np.count_nonzero(x[i]))
                out[(tuple(x[i, :n]), tuple(np.ravel(y[i])[: n if y.ndim == 2 else 1]))] += 1
        return out

    bucketed = rows(task.dataset(splits.validation, training=False, batch_size=8))
    assert sum(bucketed.values()) == len(splits.validation[0])
    assert bucketed == rows(plain.dataset(splits.validation, training=False, batch_size=8))


def test_bucketed_training_stream_is_seeded():
    task, splits = _sentiment(f"task.length_buckets={BUCKETS}")
    again, _ = _sentiment(f"task.length_buckets={BUCKETS}")
    first = [x.numpy() for x, _ in task.dataset(splits.train, True, 8).take(20)]
    second = [x.numpy() for x, _ in again.dataset(splits.train, True, 8).take(20)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("make", [_sentiment, _ner], ids=["sentiment", "ner"])
def test_padding_to_16_or_64_gives_the_same_predictions(make, model):
    task, splits = make("task.max_length=64", "task.length_buckets=null", n=16, model=model)
    net = task.build_model()
    x, _ = next(iter(task.dataset(splits.validation, training=False, batch_size=16)))
    long = _ids(x).numpy()
    assert long.shape == (16, 64) and not long[:, 16:].any()
    wide = net(_like(x, long), training=False).numpy()
    short = net(_like(x, long[:, :16]), training=False).numpy()
    if wide.ndim == 3:  # NER: compare the real words' logits
        real = long[:, :16] != 0
        wide, short = wide[:, :16][real], short[real]
    np.testing.assert_allclose(short, wide, atol=1e-5)


@pytest.mark.parametrize("task,model", [("sentiment", "lstm"), ("ner", "transformer")])
def test_smoke_run_with_buckets_under_xla(task, model, tmp_path):
    cfg = _cfg(task, *MODELS[model], "debug=smoke", "trainer.jit_compile=true",
               "task.length_buckets=[8,16,64]", "trainer.steps_per_epoch=6")
    result = execute(cfg, tmp_path)
    assert all(np.isfinite(v) for v in result.metrics.values()), result.metrics
    texts = ["the film was good", "john lives in new york and works for acme corp"]
    served = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"](
        text=tf.constant(texts))
    expected = result.task.serve_in_process(result.model, texts)
    for key, value in expected.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(served[key].numpy(), value, atol=1e-5)
        else:
            np.testing.assert_array_equal(served[key].numpy(), value)
