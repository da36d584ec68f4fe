"""Tagging speed of a BiLSTM tagger with CRF Viterbi decoding vs a per-token argmax.

One model, the NER shape: Embedding(20000, 128, mask_zero) -> our Bidirectional(LSTM(128))
-> Dense(9 tags) -> `layers.LinearChainCRF` with the IOB2 constraints of CoNLL-2003's tags.
Its potentials are decoded two ways, each compiled once in a `tf.function` (XLA off, as
the NER LSTM runs): `argmax` over the tags, and `crf.decode` (Viterbi). Batches of 64
sentences padded to 32 words, with lengths drawn from 4 to 32, are tagged in alternating
rounds (ABBA) so that load on a shared machine hits both alike.

    python -m benchmarks crf_tagging [--batches 20 --rounds 8 --length 32]

Prints sentences/s for each (median over rounds), the Viterbi share of a batch, and
`RATIO crf/argmax sentences per second = X.XX` (the median of the per-round ratios; below
1.00 is the cost of the CRF).
"""
import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import print_ratio  # noqa: E402
from layers import LSTM, Bidirectional, LinearChainCRF, iob2_allowed_transitions  # noqa: E402

BATCH, VOCAB, EMBED, UNITS = 64, 20000, 128, 128
TAGS = ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"]


def build_tagger():
    """The tagger model (word ids -> potentials) and its CRF layer, random weights."""
    word_ids = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, EMBED, mask_zero=True)(word_ids)
    x = Bidirectional(LSTM(UNITS, return_sequences=True))(x)
    crf = LinearChainCRF(len(TAGS), transitions_initializer="random_normal", name="crf",
                         **iob2_allowed_transitions(TAGS))
    potentials = crf(keras.layers.Dense(len(TAGS))(x))
    return keras.Model(word_ids, potentials), crf


def time_batches(tag, batches):
    start = time.perf_counter()
    for word_ids in batches:
        tags = tag(word_ids)
    tags.numpy()  # wait for the last batch
    return len(batches) * BATCH / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per decoder")
    parser.add_argument("--length", type=int, default=32, help="words per padded sentence")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.batches):
        lengths = rng.integers(4, args.length + 1, size=BATCH)
        ids = rng.integers(1, VOCAB, size=(BATCH, args.length))
        ids[np.arange(args.length)[None, :] >= lengths[:, None]] = 0
        batches.append(tf.constant(ids, dtype="int32"))

    model, crf = build_tagger()
    spec = [tf.TensorSpec([None, None], tf.int32)]

    @tf.function(input_signature=spec, jit_compile=False)
    def argmax_tags(word_ids):
        return tf.argmax(model(word_ids, training=False), axis=-1, output_type=tf.int32)

    @tf.function(input_signature=spec, jit_compile=False)
    def crf_tags(word_ids):
        return crf.decode(model(word_ids, training=False), word_ids != 0)

    @tf.function(input_signature=[tf.TensorSpec([None, None, len(TAGS)]),
                                  tf.TensorSpec([None, None], tf.bool)], jit_compile=False)
    def viterbi_only(potentials, mask):
        return crf.decode(potentials, mask)

    taggers = {"argmax": argmax_tags, "crf": crf_tags}
    for tag in taggers.values():  # trace and warm up
        time_batches(tag, batches[:2])
    rates = {name: [] for name in taggers}
    ratios = []
    for round_index in range(args.rounds):
        order = list(taggers) if round_index % 2 == 0 else list(taggers)[::-1]
        for name in order:
            rates[name].append(time_batches(taggers[name], batches))
        ratios.append(rates["crf"][-1] / rates["argmax"][-1])

    # The Viterbi decode alone, on the potentials of the same batches.
    potentials = [(model(b, training=False), b != 0) for b in batches]
    viterbi_only(*potentials[0]).numpy()
    viterbi_ms = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for p, mask in potentials:
            out = viterbi_only(p, mask)
        out.numpy()
        viterbi_ms.append((time.perf_counter() - start) / len(batches) * 1000)
    viterbi_ms = float(np.median(viterbi_ms))

    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"batch {BATCH}, T={args.length}, BiLSTM({UNITS}), {len(TAGS)} tags, {device}, "
          f"median of {args.rounds} rounds of {args.batches} batches")
    for name, values in rates.items():
        print(f"{name:>6}: {np.median(values):8.1f} sentences/s  (rounds: "
              + ", ".join(f"{v:.0f}" for v in values) + ")")
    print(f"Viterbi alone: {viterbi_ms:.1f} ms per batch of {BATCH} (median of {args.rounds})")
    print_ratio("crf/argmax sentences per second", np.median(ratios))


if __name__ == "__main__":
    main()
