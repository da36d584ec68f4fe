"""Translation and NER data: the generated corpora, the file readers and their errors, TFDS."""
import collections
import gzip
import random

import pytest

from pipelines.data import synthetic_translation as st
from pipelines.data.conll import iob1_to_iob2, read_conll
from pipelines.data.files import DataFileError, FilesSource
from pipelines.data.synthetic import SyntheticSource
from pipelines.data.synthetic_ner import ner_example


def _is_iob2(tags):
    return all(not tag.startswith("I-") or (i and tags[i - 1][2:] == tag[2:]
                                             and tags[i - 1] != "O")
               for i, tag in enumerate(tags))


# ----------------------------------------------------------------------------- synthetic translation
def test_synthetic_translation_sizes_and_determinism_per_seed():
    small = dict(num_train=300, num_validation=50, num_test=50)
    a, b = SyntheticSource(seed=1, **small).read("parallel_text"), SyntheticSource(seed=1, **small).read("parallel_text")
    c = SyntheticSource(seed=2, **small).read("parallel_text")
    assert a == b and a.train != c.train
    assert [len(p[0]) for p in (a.train, a.validation, a.test)] == [300, 50, 50]
    assert a.train[0] != a.validation[0]  # each split has its own generator
    assert all(isinstance(s, str) for s in a.train[0] + a.train[1])
    lengths = [len(s.split()) for pair in (a.train, a.test) for side in pair for s in side]
    assert min(lengths) >= 4 and max(lengths) <= 20


def test_synthetic_translation_default_sizes():
    splits = SyntheticSource(seed=0).read("parallel_text")
    assert [len(p[0]) for p in (splits.train, splits.validation, splits.test)] == [20000, 1000, 1000]
    assert len(splits.train[1]) == 20000


def test_translation_is_a_pure_function_of_the_source():
    splits = SyntheticSource(seed=3, num_train=3000, num_validation=10, num_test=10).read("parallel_text")
    targets = {}
    for source, target in zip(*splits.train):
        assert st.translate(source) == target
        assert targets.setdefault(source, target) == target
    assert 200 <= len(st.SOURCE_VOCABULARY) <= 400
    # Every source lemma has its own target stem, never the source word itself.
    assert len(set(st.TARGET_STEMS.values())) == len(st.TARGET_STEMS)
    assert not set(st.TARGET_STEMS.values()) & set(st.SOURCE_VOCABULARY)
    assert set(st.GENDERS.values()) == {"m", "f", "n"}


def test_translation_example_shows_vocabulary_reordering_and_agreement():
    stem, gender = st.TARGET_STEMS, st.GENDERS
    # The docstring's example, checked by hand: teacher is neuter (-e), box masculine (-os).
    assert (gender["teacher"], gender["box"]) == ("n", "m")
    assert st.translate("the old teacher found two red boxes near my house") == (
        "zape ratatam balepe buke sudumet vak sarip vapiten fedepos nikezake ta")
    # Order: subject, PP (noun phrase + postposition), object, verb, tense particle.
    target = st.translate("the old teacher found two red boxes near my house").split()
    assert target == [stem["det", "the"] + "e", stem["noun", "teacher"], stem["adj", "old"] + "e",
                      stem["det", "my"] + "e", stem["noun", "house"], stem["prep", "near"],
                      stem["num", "two"], stem["noun", "box"] + "en", stem["adj", "red"] + "os",
                      stem["verb", "find"] + "e", "ta"]
    # Agreement with the subject's number: determiner, noun and (past!) verb all change.
    one, many = st.translate("the dog saw the cat").split(), st.translate("the dogs saw the cat").split()
    assert one[:2] != many[:2] and one[2:4] == many[2:4] and one[4] != many[4]
    assert one[-1] == many[-1] == st.PAST_PARTICLE
    assert st.translate("the dog sees the cat").split() == one[:-1]  # present: no particle
    # Agreement with gender: the same adjective and article take different suffixes.
    m_noun = next(n for n, g in gender.items() if g == "m")
    f_noun = next(n for n, g in gender.items() if g == "f")
    m_words = st.translate(f"the big {m_noun} saw a cat").split()
    f_words = st.translate(f"the big {f_noun} saw a cat").split()
    assert m_words[0] == stem["det", "the"] + "o" and f_words[0] == stem["det", "the"] + "a"
    assert m_words[2] == stem["adj", "big"] + "o" and f_words[2] == stem["adj", "big"] + "a"


def test_translate_rejects_sentences_outside_the_grammar():
    with pytest.raises(ValueError, match="not a word of the synthetic source language: 'zebra'"):
        st.translate("the zebra saw a cat")
    with pytest.raises(ValueError, match="expected SUBJECT VERB OBJECT"):
        st.translate("the dog the cat")


# ----------------------------------------------------------------------------- synthetic ner
def test_synthetic_ner_sizes_determinism_and_iob2():
    a, b = SyntheticSource(seed=1).read("conll"), SyntheticSource(seed=1).read("conll")
    c = SyntheticSource(seed=2, num_train=100).read("conll")
    assert [len(p[0]) for p in (a.train, a.validation, a.test)] == [8000, 1000, 1000]
    assert a == b and a.train[0][:100] != c.train[0]
    for tokens, tags in zip(*a.train):
        assert len(tokens) == len(tags) and _is_iob2(tags)
    types = {tag[2:] for tags in a.train[1] for tag in tags if tag != "O"}
    assert types == {"PER", "LOC", "ORG", "MISC"}


def test_synthetic_ner_needs_context_not_a_lookup():
    from seqeval.metrics import f1_score

    rng = random.Random("ambiguity")
    train = [ner_example(rng) for _ in range(4000)]
    test = [ner_example(rng) for _ in range(1000)]
    # The tags are a function of the tokens: a perfect (bidirectional) model can reach 100%.
    seen = {}
    for tokens, tags in train + test:
        assert seen.setdefault(tuple(tokens), tags) == tags
    # ... but one token gets different tags in different sentences.
    counts = collections.defaultdict(collections.Counter)
    for tokens, tags in train:
        for token, tag in zip(tokens, tags):
            counts[token][tag] += 1
    assert {"B-PER", "I-PER", "B-LOC", "I-ORG"} <= set(counts["jordan"])
    assert {"B-LOC", "B-ORG", "O"} <= set(counts["new"])  # new york / new york times / a new office
    # So the best per-token lookup stays well below 100%.
    lookup = {token: tag_counts.most_common(1)[0][0] for token, tag_counts in counts.items()}
    predicted = [[lookup.get(token, "O") for token in tokens] for tokens, _ in test]
    assert f1_score([tags for _, tags in test], predicted) < 0.85


# ----------------------------------------------------------------------------- files: translation
def _write(path, text, compress=False):
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_reads_prefix_pairs_gz_and_tsv(tmp_path):
    _write(tmp_path / "train.en", "a dog\nthe cat\n\nmany birds\n")
    _write(tmp_path / "train.de.gz", "ein Hund\ndie Katze\n\nviele Vögel\n", compress=True)
    _write(tmp_path / "val.tsv", "hello\thallo\n\nyes\tja\tCC-BY attribution\n")
    splits = FilesSource(train=str(tmp_path / "train"), validation=str(tmp_path / "val.tsv"),
                         source_lang="en", target_lang="de").read("parallel_text")
    assert splits.train == (["a dog", "the cat", "many birds"], ["ein Hund", "die Katze", "viele Vögel"])
    assert splits.validation == (["hello", "yes"], ["hallo", "ja"])
    reverse = FilesSource(train=str(tmp_path / "train"), validation=str(tmp_path / "val.tsv"),
                          source_lang="de", target_lang="en").read("parallel_text")
    assert reverse.train[0][0] == "ein Hund" and reverse.train[1][0] == "a dog"


@pytest.mark.parametrize("files,message", [
    ({"t.en": "a\nb\nc\n", "t.de": "x\ny\n"}, r"t\.en has 3 lines but .*t\.de has 2; the two files must be line-aligned"),
    ({"t.en": "a\n\nc\n", "t.de": "x\ny\nz\n"}, r"t\.en:2: empty line, but line 2 of .*t\.de is not"),
    ({"t.en": "a\nb\n", "t.de": "x\n \n"}, r"t\.de:2: empty line, but line 2 of .*t\.en is not"),
    ({"t.en": "a\n"}, r"data\.train=.*t: no such file .*t\.de\[\.gz\]. For translation data\.train is a PREFIX"),
    ({"t.en": "\n", "t.de": "\n"}, r"no sentences found"),
])
def test_parallel_file_errors(tmp_path, files, message):
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(DataFileError, match=message):
        FilesSource(train=str(tmp_path / "t"), source_lang="en", target_lang="de").read("parallel_text")


@pytest.mark.parametrize("content,message", [
    ("hello\thallo\nno tab here\n", r"bad\.tsv:2: expected 'SOURCE<TAB>TARGET'"),
    ("hello\t\n", r"bad\.tsv:1: expected 'SOURCE<TAB>TARGET' \(two non-empty"),
    ("\n\n", r"bad\.tsv: no examples found"),
])
def test_tsv_errors_name_file_and_line(tmp_path, content, message):
    _write(tmp_path / "bad.tsv", content)
    with pytest.raises(DataFileError, match=message):
        FilesSource(train=str(tmp_path / "bad.tsv")).read("parallel_text")


def test_non_utf8_line_is_named(tmp_path):
    (tmp_path / "t.en").write_bytes(b"fine\n\xff\xfe broken\n")
    _write(tmp_path / "t.de", "gut\nkaputt\n")
    with pytest.raises(DataFileError, match=r"t\.en:2: not UTF-8 text"):
        FilesSource(train=str(tmp_path / "t")).read("parallel_text")


def test_multi30k_files(shared_data):
    root = shared_data("translation/multi30k_en_de")
    splits = FilesSource(train=str(root / "train"), validation=str(root / "val"),
                         source_lang="en", target_lang="de").read("parallel_text")
    assert len(splits.train[0]) == len(splits.train[1]) == 29000
    assert len(splits.validation[0]) == 1014 and splits.test is None
    assert splits.train[0][0] == "Two young, White males are outside near many bushes."
    assert splits.train[1][0] == "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."


# ----------------------------------------------------------------------------- files: ner
_CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

"""


def test_reads_conll_columns(tmp_path):
    _write(tmp_path / "a.conll", _CONLL)
    assert read_conll(tmp_path / "a.conll") == (
        [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]],
        [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]])
    _write(tmp_path / "b.conll.gz", "x\tO\n\t\ny\tB-LOC\n", compress=True)  # tab lines are blank
    assert read_conll(tmp_path / "b.conll.gz") == ([["x"], ["y"]], [["O"], ["B-LOC"]])


def test_iob1_is_converted_to_iob2(tmp_path):
    # IOB1: an entity starts with I-; B- only separates two adjacent entities of one type.
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG", "I-MISC"]
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG", "B-MISC"]
    assert iob1_to_iob2(iob1) == iob2
    assert iob1_to_iob2(iob2) == iob2
    _write(tmp_path / "eng.train", "".join(f"w{i} NN {tag}\n" for i, tag in enumerate(iob1)))
    with pytest.raises(DataFileError, match=r"eng\.train:1: tag 'I-PER' follows 'O'.*data\.tag_scheme=iob1"):
        FilesSource(train=str(tmp_path / "eng.train")).read("conll")
    splits = FilesSource(train=str(tmp_path / "eng.train"), validation=str(tmp_path / "eng.train"),
                         tag_scheme="iob1").read("conll")
    assert splits.train[1] == [iob2]


@pytest.mark.parametrize("content,message", [
    ("EU B-ORG\nrejects\n", r"bad\.conll:2: expected at least two whitespace-separated columns"),
    ("EU B-ORG\nrejects X-VERB\n", r"bad\.conll:2: invalid tag 'X-VERB'; expected O, B-TYPE or I-TYPE"),
    ("EU S-ORG\n", r"bad\.conll:1: invalid tag 'S-ORG'"),
    ("EU B-ORG\n\nrejects O\nit I-PER\n", r"bad\.conll:4: tag 'I-PER' follows 'O'; in IOB2 an entity starts with B-PER\. If the file is IOB1, set data\.tag_scheme=iob1"),
    ("New B-LOC\nYork I-ORG\n", r"bad\.conll:2: tag 'I-ORG' follows 'B-LOC'"),
    ("\n-DOCSTART- O\n\n", r"bad\.conll: no sentences found"),
])
def test_conll_errors_name_file_and_line(tmp_path, content, message):
    _write(tmp_path / "bad.conll", content)
    with pytest.raises(DataFileError, match=message):
        FilesSource(train=str(tmp_path / "bad.conll")).read("conll")


def test_unknown_tag_scheme_is_named(tmp_path):
    _write(tmp_path / "a.conll", "EU B-ORG\n")
    with pytest.raises(DataFileError, match="data.tag_scheme must be one of iob2, iob1; received 'bio'"):
        FilesSource(train=str(tmp_path / "a.conll"), tag_scheme="bio").read("conll")


def test_conll2003_files(shared_data):
    root = shared_data("ner/conll2003")
    splits = FilesSource(train=str(root / "train.txt"), validation=str(root / "valid.txt")).read("conll")
    assert len(splits.train[0]) == 14041 and len(splits.validation[0]) == 3250
    assert sum(map(len, splits.train[0])) == 203621
    assert splits.train[0][0] == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    begins = collections.Counter(t for tags in splits.train[1] for t in tags if t.startswith("B-"))
    assert begins == {"B-LOC": 7140, "B-PER": 6600, "B-ORG": 6321, "B-MISC": 3438}


def test_wnut17_files(shared_data):
    root = shared_data("ner/wnut17")
    splits = FilesSource(train=str(root / "wnut17train.conll"),
                         validation=str(root / "emerging.dev.conll")).read("conll")
    assert len(splits.train[0]) == 3394 and len(splits.validation[0]) == 1009
    assert sum(map(len, splits.validation[0])) == 15733
    assert "Dubbz\ufeff" in {token for tokens in splits.validation[0] for token in tokens}


# ----------------------------------------------------------------------------- tfds
def _mock_dataset(examples, signature):
    def as_dataset(self, *args, **kwargs):
        import tensorflow as tf

        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)

    return as_dataset


def test_tfds_translation_picks_languages_from_the_name():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from pipelines.data.tfds_source import TfdsSource

    spec = tf.TensorSpec([], tf.string)
    pairs = [{"pt": f"olá {i}", "en": f"hello {i}"} for i in range(10)]
    with tfds.testing.mock_data(as_dataset_fn=_mock_dataset(pairs, {"pt": spec, "en": spec})):
        splits = TfdsSource(name="ted_hrlr_translate/pt_to_en", download=False).read("parallel_text")
        reverse = TfdsSource(name="ted_hrlr_translate/pt_to_en", source_lang="en",
                             download=False).read("parallel_text")
    assert splits.test == ([f"olá {i}" for i in range(10)], [f"hello {i}" for i in range(10)])
    assert len(splits.train[0]) + len(splits.validation[0]) == 10
    assert reverse.test[0][0] == "hello 0" and reverse.test[1][0] == "olá 0"

    with tfds.testing.mock_data(num_examples=6):
        wmt = TfdsSource(name="wmt14_translate/de-en", download=False, limit=4).read("parallel_text")
        with pytest.raises(RuntimeError, match=r"data.name=wmt14_translate: cannot tell the source and target language features .*set data.source_lang"):
            TfdsSource(name="wmt14_translate", download=False).read("parallel_text")
    assert len(wmt.test[0]) == 4 and all(isinstance(s, str) for s in wmt.test[0] + wmt.test[1])


def test_tfds_conll2003_maps_tag_ids_to_names():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from pipelines.data.tfds_source import TfdsSource

    # ids follow the builder's ClassLabel: O B-PER I-PER B-ORG I-ORG B-LOC I-LOC B-MISC I-MISC
    sentence = {"tokens": ["Peter", "Blackburn", "visited", "New", "York"], "ner": [1, 2, 0, 5, 6],
                "pos": [0] * 5, "chunks": [0] * 5}
    signature = {"tokens": tf.TensorSpec([None], tf.string), "ner": tf.TensorSpec([None], tf.int64),
                 "pos": tf.TensorSpec([None], tf.int64), "chunks": tf.TensorSpec([None], tf.int64)}
    with tfds.testing.mock_data(as_dataset_fn=_mock_dataset([sentence] * 5, signature)):
        splits = TfdsSource(name="conll2003", download=False).read("conll")
    assert splits.test[0][0] == ["Peter", "Blackburn", "visited", "New", "York"]
    assert splits.test[1][0] == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    # TFDS's own random mock data has token and tag sequences of different lengths.
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(RuntimeError, match=r"data.name=conll2003: example 0 of split 'train' has \d+ tokens but \d+ tags"):
            TfdsSource(name="conll2003", download=False).read("conll")
