"""Data hygiene: a pretraining corpus shares no sentence with the split that its fine-tuning
experiment scores (sentences normalised: lower case, whitespace collapsed).

Sentences are compared as written (lower case, whitespace collapsed) and, from 3 words on,
by their letters and digits only (another tokenization of the same sentence). Every
experiment with `model.init_from=outputs/<name>` fine-tunes from the run of the
pretraining experiment `<name>`; its corpus is read as the task reads it (`task.exclude_texts`
applied) and compared with the fine-tuning experiment's evaluation split (data.test). Skips
with a reason where ../shared/data is absent.
"""
import pathlib
import re

import pytest
from hydra import compose, initialize_config_dir

from pipelines.config import register_schemas
from tests.conftest import REPO

register_schemas()
EXPERIMENTS_DIR = REPO / "conf" / "experiment"


def normalize(text: str) -> str:
    """Lower case, whitespace collapsed."""
    return " ".join(text.lower().split())


def letters(text: str) -> str:
    """Lower case, letters and digits only: other tokenizations of a sentence agree."""
    return re.sub(r"[\W_]+", "", text.lower())


def _compose(name, *overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", *overrides])


def _fine_tuned() -> dict[str, str]:
    """{fine-tuning experiment: its pretraining experiment}, from model.init_from."""
    pairs = {}
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        init_from = _compose(path.stem).model.get("init_from")
        if init_from:
            pairs[path.stem] = pathlib.Path(init_from).name
    return pairs


FINE_TUNED = _fine_tuned()


def _texts(pair, task_name, key=normalize) -> set[str]:
    inputs = pair[0] if pair else []
    if task_name == "ner":
        inputs = [" ".join(tokens) for tokens in inputs]
    return {key(text) for text in inputs}


def _sentences(pair, task_name) -> set[str]:
    """The texts of 3 words or more, by their letters (a one-word line such as "bad ." is
    no sentence to leak)."""
    inputs = pair[0] if pair else []
    texts = [" ".join(t) for t in inputs] if task_name == "ner" else list(inputs)
    return {letters(text) for text in texts if len(text.split()) >= 3}


def test_the_pretrained_experiments_name_their_pretraining_experiment():
    assert {"sst2_pretrained", "conll2003_pretrained"} <= set(FINE_TUNED)
    for pretraining in FINE_TUNED.values():
        assert (EXPERIMENTS_DIR / f"{pretraining}.yaml").is_file()
        assert _compose(pretraining).task.name == "masked_lm"


@pytest.mark.parametrize("name", sorted(FINE_TUNED))
def test_no_scored_sentence_is_in_the_pretraining_corpus(name, shared_data):
    from pipelines.tasks import build_task

    root = f"data_root={shared_data('.').resolve()}"
    fine, pretraining = _compose(name, root), _compose(FINE_TUNED[name], root)
    assert fine.data.test, f"{name}: the scored split is data.test"
    scored_splits = build_task(fine).load()
    scored = _texts(scored_splits.test, fine.task.name)
    corpus_splits = build_task(pretraining).load()
    corpus = set().union(*(_texts(pair, "masked_lm") for pair in
                           (corpus_splits.train, corpus_splits.validation, corpus_splits.test)))
    shared = sorted(scored & corpus)
    assert not shared, (f"{FINE_TUNED[name]}'s corpus holds {len(shared)} sentences of "
                        f"{name}'s scored split {fine.data.test}, e.g. {shared[:5]}")
    # Nor under another tokenization of the same sentence.
    corpus_letters = set().union(*(_sentences(pair, "masked_lm") for pair in
                                   (corpus_splits.train, corpus_splits.validation, corpus_splits.test)))
    shared = sorted(_sentences(scored_splits.test, fine.task.name) & corpus_letters)
    assert not shared, f"{FINE_TUNED[name]}: {len(shared)} scored sentences, e.g. {shared[:5]}"
    # The fine-tuning's own training text (its model selection split included) is allowed.
    assert _texts(scored_splits.train, fine.task.name) - scored


def _sst2(shared_data, name) -> list[str]:
    return [normalize(line.split(" ", 1)[1]) for line in
            (shared_data("sentiment/sst2") / name).read_text(encoding="utf-8").splitlines()]


def test_rt_polarity_is_never_the_sst2_pretraining_text(shared_data):
    """88% of the SST-2 dev sentences are rt-polarity snippets: no SST-2 pretraining run may
    read it, and the check above would catch it."""
    folder = shared_data("sentiment/rt_polarity")
    snippets = "\n".join(letters(line) for name in ("rt-polarity.pos", "rt-polarity.neg")
                         for line in (folder / name).read_text(encoding="cp1252").splitlines())
    dev = [letters(sentence) for sentence in _sst2(shared_data, "stsa.binary.dev")]
    # 95% of the dev sentences are (parts of) snippets, 79% whole snippets.
    assert sum(sentence in snippets for sentence in dev) / len(dev) > 0.9
    for name, pretraining in FINE_TUNED.items():
        cfg = _compose(pretraining)
        named = " ".join(str(cfg.data[key]) for key in ("train", "validation", "test"))
        assert "rt_polarity" not in named and "rt-polarity" not in named, pretraining


def test_the_glue_phrases_and_sst2_train_hold_no_dev_sentence(shared_data):
    """The phrase file (phrases of TRAIN sentences) is legitimate text: not one dev sentence
    is among its 67,349 rows, nor among the train sentences (so nothing had to be filtered)."""
    import csv

    dev = set(_sst2(shared_data, "stsa.binary.dev"))
    with open(shared_data("sentiment/sst2") / "glue_sst2_train_phrases.tsv", encoding="utf-8") as f:
        phrases = {normalize(row["sentence"]) for row in csv.DictReader(f, delimiter="\t")}
    assert len(phrases) > 60000
    assert not dev & phrases
    assert not dev & set(_sst2(shared_data, "stsa.binary.train"))
    # By letters only, two one-word dev lines ("cool ?", "bad .") equal phrases: no sentences.
    assert {d for d in dev if len(d.split()) >= 3} & phrases == set()
    assert len({letters(d) for d in dev} & {letters(p) for p in phrases}) == 2


def test_conll_train_repeats_testa_lines_which_the_pretraining_corpus_drops(shared_data):
    """train.txt itself holds 196 testa sentences (130 distinct: "scorers :", datelines, table
    headers): the CoNLL pretraining run needs its task.exclude_texts=valid.txt."""
    from pipelines.data.conll import read_conll

    folder = shared_data("ner/conll2003")
    train = _texts(read_conll(folder / "train.txt", "iob2"), "ner")
    testa = _texts(read_conll(folder / "valid.txt", "iob2"), "ner")
    assert len(train & testa) == 130
    assert len(_texts(read_conll(folder / "train.txt", "iob2"), "ner", letters)
               & _texts(read_conll(folder / "valid.txt", "iob2"), "ner", letters) - {""}) == 135
    assert _compose("conll2003_masked_lm").task.exclude_texts.endswith("ner/conll2003/valid.txt")
