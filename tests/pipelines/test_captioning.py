"""The captioning task: padding never changes the loss, cached decoding equals the full pass,
attention maps are distributions over the grid, every decoder learns the generated captions,
the SavedModel serves the same captions, and the COCO / Flickr8k / TFDS readers."""
import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from PIL import Image

from pipelines.config import register_schemas
from pipelines.data.files import DataFileError, FilesSource
from pipelines.metrics import caption_bleu
from pipelines.models.recurrent import Recurrent
from pipelines.models.transformer import Transformer
from pipelines.run import execute
from pipelines.tasks.captioning import WordTokenizer, build_captioner, caption_loss
from tests.conftest import REPO

register_schemas()
MODELS = ["lstm", "gru", "transformer"]


def _cfg(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["task=captioning", "logger=none",
                                            "trainer.verbose=false", *overrides])


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _captioner(name, caption_length=20, vocabulary_size=30):
    if name == "transformer":
        factory = Transformer(hidden_dim=32, num_heads=4, intermediate_dim=64, num_layers=1,
                              num_decoder_layers=2, dropout=0.0)
    else:
        factory = Recurrent(cell=name, embedding_dim=16, units=32)
    factory.name = name
    return build_captioner(factory, vocabulary_size, caption_length, 32, [8, 16])


def _inputs(lengths, width, seed=0):
    """[START] w1 .. wn, padded to `width`; targets w1 .. wn [END], padded."""
    rng = np.random.default_rng(seed)
    target_in = np.zeros((len(lengths), width), np.int32)
    target_out = np.zeros((len(lengths), width), np.int32)
    for row, length in enumerate(lengths):
        words = rng.integers(4, 30, length)
        target_in[row, : length + 1] = [2, *words]
        target_out[row, : length + 1] = [*words, 3]
    images = rng.uniform(0, 255, (len(lengths), 32, 32, 3)).astype(np.float32)
    return images, target_in, target_out


# ----------------------------------------------------------------------------- masks, decoding
@pytest.mark.parametrize("name", MODELS)
def test_padding_never_changes_the_loss(name):
    model = _captioner(name)
    images, short_in, short_out = _inputs([3, 7, 5], width=9)
    long_in = np.pad(short_in, ((0, 0), (0, 11)))  # the same captions, 11 more padding steps
    long_out = np.pad(short_out, ((0, 0), (0, 11)))
    short = caption_loss(short_out, model({"image": images, "target_in": short_in})).numpy()
    long = caption_loss(long_out, model({"image": images, "target_in": long_in})).numpy()
    np.testing.assert_allclose(long, short, rtol=1e-5)
    # Whatever the logits are at padded positions, the loss stays.
    logits = model({"image": images, "target_in": long_in})
    noisy = tf.where(tf.constant(long_out == 0)[..., None], 30.0 * tf.random.normal(logits.shape), logits)
    np.testing.assert_allclose(caption_loss(long_out, noisy).numpy(), long, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_step_by_step_decoding_equals_the_full_pass(name):
    model = _captioner(name, caption_length=8)
    images, target_in, _ = _inputs([7, 4], width=8, seed=1)
    full = model({"image": images, "target_in": target_in}).numpy()  # (B, T, V)
    state = model.encode(images)
    for index in range(8):
        logits, state = model.step(tf.constant(target_in[:, index]), state, tf.constant(index))
        valid = target_in[:, index] != 0
        np.testing.assert_allclose(logits.numpy()[valid], full[valid, index], atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_attention_maps_are_distributions_over_the_grid(name):
    model = _captioner(name)
    images, target_in, _ = _inputs([5, 2], width=20)
    maps = model.attention_maps(images, target_in).numpy()
    assert maps.shape == (2, 20, 64)  # 32 x 32 pixels -> an 8 x 8 grid
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert (maps >= 0).all()


def test_word_tokenizer_round_trip_and_reference_normalisation():
    tokenizer = WordTokenizer(["A red circle.", "Two shapes, a red square"], 100, lowercase=True)
    assert tokenizer.vocabulary[:4] == ["", "[UNK]", "[start]", "[end]"]
    ids = tokenizer.tokenize(tf.constant(["a RED circle!", "a blue circle"]))
    assert ids.to_list()[1][1] == 1  # blue is unknown
    assert tokenizer.detokenize(ids[:1]).numpy()[0] == b"a red circle"
    assert tokenizer.normalize("  Two shapes, a Red square. ") == "two shapes a red square"


class _Stop(Exception):
    pass


@pytest.mark.parametrize("captions", ["all", "sample"])
def test_an_epoch_covers_every_pair_with_captions_all(captions, tmp_path, monkeypatch):
    # The default steps per epoch: image-caption pairs // batch with captions=all (3-5 captions
    # per generated image), images // batch with sample. Stopped where training would begin.
    import pipelines.run

    seen = {}

    def fit(trainer, train_ds, val_ds, epochs, steps_per_epoch, eval_steps=None):
        seen["steps"] = steps_per_epoch
        raise _Stop

    monkeypatch.setattr(pipelines.run.Trainer, "fit", fit)
    cfg = _cfg("model=gru", *TINY["gru"], "data.limit=40", "task.encoder_filters=[8,8]",
               f"task.captions={captions}", "trainer.batch_size=8", "export.enabled=false")
    with pytest.raises(_Stop):
        execute(cfg, tmp_path)
    train = _splits(cfg).train
    pairs = sum(len(refs) for refs in train[1])
    assert len(train[0]) == 40 and pairs > 120
    assert seen["steps"] == (pairs if captions == "all" else 40) // 8


# ----------------------------------------------------------------------------- learning + export
def _serve_in_fresh_process(saved_model, images: list[bytes], text_ops: bool = False):
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        {"import tensorflow_text" if text_ops else ""}
        serve = tf.saved_model.load({str(saved_model)!r}).signatures["serving_default"]
        out = serve(image_bytes=tf.constant({images!r}))
        assert not any(m.startswith(("pipelines", "layers")) for m in sys.modules), "package imported"
        print(json.dumps([c.decode() for c in out["caption"].numpy()]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd="/", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


SIZES = {"lstm": ["model.units=96", "model.embedding_dim=48"],
         "gru": ["model.units=96", "model.embedding_dim=48"],
         "transformer": ["model.hidden_dim=64", "model.intermediate_dim=128", "model.num_layers=1",
                         "model.num_decoder_layers=2", "model.dropout=0.0"]}
TINY = {"gru": ["model.units=16", "model.embedding_dim=8"],
        "transformer": ["model.hidden_dim=16", "model.intermediate_dim=32", "model.num_layers=1",
                        "model.num_decoder_layers=1"]}


@pytest.mark.parametrize("name", [pytest.param("gru", marks=pytest.mark.slow), "transformer"])
def test_export_serves_the_same_captions_in_a_fresh_process(name, tmp_path):
    cfg = _cfg(f"model={name}", *TINY[name], "debug=smoke", "data.limit=64",
               "task.encoder_filters=[8,8,8]", "decode.beam_size=2", "task.num_pictures=1",
               "trainer.eval_bleu_every=1", "task.monitor=val_bleu")
    result = execute(cfg, tmp_path)
    assert set(result.metrics) == {"bleu4", "bleu1"}
    history = json.loads((tmp_path / "checkpoints" / "trainer_state.json").read_text())["history"]
    assert 0 <= history[0]["val_bleu"] <= 100  # per-epoch validation BLEU, monitored
    assert (tmp_path / "pictures" / "attention_0.png").exists()
    rng = np.random.default_rng(5)
    images = [_png(rng.integers(0, 255, (64, 64, 3))), _png(rng.integers(0, 255, (30, 50)))]
    expected = [c.decode() for c in result.task.serve_in_process(result.model, images)["caption"]]
    assert _serve_in_fresh_process(tmp_path / "saved_model", images) == expected


def test_wordpiece_captions_export_and_serve_with_tensorflow_text(tmp_path):
    cfg = _cfg("model=gru", *TINY["gru"], "debug=smoke", "data.limit=64", "task.tokenizer=wordpiece",
               "task.vocabulary_size=200", "task.encoder_filters=[8,8,8]", "decode.beam_size=1",
               "task.num_pictures=1")
    result = execute(cfg, tmp_path)
    assert (tmp_path / "pictures" / "attention_0.png").exists()
    tokenizer = result.task.tokenizer
    ids = tokenizer.tokenize(tf.constant(["a small red circle"]))
    assert tokenizer.detokenize(ids).numpy()[0] == b"a small red circle"
    images = [_png(np.random.default_rng(1).integers(0, 255, (64, 64, 3)))]
    expected = [c.decode() for c in result.task.serve_in_process(result.model, images)["caption"]]
    assert _serve_in_fresh_process(tmp_path / "saved_model", images, text_ops=True) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_learns_generated_captions(name, tmp_path):
    cfg = _cfg(f"model={name}", *SIZES[name], "task.encoder_filters=[16,32,64]",
               "data.num_train=3000", "data.num_validation=64", "data.num_test=200",
               "trainer.epochs=4", "trainer.batch_size=32", "trainer.early_stopping_patience=null",
               "decode.beam_size=2", "export.enabled=false", "task.num_pictures=0")
    result = execute(cfg, tmp_path)
    assert set(result.metrics) == {"bleu4", "bleu1"}
    # The baseline: the best constant caption, the most common training caption.
    task, splits = result.task, _splits(cfg)
    references = [[task.tokenizer.normalize(r) for r in refs] for refs in splits.test[1]]
    counts = {}
    for refs in splits.train[1]:
        for caption in map(task.tokenizer.normalize, refs):
            counts[caption] = counts.get(caption, 0) + 1
    constant = max(counts, key=counts.get)
    baseline = caption_bleu([constant] * len(references), references)["bleu4"]
    assert result.metrics["bleu4"] > baseline + 15, (result.metrics, baseline, constant)


def _splits(cfg):
    from pipelines.data import open_source

    return open_source(cfg.data).read("image_captions")


# ----------------------------------------------------------------------------- files, tfds
def test_coco_mini_trains_exports_and_serves(shared_data, tmp_path):
    root = shared_data("image_captioning/coco2017_mini")
    cfg = _cfg("model=gru", "model.units=32", "model.embedding_dim=16", "data=files",
               f"data.train={root}/annotations/captions_train2017_mini.json",
               f"data.validation={root}/annotations/captions_val2017_mini.json",
               "data.limit=40", "task.encoder_filters=[8,16,16]", "trainer.epochs=1",
               "trainer.steps_per_epoch=2", "trainer.batch_size=8", "decode.beam_size=2",
               "task.num_pictures=1")
    result = execute(cfg, tmp_path)
    splits = _splits(cfg)
    assert len(splits.train[0]) == 40 and all(len(refs) >= 5 for refs in splits.train[1])
    assert set(result.metrics) == {"bleu4", "bleu1"}
    assert result.task.tokenizer.vocabulary_size() > 100  # real English, lower-cased words
    image = (root / "val2017").glob("*.jpg").__next__().read_bytes()
    (caption,) = _serve_in_fresh_process(tmp_path / "saved_model", [image])
    assert isinstance(caption, str)


def test_flickr8k_token_file_and_errors(tmp_path):
    folder = tmp_path / "Flicker8k_Dataset"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    tokens = tmp_path / "Flickr8k.token.txt"
    tokens.write_text("a.jpg#0\tA dog runs .\na.jpg#1\tA brown dog .\nb.jpg#0\tTwo cats .\n")
    splits = FilesSource(train=str(tokens), validation=str(tokens)).read("image_captions")
    assert splits.train[1] == [["A dog runs .", "A brown dog ."], ["Two cats ."]]
    assert isinstance(splits.train[0][0], bytes)

    tokens.write_text("a.jpg#0\tA dog runs .\na.jpg A brown dog\n")
    with pytest.raises(DataFileError, match=r"Flickr8k.token.txt:2: expected 'IMAGE.jpg#N<TAB>CAPTION'"):
        FilesSource(train=str(tokens)).read("image_captions")
    tokens.write_text("c.jpg#0\tA cat .\n")
    with pytest.raises(DataFileError, match=r"image c.jpg has captions but is not in .*Flicker8k_Dataset"):
        FilesSource(train=str(tokens)).read("image_captions")
    bad = tmp_path / "captions_train2017.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataFileError, match=r"captions_train2017.json: expected a COCO captions JSON"):
        FilesSource(train=str(bad), image_dir=str(folder)).read("image_captions")
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                               "annotations": [{"image_id": 2, "caption": "x"}]}))
    with pytest.raises(DataFileError, match=r"annotations\[0\] names image_id=2, which is not in 'images'"):
        FilesSource(train=str(bad), image_dir=str(folder)).read("image_captions")


def test_tfds_coco_captions_keeps_every_reference():
    import tensorflow_datasets as tfds

    from pipelines.data.tfds_source import TfdsSource

    rng = np.random.default_rng(0)
    examples = [{"image": _png(rng.integers(0, 255, (20, 30, 3))),
                 "captions": {"text": np.array([b"A cat .", b" a dog"]), "id": np.array([1, 2])}}
                for _ in range(10)]
    signature = {"image": tf.TensorSpec([], tf.string),
                 "captions": {"text": tf.TensorSpec([None], tf.string), "id": tf.TensorSpec([None], tf.int64)}}

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        splits = TfdsSource(name="coco_captions", download=False).read("image_captions")
    assert splits.test[1][0] == ["A cat .", "a dog"] and len(splits.test[0]) == 10
    assert isinstance(splits.test[0][0], bytes)
