"""Learning a subword vocabulary: keras-hub's WordPiece learner vs the compiled SentencePiece trainer.

Both learners get what `task=translation` gives them: the Multi30k training text of each
language (29,000 lines, English and German, `data_root`/translation/multi30k_en_de), one
vocabulary per language of `--vocabulary-size` tokens (8,000, as `multi30k_transformer`),
ids 0-3 reserved, cased. Timed, per language:

- wordpiece: `pipelines.tasks.generation.learn_wordpiece` (keras-hub
  `compute_word_piece_vocabulary`, then the `WordPieceTokenizer` over it);
- sentencepiece: `SentencePieceTokenizer` (the `sentencepiece` BPE trainer, then the
  tensorflow-text tokenizer over the model), the median of `--rounds` runs.

A time is the sum over the languages. For the output it also prints, on the validation text:
tokens per sentence, how many sentences come back unchanged from detokenize(tokenize(s)), and
whether sacrebleu warns that the round-tripped text looks tokenized.

    python -m benchmarks vocabulary_learning [--vocabulary-size 8000 --languages en de]

Prints `RATIO wordpiece/sentencepiece vocabulary learning = X.XX` (goal: >= 20).
"""
import argparse
import gzip
import logging
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import sacrebleu  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import REPO, print_ratio  # noqa: E402
from pipelines.tasks.generation import (SentencePieceTokenizer, WordPieceTokenizer,  # noqa: E402
                                        vocabulary_lines)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--languages", nargs="+", default=["en", "de"])
    parser.add_argument("--vocabulary-size", type=int, default=8000)
    parser.add_argument("--lines", type=int, default=None,
                        help="a seeded sample of the training lines (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="sentencepiece runs (median)")
    return parser.parse_args()


def read_lines(path: pathlib.Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return lines.read().splitlines()


def timed(build):
    began = time.perf_counter()
    tokenizer = build()
    return time.perf_counter() - began, tokenizer


def output_quality(tokenizer, validation: list[str]) -> str:
    """Tokens per sentence, exact round trips, and sacrebleu's 'tokenized' warning."""
    ids = tokenizer.tokenize(tf.constant(validation))
    back = [t.decode("utf-8") for t in tokenizer.detokenize(ids).numpy()]
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("sacrebleu")
    logger.addHandler(handler)
    try:
        sacrebleu.corpus_bleu(back, [validation])
    finally:
        logger.removeHandler(handler)
    tokenized = any("forgot to detokenize" in w for w in warnings)
    tokens = ids.row_lengths().numpy().mean()
    same = sum(b == s for b, s in zip(back, validation))
    return (f"{tokens:.1f} tokens/sentence, round trip exact for {same}/{len(validation)}, "
            f"sacrebleu 'tokenized' warning: {'yes' if tokenized else 'no'}")


def main():
    args = parse_args()
    folder = pathlib.Path(args.data_root) / "translation" / "multi30k_en_de"
    if not folder.exists():
        sys.exit(f"Multi30k not found at {folder} (--data-root)")
    size = args.vocabulary_size
    totals = {"wordpiece": 0.0, "sentencepiece": 0.0}
    for language in args.languages:
        train = vocabulary_lines(read_lines(folder / f"train.{language}.gz"), args.lines, 0)
        validation = read_lines(folder / f"val.{language}.gz")
        print(f"{language}: {len(train)} training lines, vocabulary {size}", flush=True)
        seconds, wordpiece = timed(lambda: WordPieceTokenizer(train, size, False))
        totals["wordpiece"] += seconds
        print(f"  wordpiece      {seconds:8.2f} s  {wordpiece.vocabulary_size()} tokens; "
              f"{output_quality(wordpiece, validation)}", flush=True)
        runs = [timed(lambda: SentencePieceTokenizer(train, size, False))
                for _ in range(args.rounds)]
        seconds = statistics.median(s for s, _ in runs)
        totals["sentencepiece"] += seconds
        sentencepiece = runs[0][1]
        print(f"  sentencepiece  {seconds:8.2f} s  {sentencepiece.vocabulary_size()} tokens; "
              f"{output_quality(sentencepiece, validation)} "
              f"(runs: {', '.join(f'{s:.2f}' for s, _ in runs)} s)", flush=True)
    print(f"total: wordpiece {totals['wordpiece']:.2f} s, "
          f"sentencepiece {totals['sentencepiece']:.2f} s ({os.cpu_count()} CPUs)")
    print_ratio("wordpiece/sentencepiece vocabulary learning",
                totals["wordpiece"] / totals["sentencepiece"])


if __name__ == "__main__":
    main()
