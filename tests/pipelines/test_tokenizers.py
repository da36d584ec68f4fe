"""Target tokenizers of the sequence-output tasks (pipelines.tasks.generation): SentencePiece,
learned by the compiled trainer on a seeded sample, reserves ids 0-3, is reversible (generated
written text, the Multi30k validation text) and gives the same ids in training (`tf.data`)
as in a fresh process that loads the export."""
import gzip
import json
import logging
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sacrebleu
import tensorflow as tf
from hydra import compose, initialize_config_dir

from pipelines.config import register_schemas
from pipelines.data.splits import Splits
from pipelines.data.synthetic_translation import translation_example
from pipelines.export import export, serve_in_process
from pipelines.tasks import build_task
from pipelines.tasks.generation import (RESERVED, SentencePieceTokenizer, learn_sentencepiece,
                                        learn_tokenizer, vocabulary_lines)
from tests.conftest import REPO

register_schemas()


def _written(count: int, seed: int = 0) -> list[str]:
    """Generated sentences as a person writes them: capitals, hyphens, commas, quotes, a
    final period stuck to its word."""
    rng = random.Random(seed)
    extras = ["im T-Shirt", "mit Hut", "(links)", '"schnell"', "über 20 Meter", "ca. 3 m"]
    lines = []
    for _ in range(count):
        source, target = translation_example(rng)
        words = target.split()
        words.insert(rng.randrange(len(words) + 1), rng.choice(extras))
        comma = rng.randrange(1, len(words)) if len(words) > 1 else 0
        if comma:
            words[comma - 1] += ","
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?"]))
        lines.append(source.capitalize() + ".")
    return lines


def _round_trip(tokenizer, texts: list[str]) -> list[str]:
    return [t.decode("utf-8") for t in tokenizer.detokenize(tokenizer.tokenize(texts)).numpy()]


def test_sentencepiece_reserves_ids_0_to_3_and_gives_back_the_written_text():
    texts = _written(400)
    tokenizer = SentencePieceTokenizer(texts, 300, lowercase=False)
    assert tokenizer.get_vocabulary()[:4] == RESERVED
    assert (tokenizer.start_id, tokenizer.end_id) == (2, 3)
    assert 100 < tokenizer.vocabulary_size() <= 300
    unseen = _written(50, seed=1)
    assert _round_trip(tokenizer, unseen) == unseen
    ids = tokenizer.tokenize(["Ein Mann im T-Shirt."]).to_list()[0]
    assert min(ids) >= len(RESERVED)  # text never becomes a reserved id
    assert tokenizer.detokenize(tf.ragged.constant([ids])).numpy()[0] == b"Ein Mann im T-Shirt."


def test_a_tiny_corpus_keeps_its_words_as_pieces():
    """BPE: 4 sentences give one piece per word (the unigram model gave mostly letters)."""
    texts = ["le chat rouge voit un chien", "un grand chien court", "le petit oiseau chante",
             "mon chat mange poisson"] * 8
    tokenizer = SentencePieceTokenizer(texts, 4000, lowercase=False)
    assert tokenizer.tokenize(texts[:1]).row_lengths().numpy().tolist() == [6]
    assert _round_trip(tokenizer, texts[:4]) == texts[:4]


def test_a_tokenizer_survives_set_random_seed_and_a_twin():
    """tf.random.set_seed clears TF's eager kernels; tensorflow-text's resource was private
    to its kernel and went with it. A second tokenizer of the same model serves too."""
    texts = _written(100)
    tokenizer = SentencePieceTokenizer(texts, 150, lowercase=False)
    expected = tokenizer.tokenize(texts[:3]).to_list()
    tf.random.set_seed(0)
    twin = SentencePieceTokenizer(texts, 150, lowercase=False)
    tf.random.set_seed(1)
    assert tokenizer.tokenize(texts[:3]).to_list() == expected == twin.tokenize(texts[:3]).to_list()
    batches = tf.data.Dataset.from_tensor_slices(texts[:3]).batch(3).map(tokenizer.tokenize)
    assert next(iter(batches)).to_list() == expected


def test_lowercase_sentencepiece_lowers_in_the_graph_and_round_trips_lower_text():
    tokenizer = SentencePieceTokenizer(_written(200), 200, lowercase=True)
    assert _round_trip(tokenizer, ["Ein Mann im T-Shirt."]) == ["ein mann im t-shirt."]
    assert tokenizer.normalize("Ein Hut.") == "ein hut."


def test_the_vocabulary_sample_is_bounded_seeded_and_keeps_corpus_order():
    texts = [f"line {i}" for i in range(100)]
    chosen = vocabulary_lines(texts, 10, seed=3)
    assert len(chosen) == 10 and chosen == sorted(chosen, key=texts.index)
    assert chosen == vocabulary_lines(texts, 10, seed=3)
    assert chosen != vocabulary_lines(texts, 10, seed=4)
    assert vocabulary_lines(texts, None, seed=3) == texts == vocabulary_lines(texts, 500, 3)
    # the learner is deterministic: one sample, one model
    lines = _written(200)
    assert learn_sentencepiece(lines, 150) == learn_sentencepiece(lines, 150)
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        learn_tokenizer("bpe", lines, 150, False)
    with pytest.raises(ValueError, match="at least one non-empty line"):
        learn_sentencepiece(["", "  "], 150)


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=translation", "logger=none",
                                            "trainer.verbose=false", *overrides])


def test_tokenization_is_identical_in_training_and_in_the_exported_translator(tmp_path):
    """A SentencePiece translator (untrained: the tokenizers are under test) is exported, and
    a fresh process that imports only tensorflow and tensorflow_text tokenizes with the
    export's own tokenizer resources: the same ids as the training dataset's, and the same
    translations as in process."""
    task = build_task(_cfg("model=transformer", "model.hidden_dim=16", "model.num_layers=1",
                           "model.num_decoder_layers=1", "model.intermediate_dim=16",
                           "model.num_heads=2", "task.tokenizer=sentencepiece",
                           "task.vocabulary_size=200", "task.source_length=24",
                           "task.target_length=24", "decode.beam_size=1",
                           "decode.max_length=8"))
    generated = _written(300)
    task.adapt(Splits((generated[0::2], generated[1::2]), (generated[:8], generated[:8])))
    assert isinstance(task.source_tokenizer, SentencePieceTokenizer)
    model = task.build_model()
    export(task, model, tmp_path / "saved_model")
    texts = _written(6, seed=2)[:6]
    x, y = next(iter(task.dataset((texts, texts), training=False, batch_size=6)))
    in_training = {"source": x["source"].numpy().tolist(), "target": y.numpy().tolist()}
    expected = [t.decode() for t in serve_in_process(task, model, texts)["translation"]]
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        import tensorflow_text  # SentencePiece ops
        loaded = tf.saved_model.load({str(tmp_path / "saved_model")!r})
        texts = tf.constant({texts!r})
        from tensorflow_text.python.ops.sentencepiece_tokenizer import (
            gen_sentencepiece_tokenizer as ops)
        # the SentencePiece resources the export tracks (source, target), run by their own op
        resources = [r for r in loaded._misc_assets if hasattr(r, "resource_handle")]
        ids = []
        for resource in resources:
            values, splits = ops.sentencepiece_tokenize_op(
                resource.resource_handle, texts, nbest_size=0, alpha=1.0, add_bos=False,
                add_eos=False, reverse=False, out_type=tf.int32)
            ids.append(tf.RaggedTensor.from_row_splits(values, splits).to_list())
        out = loaded.signatures["serving_default"](text=texts)["translation"].numpy()
        assert not any(m.startswith(("pipelines", "layers")) for m in sys.modules)
        print(json.dumps({{"ids": ids, "translation": [t.decode() for t in out]}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd="/", timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    served = json.loads(run.stdout.strip().splitlines()[-1])
    assert served["translation"] == expected
    assert len(served["ids"]) == 2  # source and target tokenizers, tracked by the export
    source_ids, target_ids = served["ids"]
    length = task.source_length
    assert in_training["source"] == [(row + [0] * length)[:length] for row in source_ids]
    for row, ids in zip(in_training["target"], target_ids):  # ids [END] 0...: teacher forcing
        assert row[: len(ids) + 1] == ids[: task.target_length - 1] + [task.end_id]


def test_sentencepiece_round_trips_the_multi30k_validation_text(shared_data, caplog):
    """detokenize(tokenize(s)) == s on all 1,014 validation sentences of both languages, a
    vocabulary of 8,000 learned on 10,000 training lines; sacrebleu finds the output detokenized."""
    folder = shared_data("translation/multi30k_en_de")
    for language in ("en", "de"):
        with gzip.open(folder / f"train.{language}.gz", "rt", encoding="utf-8") as lines:
            train = lines.read().splitlines()
        with gzip.open(folder / f"val.{language}.gz", "rt", encoding="utf-8") as lines:
            validation = lines.read().splitlines()
        tokenizer = learn_tokenizer("sentencepiece", train, 8000, False, sample=10000, seed=0)
        back = _round_trip(tokenizer, validation)
        assert [(s, b) for s, b in zip(validation, back) if s != b] == []
        with caplog.at_level(logging.WARNING, logger="sacrebleu"):
            assert sacrebleu.corpus_bleu(back, [validation]).score == pytest.approx(100)
        assert "forgot to detokenize" not in caplog.text
        pieces = tokenizer.tokenize(validation).to_list()
        assert np.mean([len(p) for p in pieces]) < 1.6 * np.mean(
            [len(s.split()) for s in validation])  # subwords, not characters
