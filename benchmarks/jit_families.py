"""XLA vs graph mode per model family: what `trainer.jit_compile=auto` (and, with --decode, `decode.jit_compile=auto`) decides.

For each backbone (lstm, gru, transformer on sentiment; cnn, vit on image classification;
unet on segmentation) the task's default model trains through our `Trainer`, once with an
XLA-compiled replica step and once without, in the same process, alternating rounds so that a
busy machine slows both alike. Prints steps/s of each and one RATIO line per family (XLA /
graph; > 1 means XLA is faster). The families where XLA wins here are the ones whose factory
says `xla_on_cpu = True` (`pipelines/models/*.py`).

With `--decode`, the decoder families instead (lstm, gru, transformer: the default
`task=translation` model of each, untrained): the task's own search (`GenerationTask.search`,
`decode.beam_size=4`, the encoder included) over the same 64 validation sentences, XLA vs
graph, alternating rounds. Both give the same tokens, so they run the same number of steps.
Prints sentences/s of each and one RATIO line per family; the families where XLA wins are
those whose factory says `xla_decode_on_cpu = True`.

    python -m benchmarks jit_families [--steps 30] [--rounds 2] [--decode]
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import compose_cfg, print_ratio  # noqa: E402

CASES = [("sentiment", "lstm"), ("sentiment", "gru"), ("sentiment", "transformer"),
         ("image_classification", "cnn"), ("image_classification", "vit"),
         ("segmentation", "unet")]


def measure(task_name, model_name, steps, rounds):
    import tensorflow as tf

    from pipelines.optimizers import make_optimizer
    from pipelines.tasks import build_task
    from pipelines.trainer import Trainer

    cfg = compose_cfg(task_name, model_name, "data.limit=512", "task.length_buckets=null"
                      if task_name == "sentiment" else "trainer.seed=42")
    task = build_task(cfg)
    splits = task.load()
    task.adapt(splits)
    batch = int(cfg.trainer.batch_size)
    strategy = tf.distribute.get_strategy()
    rates = {}
    for jit in (False, True):
        model = task.build_model()
        optimizer = make_optimizer(cfg.trainer, total_steps=1000)
        trainer = Trainer(model, optimizer, task.loss, task.stats, strategy, batch,
                          jit_compile=jit, verbose=False)
        data = iter(trainer._distribute(task.dataset(splits.train, training=True,
                                                     batch_size=batch)))
        trainer._train_step(next(data), trainer._stop_vote())  # trace and compile
        rates[jit] = (trainer, data, [])
    for _ in range(rounds):
        for jit, (trainer, data, seconds) in rates.items():
            began = time.perf_counter()
            for _ in range(steps):
                stats = trainer._train_step(next(data), trainer._stop_vote())
            float(stats["loss"][0])
            seconds.append(time.perf_counter() - began)
    graph, xla = (steps / min(rates[jit][2]) for jit in (False, True))
    print(f"{task_name:>20} {model_name:>11}: graph {graph:7.1f} steps/s, XLA {xla:7.1f} steps/s",
          flush=True)
    return xla / graph


DECODERS = ["lstm", "gru", "transformer"]


def measure_decode(model_name, rounds, sentences=64):
    import numpy as np
    import tensorflow as tf

    from pipelines.tasks import build_task

    cfg = compose_cfg("translation", model_name, "data.limit=512", "decode.beam_size=4")
    task = build_task(cfg)
    splits = task.load()
    task.adapt(splits)
    model = task.build_model()
    source = task.encode_source(tf.constant(list(splits.validation[0][:sentences])))
    # Graph mode: the search in a plain tf.function (as `translate` runs it); XLA: the task's own.
    searches = {False: tf.function(task.search(model, jit_compile=False), autograph=False),
                True: task.search(model, jit_compile=True)}
    tokens = {jit: search(source).numpy() for jit, search in searches.items()}  # trace, compile
    seconds = {jit: [] for jit in searches}
    for _ in range(rounds):
        for jit, search in searches.items():
            began = time.perf_counter()
            search(source).numpy()
            seconds[jit].append(time.perf_counter() - began)
    graph, xla = (sentences / min(seconds[jit]) for jit in (False, True))
    same = np.array_equal(tokens[False], tokens[True])
    length = float(np.mean(np.sum(tokens[True] != 0, axis=1)))
    print(f"{'translation':>20} {model_name:>11}: graph {graph:7.1f} sentences/s, XLA "
          f"{xla:7.1f} sentences/s (beam 4, {length:.1f} tokens per sentence, same tokens: "
          f"{same})", flush=True)
    return xla / graph


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decode", action="store_true",
                        help="the decoder families' beam search instead of training steps")
    args = parser.parse_args(argv)
    if args.decode:
        ratios = {model: measure_decode(model, max(args.rounds, 3)) for model in DECODERS}
        for model, ratio in ratios.items():
            print_ratio(f"{model} XLA/graph beam-4 search sentences per second", ratio)
        return
    ratios = {model: measure(task, model, args.steps, args.rounds) for task, model in CASES}
    for model, ratio in ratios.items():
        print_ratio(f"{model} XLA/graph train steps per second", ratio)


if __name__ == "__main__":
    main()
