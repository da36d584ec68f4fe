"""Peak resident memory of a streaming translation run on 10k vs 1M sentence pairs: flat?

Writes two generated corpora (`pipelines.data.synthetic_translation`, one seed) as
line-aligned `PREFIX.en` / `PREFIX.de` files, `--small` and `--large` pairs (10,000 and
1,000,000 by default), and one validation corpus of `--validation` pairs both runs share.
Then, each in its own process:

    python -m pipelines task=translation model=transformer data=files data.train=PREFIX
        data.validation=VAL data.streaming=true task.vocabulary_sample=N trainer.epochs=1
        trainer.steps_per_epoch=STEPS logger=none export.enabled=false (a small transformer)

The peak is the kernel's high-water mark of the process's resident set (VmHWM while it runs,
ru_maxrss at exit; `common.run_measured`): TensorFlow's native allocations included. With
`--whole` the large corpus is also run with data.streaming=false, for comparison.

    python -m benchmarks streaming_memory [--small 10000 --large 1000000 --steps 5]

Prints MiB and seconds per run, then `RATIO peak RSS 1M / 10k pairs = X.XX` (goal <= 1.2).
"""
import argparse
import pathlib
import random
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import print_ratio, run_checked  # noqa: E402
from pipelines.data.synthetic_translation import translation_example  # noqa: E402

MODEL = ["model=transformer", "model.hidden_dim=64", "model.intermediate_dim=128",
         "model.num_heads=2", "model.num_layers=1", "model.num_decoder_layers=1"]


def write_corpus(prefix: pathlib.Path, pairs: int, seed: int) -> str:
    """`pairs` generated sentence pairs as PREFIX.en / PREFIX.de, written as they are drawn."""
    rng = random.Random(seed)
    with open(f"{prefix}.en", "w") as source, open(f"{prefix}.de", "w") as target:
        for _ in range(pairs):
            english, other = translation_example(rng)
            source.write(english + "\n")
            target.write(other + "\n")
    return str(prefix)


def command(train: str, validation: str, args, streaming: bool, run_dir: str) -> list:
    return [sys.executable, "-m", "pipelines", "task=translation", *MODEL, "data=files",
            f"data.train={train}", f"data.validation={validation}",
            f"data.streaming={str(streaming).lower()}",
            f"task.vocabulary_sample={args.vocabulary_sample}", "task.vocabulary_size=1000",
            "trainer.epochs=1", f"trainer.steps_per_epoch={args.steps}",
            f"trainer.eval_steps={args.steps}", "trainer.batch_size=64", "decode.beam_size=1",
            "trainer.verbose=false", "logger=none", "export.enabled=false",
            f"hydra.run.dir={run_dir}"]


def measure(label: str, cmd: list) -> float:
    seconds, rss = run_checked(cmd, label)
    print(f"{label:>34}: {rss / 2**20:7.0f} MiB  {seconds:6.1f} s", flush=True)
    return rss


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000, help="pairs of the small corpus")
    parser.add_argument("--large", type=int, default=1_000_000, help="pairs of the large one")
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5, help="training steps per run")
    parser.add_argument("--vocabulary-sample", type=int, default=10_000,
                        help="task.vocabulary_sample: lines each vocabulary learns on")
    parser.add_argument("--whole", action="store_true",
                        help="also run the large corpus read whole (data.streaming=false)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        validation = write_corpus(folder / "val", args.validation, seed=1)
        peaks = {}
        for name, pairs in (("small", args.small), ("large", args.large)):
            train = write_corpus(folder / name, pairs, seed=0)
            size = sum((folder / f"{name}.{lang}").stat().st_size for lang in ("en", "de"))
            print(f"{name}: {pairs:,} pairs, {size / 2**20:.0f} MiB of text", flush=True)
            peaks[name] = measure(f"streaming, {pairs:,} pairs",
                                  command(train, validation, args, True, str(folder / f"run_{name}")))
            if name == "large" and args.whole:
                measure(f"read whole, {pairs:,} pairs",
                        command(train, validation, args, False, str(folder / "run_whole")))
            for lang in ("en", "de"):
                (folder / f"{name}.{lang}").unlink()
    print_ratio(f"peak RSS {short(args.large)} / {short(args.small)} pairs",
                peaks["large"] / peaks["small"])


def short(count: int) -> str:
    """1000000 -> 1M, 10000 -> 10k."""
    for size, suffix in ((10**6, "M"), (10**3, "k")):
        if count >= size and count % size == 0:
            return f"{count // size}{suffix}"
    return str(count)


if __name__ == "__main__":
    main()
