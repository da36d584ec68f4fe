"""Data sources: the generated corpus, the file readers and their errors, TFDS by name."""
import pytest

from pipelines.data.files import DataFileError, FilesSource, read_text_classification
from pipelines.data.synthetic import SyntheticSource


def test_synthetic_sentiment_is_deterministic_per_seed_and_balanced():
    a, b = SyntheticSource(seed=1).read("labelled_text"), SyntheticSource(seed=1).read("labelled_text")
    c = SyntheticSource(seed=2).read("labelled_text")
    assert a.train == b.train and a.test == b.test
    assert a.train != c.train
    assert len(a.train[0]) == 8000 and len(a.validation[0]) == 1000 and len(a.test[0]) == 1000
    positive = a.train[1].count("positive") / len(a.train[1])
    assert 0.45 < positive < 0.55


def test_synthetic_sentiment_needs_word_order():
    """A bag-of-words classifier stays far from what the LSTM reaches (>= 0.9)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    splits = SyntheticSource(seed=0, num_train=4000, num_test=1000).read("labelled_text")
    bag = CountVectorizer()
    classifier = LogisticRegression(max_iter=2000).fit(bag.fit_transform(splits.train[0]),
                                                       splits.train[1])
    accuracy = classifier.score(bag.transform(splits.test[0]), splits.test[1])
    assert accuracy < 0.7, accuracy


def test_limit_keeps_the_first_examples():
    full, small = SyntheticSource().read("labelled_text"), SyntheticSource(limit=10).read("labelled_text")
    assert small.train[0] == full.train[0][:10] and len(small.test[0]) == 10


def test_files_limit_draws_a_seeded_subset_across_the_class_folders(tmp_path):
    import numpy as np
    from PIL import Image

    for label in "abc":  # read class by class: the first 4 would all be "a"
        (tmp_path / label).mkdir()
        for index in range(6):
            value = 80 * "abc".index(label) + index
            Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(tmp_path / label / f"{index}.png")

    def subset(seed):
        splits = FilesSource(train=str(tmp_path), validation=str(tmp_path), limit=4,
                             seed=seed).read("labelled_images")
        assert len(splits.train[0]) == 4 and len(splits.validation[0]) == 4
        return [(label, int(image[0, 0, 0])) for image, label in zip(*splits.train)]

    first = subset(42)
    assert len({label for label, _ in first}) > 1
    assert subset(42) == first and first == sorted(first)  # the same subset, in file order
    assert subset(7) != first
    full = FilesSource(train=str(tmp_path), validation=str(tmp_path)).read("labelled_images")
    assert len(full.train[0]) == 18


def test_reads_label_text_lines_csv_and_tsv(tmp_path):
    (tmp_path / "a.txt").write_text("1 a fine film\n\n0 a dull , slow film\n")
    assert read_text_classification(tmp_path / "a.txt") == (["a fine film", "a dull , slow film"], ["1", "0"])
    (tmp_path / "a.csv").write_text('text,label\n"good, really",pos\nbad,neg\n')
    assert read_text_classification(tmp_path / "a.csv") == (["good, really", "bad"], ["pos", "neg"])
    (tmp_path / "a.tsv").write_text("label\tsentence\n1\tgood\n0\tbad\n")
    texts, labels = read_text_classification(tmp_path / "a.tsv", text_column="sentence")
    assert texts == ["good", "bad"] and labels == ["1", "0"]


@pytest.mark.parametrize("name,content,message", [
    ("bad.txt", "1 fine\nlonely\n", r"bad.txt:2: expected 'LABEL TEXT'"),
    ("bad.csv", "text,label\ngood,1\nbad\n", r"bad.csv:3: expected 2 fields"),
    ("cols.csv", "review,score\ngood,1\n", r"cols.csv:1: header has no column 'text', 'label'"),
    ("empty.txt", "\n\n", r"empty.txt: no examples found"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataFileError, match=message):
        read_text_classification(tmp_path / name)


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(DataFileError, match="data.train=.*nope.txt: no such file"):
        FilesSource(train=str(tmp_path / "nope.txt")).read("labelled_text")


def test_files_source_holds_out_validation(tmp_path):
    lines = "".join(f"{i % 2} text number {i}\n" for i in range(100))
    (tmp_path / "train.txt").write_text(lines)
    splits = FilesSource(train=str(tmp_path / "train.txt"), validation_fraction=0.2).read("labelled_text")
    assert len(splits.train[0]) == 80 and len(splits.validation[0]) == 20 and splits.test is None
    assert not set(splits.train[0]) & set(splits.validation[0])
    assert splits.evaluation_name == "validation"


def test_sst2_files(shared_data):
    root = shared_data("sentiment/sst2")
    splits = FilesSource(train=str(root / "stsa.binary.train"),
                         validation=str(root / "stsa.binary.dev")).read("labelled_text")
    assert len(splits.train[0]) == 6920 and len(splits.validation[0]) == 872
    assert set(splits.train[1]) == {"0", "1"}
    phrases = read_text_classification(root / "glue_sst2_train_phrases.tsv", text_column="sentence")
    assert len(phrases[0]) == 67349


def test_tfds_by_name_with_mock_data():
    import tensorflow_datasets as tfds

    from pipelines.data.tfds_source import TfdsSource

    with tfds.testing.mock_data(num_examples=12):
        splits = TfdsSource(name="imdb_reviews", download=False).read("labelled_text")
    assert len(splits.test[0]) == 12 and len(splits.train[0]) + len(splits.validation[0]) == 12
    assert set(splits.train[1]) <= {"neg", "pos"}
    assert all(isinstance(t, str) for t in splits.train[0])


def test_tfds_unknown_name_is_a_clear_error():
    from pipelines.data.tfds_source import TfdsSource

    with pytest.raises(RuntimeError, match="data.name=no_such_dataset_xyz: TensorFlow Datasets could not load it"):
        TfdsSource(name="no_such_dataset_xyz").read("labelled_text")
