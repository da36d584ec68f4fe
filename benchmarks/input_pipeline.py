"""Input pipeline alone vs training: does `task.dataset()` keep the Trainer fed?

For each task, its default config on generated data (model: `common.TASK_MODELS`) is built
the way `pipelines/run.py` builds it: `task.load()`, `task.adapt(splits)`,
`task.dataset(splits.train, training=True, batch_size=trainer.batch_size)`,
`task.build_model()`, the configured optimizer and a `pipelines.trainer.Trainer`. Then, in
alternating rounds of `--seconds` each (so that the load of a shared machine hits both
alike), it measures:

- pipeline: batches/s drawn from an iterator over the training dataset, nothing else running;
- train: steps/s of the Trainer's own step (`Trainer._train_step`, what `fit` calls) on the
  distributed iterator of a second copy of the dataset, the step's stats read back as `fit`
  does.

The ratio per task is the median over rounds of pipeline/train. Goal: >= 5 for every task,
so that the input pipeline, which shares the CPU with the step, costs the step little.

With `--streaming` (`files`, the default, or `tfrecord`) the tasks whose training split
streams (`STREAMED_MODELS`: the formats of `pipelines.data.streaming.STREAMING_FORMATS`) are
measured with `data.streaming=true` on the same generated data written to a temporary folder
(`write_files`): `files` as the files `data=files` reads (`LABEL TEXT` lines, a CoNLL file,
`PREFIX.en` / `PREFIX.de`, a text file with blank lines between documents, an image folder
of PNGs, `pipelines.data.idx.write_folders`), `tfrecord` as the shards of
`python -m pipelines.prepare` (`--shards`), trained from with `data=tfrecord`. Before timing,
each checks that the training split is a `StreamingSplit` of all the generated examples and
that the training dataset reads files (a TextLineDataset or TFRecordDataset in its graph,
or ReadFile for an image folder's one image per file).

    python -m benchmarks input_pipeline [--tasks sentiment ner] [--seconds 3 --rounds 3]
    python -m benchmarks input_pipeline --streaming [files|tfrecord] [--shards 4]

Prints a row per task, then
`RATIO pipeline/train batches per second (lowest, TASK/MODEL) = X.XX`.
"""
import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pipelines.tasks import build_task  # noqa: E402

from benchmarks.common import TASK_MODELS, compose_cfg, print_ratio  # noqa: E402
from pipelines.data import open_source  # noqa: E402
from pipelines.data.streaming import StreamingSplit  # noqa: E402
from pipelines.distribute import make_strategy  # noqa: E402
from pipelines.run import make_optimizer  # noqa: E402
from pipelines.trainer import Trainer  # noqa: E402


# The tasks whose training split streams (data.streaming=true), each with the model of
# `TASK_MODELS` or, for the language models, the README's.
STREAMED_MODELS = {"sentiment": "lstm", "translation": "transformer", "ner": "lstm",
                   "image_classification": "cnn", "language_modeling": "transformer",
                   "masked_lm": "transformer"}
MODELS = {**TASK_MODELS, **STREAMED_MODELS}
FILE_READERS = ("TextLineDataset", "TFRecordDataset", "ReadFile")
# Overrides of the generated data alone (data=synthetic): not given to a streamed run.
GENERATION_KEYS = ("data.num_train=", "data.num_validation=", "data.num_test=")


def _lines(path: pathlib.Path, lines) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_files(format: str, pair, path: pathlib.Path) -> str:
    """Writes one split's generated (inputs, targets) as the files `data=files` reads for
    `format`; returns the `data.SPLIT=` value that names them."""
    inputs, targets = pair
    if format == "labelled_text":  # LABEL TEXT lines
        _lines(path.with_suffix(".txt"), (f"{label} {text}" for text, label in
                                          zip(inputs, targets)))
        return str(path.with_suffix(".txt"))
    if format == "parallel_text":  # PREFIX.en / PREFIX.de, line-aligned
        _lines(path.with_suffix(".en"), inputs)
        _lines(path.with_suffix(".de"), targets)
        return str(path)
    if format == "conll":  # TOKEN TAG lines, a blank line after each sentence
        _lines(path.with_suffix(".conll"), (
            "\n".join(f"{token} {tag}" for token, tag in zip(tokens, tags)) + "\n"
            for tokens, tags in zip(inputs, targets)))
        return str(path.with_suffix(".conll"))
    if format == "text_lines":  # a blank line between documents
        _lines(path.with_suffix(".txt"), (
            ("\n" if index and document != targets[index - 1] else "") + text
            for index, (text, document) in enumerate(zip(inputs, targets))))
        return str(path.with_suffix(".txt"))
    if format == "labelled_images":  # a folder per label, a PNG per image
        from pipelines.data.idx import write_folders

        write_folders(np.asarray(inputs), np.asarray(targets), path)
        return str(path)
    raise ValueError(f"format {format!r} does not stream")


def streaming_overrides(task_name: str, kind: str, folder: pathlib.Path, shards: int,
                        *overrides) -> list:
    """Writes the task's generated splits to `folder` (`kind`: files or tfrecord); returns
    (the overrides that train from them with data.streaming=true, the training examples)."""
    if kind == "tfrecord":
        from pipelines.prepare import compose_config, prepare

        manifest = prepare(compose_config([f"task={task_name}", *overrides, f"data.out={folder}",
                                           f"data.shards={shards}"]),
                           "benchmarks/input_pipeline.py")
        return (["data=tfrecord", f"data.path={folder}", "data.streaming=true"],
                manifest["splits"]["train"]["count"])
    cfg = compose_cfg(task_name, MODELS[task_name], *overrides)
    splits = open_source(cfg.data).read(str(cfg.task.reader))
    paths = [f"data.{split}={write_files(str(cfg.task.reader), getattr(splits, split), folder / split)}"
             for split in ("train", "validation", "test") if getattr(splits, split) is not None]
    return ["data=files", *paths, "data.streaming=true"], len(splits.train[0])


def file_readers(dataset) -> set:
    """The tf.data file readers (`FILE_READERS`) in the graph of `dataset`, its functions'
    included (an interleave reads its files in one)."""
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    ops = {node.op for node in graph.node}
    ops |= {node.op for function in graph.library.function for node in function.node_def}
    return {op for op in ops if op.startswith(FILE_READERS)}


def per_second(fn, seconds, least=3):
    """Calls `fn` for about `seconds` (at least `least` times); returns calls per second."""
    count, began = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - began
        if elapsed >= seconds and count >= least:
            return count / elapsed


def measure(task_name, args, data=(), count=None):
    """pipeline/train for one task; `data`, `count`: the overrides of a streamed run and its
    training examples (`streaming_overrides`), checked to stream before anything is timed."""
    overrides = [o for o in args.overrides if not data or not o.startswith(GENERATION_KEYS)]
    cfg = compose_cfg(task_name, MODELS[task_name], *overrides, *data)
    strategy = make_strategy(cfg.distribute)
    task = build_task(cfg)
    began = time.perf_counter()
    splits = task.load()
    task.adapt(splits)
    setup = time.perf_counter() - began
    if data:
        assert isinstance(splits.train, StreamingSplit) and len(splits.train[0]) == count, (
            f"{task_name}: the training split is {splits.train!r}, not the {count} generated "
            "examples streamed")
    batch = cfg.trainer.batch_size
    with strategy.scope():
        model = task.build_model()
        optimizer = make_optimizer(cfg.trainer, total_steps=1000)
        optimizer.build(model.trainable_variables)
    trainer = Trainer(model, optimizer, task.loss, task.stats, strategy, batch, verbose=False)

    dataset = task.dataset(splits.train, training=True, batch_size=batch)
    readers = file_readers(dataset) if data else set()
    assert readers or not data, f"{task_name}: the training dataset reads no file"
    batches = iter(dataset)
    steps = iter(strategy.experimental_distribute_dataset(
        task.dataset(splits.train, training=True, batch_size=batch)))

    def train_step():
        stats = trainer._train_step(next(steps), trainer._stop_vote())  # as fit calls it
        float(stats["loss"][0])  # wait for the step, as fit's running means do

    for _ in range(3):  # trace the maps and the step, fill the shuffle buffers
        next(batches)
        train_step()
    rates = {"pipeline": [], "train": []}
    for _ in range(args.rounds):
        rates["pipeline"].append(per_second(lambda: next(batches), args.seconds))
        rates["train"].append(per_second(train_step, args.seconds))
    ratio = float(np.median(np.array(rates["pipeline"]) / np.array(rates["train"])))
    print(f"{task_name:>20} ({cfg.model.name:>11}, batch {batch}): pipeline "
          f"{np.median(rates['pipeline']):8.1f} batches/s, train {np.median(rates['train']):6.2f} "
          f"steps/s, ratio {ratio:7.1f}{'' if ratio >= 5 else '  < 5'}  "
          f"(load + adapt {setup:.0f} s, {len(splits.train[0])} train examples"
          f"{', streamed by ' + ', '.join(sorted(readers)) if readers else ''})", flush=True)
    return ratio


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(MODELS),
                        help="default: TASK_MODELS, with --streaming STREAMED_MODELS")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streaming", nargs="?", const="files", choices=("files", "tfrecord"),
                        help="data.streaming=true on the generated data written as files "
                             "(data=files, the default) or TFRecord shards (data=tfrecord)")
    parser.add_argument("--shards", type=int, default=4, help="--streaming tfrecord: shards")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides for every task (with --streaming, data.num_train "
                             "and the other sizes decide the data written)")
    args = parser.parse_args()
    tasks = args.tasks or list(STREAMED_MODELS if args.streaming else TASK_MODELS)
    if args.streaming and set(tasks) - set(STREAMED_MODELS):
        parser.error(f"--streaming: {', '.join(sorted(set(tasks) - set(STREAMED_MODELS)))} "
                     f"do not stream; streamed tasks: {', '.join(STREAMED_MODELS)}")
    print(f"median of {args.rounds} alternating rounds of {args.seconds:g} s each, "
          f"overrides: {args.overrides or 'none'}, "
          f"{'streaming from ' + args.streaming if args.streaming else 'in memory'}")
    ratios = {}
    for name in tasks:
        with tempfile.TemporaryDirectory() as folder:
            streamed = streaming_overrides(name, args.streaming, pathlib.Path(folder),
                                           args.shards, *args.overrides) if args.streaming else ()
            ratios[name] = measure(name, args, *streamed)
    lowest = min(ratios, key=ratios.get)
    print_ratio(f"pipeline/train batches per second (lowest, {lowest}/{MODELS[lowest]}"
                f"{', streaming ' + args.streaming if args.streaming else ''})", ratios[lowest])


if __name__ == "__main__":
    main()
