"""The construction path (issue 13): backbones play the roles they claim, tasks read formats,
no config key is silent, defaults agree, and a task defined only here runs end to end."""
import dataclasses
import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.config import SCHEMAS, ConfigError, check, model_options, register_schemas
from pipelines.data import FORMATS, Splits
from pipelines.data.files import FilesSource
from pipelines.data.synthetic import SyntheticSource
from pipelines.models.roles import ROLES
from pipelines.models.seq2seq import EncoderDecoder
from pipelines.run import execute
from pipelines.tasks import build_backbone, build_task
from pipelines.tasks.base import Task
from tests.conftest import REPO

register_schemas()
SMALL = {"lstm": ["model.units=8", "model.embedding_dim=8"],
         "gru": ["model.units=8", "model.embedding_dim=8"],
         "transformer": ["model.hidden_dim=16", "model.intermediate_dim=32", "model.num_heads=2"],
         "cnn": ["model.filters=[4,8]"], "vit": ["model.hidden_dim=16", "model.intermediate_dim=32"],
         "unet": ["model.filters=4", "model.depth=2"]}


def _compose(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["logger=none", "trainer.verbose=false", *overrides])


def _backbone(name, *overrides):
    return build_backbone(_compose(f"model={name}", *SMALL[name], *overrides).model)


# ----------------------------------------------------------------------------- roles
def _plays(role, backbone):
    """Builds the role's networks on tiny inputs and checks the documented shapes."""
    if role == "sequence_encoder":
        ids = np.array([[5, 3, 2, 0, 0], [4, 0, 0, 0, 0]], "int32")
        pooled = backbone.text_encoder(20, 5)(ids)
        sequences = backbone.text_encoder(20, 5, return_sequences=True)(ids)
        assert pooled.shape[0] == 2 and len(pooled.shape) == 2
        assert sequences.shape[:2] == (2, 5)
        encoded = backbone.text_memory(20, 5)(ids)
        assert encoded["memory"].shape[:2] == (2, 5) and encoded["mask"].shape == (2, 5)
    elif role == "sequence_decoder":
        pixels = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
        model = EncoderDecoder(backbone.image_memory(16, [4, 8], None),
                               backbone.decoder(20, 6), source_key="image")
        target_in = np.array([[2, 7, 8, 9, 0, 0], [2, 5, 0, 0, 0, 0]], "int32")
        full = model({"image": pixels, "target_in": target_in}).numpy()
        assert full.shape == (2, 6, 20)
        state = model.encode(pixels)
        for index in range(3):  # the cached step equals the full pass at valid positions
            logits, state = model.step(tf.constant(target_in[:, index]), state, index)
            valid = target_in[:, index] != 0
            np.testing.assert_allclose(logits.numpy()[valid], full[valid, index], atol=1e-4)
        maps = model.attention_maps(pixels, target_in).numpy()
        assert maps.shape == (2, 6, 16)  # a 16 x 16 image -> a 4 x 4 grid
        np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
        assert model.generate(pixels, 2, 3, 4).shape == (2, 4)
    elif role == "language_model":
        model = backbone.causal_lm(20, 6)
        ids = np.array([[2, 7, 8, 9, 5, 0], [2, 5, 0, 0, 0, 0]], "int32")
        full = model(ids).numpy()
        assert full.shape == (2, 6, 20) and full.dtype == "float32"
        state = model.start(2)
        for index in range(6):  # the cached step equals the full causal pass
            logits, state = model.step(tf.constant(ids[:, index]), state, index)
            valid = ids[:, index] != 0
            np.testing.assert_allclose(logits.numpy()[valid], full[valid, index], atol=1e-4)
        generated = model.generate(ids[:, :2], 2, 3, 4, strategy="greedy").numpy()
        assert generated.shape == (2, 6) and (generated[:, :2] == ids[:, :2]).all()
    elif role == "image_encoder":
        features = backbone.image_encoder((16, 16, 3))(np.zeros((2, 16, 16, 3), "float32"))
        assert features.shape[0] == 2 and len(features.shape) == 2
    elif role == "segmenter":
        logits = backbone.segmenter(16, 3)(np.zeros((2, 16, 16, 3), "float32"))
        assert logits.shape == (2, 16, 16, 3) and logits.dtype == "float32"


@pytest.mark.parametrize("name", sorted(model_options()))
def test_every_backbone_plays_the_roles_it_claims(name):
    roles = list(model_options()[name].roles)
    assert roles and set(roles) <= set(ROLES), roles
    backbone = _backbone(name)
    assert backbone.name == name
    for role in roles:
        assert isinstance(backbone, ROLES[role]), (name, role)
        _plays(role, backbone)


def test_the_valid_models_of_a_task_come_from_the_roles():
    cfg = _compose("task=segmentation", "model=lstm")
    with pytest.raises(ConfigError, match="Valid models for segmentation: unet"):
        check(cfg)
    check(_compose("task=captioning", "model=gru"))


# ----------------------------------------------------------------------------- readers
# Formats only the generated data provides (visual_qa's questions about generated scenes,
# multitask's scenes with every target).
GENERATED_ONLY = {"image_questions", "labelled_scenes"}


def test_every_task_names_a_format_that_every_source_can_read():
    for path in sorted((REPO / "conf" / "task").glob("*.yaml")):
        reader = OmegaConf.load(path).reader
        assert reader in FORMATS, path
        for source in (SyntheticSource, FilesSource):
            if source is FilesSource and reader in GENERATED_ONLY:
                assert not callable(getattr(source, reader, None)), f"{reader}: not generated only"
                continue
            assert callable(getattr(source, reader)), (source, reader)


def test_an_unknown_or_unavailable_format_is_one_clear_error():
    with pytest.raises(ValueError, match="task.reader='tables' is not a data format; formats: labelled_text"):
        SyntheticSource().read("tables")


def test_text_lines_reads_documents_from_several_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\nthree\n")
    (tmp_path / "b.txt").write_text("\n\nfour\n")
    splits = FilesSource(train=f"{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}",
                         validation=str(tmp_path / "b.txt")).read("text_lines")
    assert splits.train == (["one", "two", "three", "four"], [0, 0, 1, 2])
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="blank.txt: no text"):
        FilesSource(train=str(tmp_path / "blank.txt")).read("text_lines")


# ----------------------------------------------------------------------------- silent keys
def _params(task, *overrides):
    cfg = _compose(f"task={task}", *overrides)
    check(cfg)
    built = build_task(cfg)
    built.adapt(Splits(*[built.load().train] * 2))
    return built.build_model().count_params()


@pytest.mark.parametrize("override", ["model.num_layers=2", "model.bidirectional=false",
                                      "model.merge_mode=sum"])
def test_recurrent_encoder_keys_change_the_translation_model(override):
    base = ["model=gru", "data.limit=32", "task.vocabulary_size=60", *SMALL["gru"]]
    assert _params("translation", *base, override) != _params("translation", *base)


@pytest.mark.parametrize("override", ["model.num_layers=2", "model.bidirectional=false",
                                      "model.merge_mode=sum"])
def test_recurrent_encoder_keys_are_refused_for_captioning(override):
    with pytest.raises(ConfigError, match=f"{override.split('=')[0]}=.* has no effect with "
                                          "task=captioning model=lstm.*keys this pair uses"):
        check(_compose("task=captioning", "model=lstm", override))


def test_recurrent_attention_changes_the_captioner():
    base = ["model=lstm", "data.limit=16", "task.image_size=16", "task.encoder_filters=[4,8]",
            *SMALL["lstm"]]
    assert _params("captioning", *base, "model.attention=dot") != _params("captioning", *base)


@pytest.mark.parametrize("task", ["translation", "captioning"])
def test_transformer_attention_changes_the_encoder_decoder(task):
    """model.attention=linear reaches the encoder blocks: same weights, other outputs."""
    extra = (["task.image_size=16", "task.encoder_filters=[4,8]"] if task == "captioning"
             else ["task.vocabulary_size=60"])
    outputs = []
    for attention in ("softmax", "linear"):
        cfg = _compose(f"task={task}", "model=transformer", "data.limit=16", *extra,
                       *SMALL["transformer"], f"model.attention={attention}")
        built = build_task(cfg)
        splits = built.load()
        built.adapt(Splits(splits.train, splits.train))
        keras.utils.set_random_seed(0)
        model = built.build_model()
        x, _ = next(iter(built.dataset(splits.train, training=False, batch_size=4)))
        outputs.append(model(x).numpy())
    assert outputs[0].shape == outputs[1].shape
    assert not np.allclose(outputs[0], outputs[1], atol=1e-3)


def test_segmentation_brightness_is_a_key():
    cfg = _compose("task=segmentation", "task.brightness=0", "task.image_size=16")
    built = build_task(cfg)
    image = tf.fill([16, 16, 3], 100.0)
    mask = tf.zeros([16, 16], tf.uint8)
    for _ in range(5):  # flips change nothing on a flat image, and brightness is off
        np.testing.assert_array_equal(built.augment(image, mask)[0].numpy(), 100.0)
    built = build_task(_compose("task=segmentation", "task.brightness=50", "task.image_size=16"))
    shifted = [float(built.augment(image, mask)[0].numpy().mean()) for _ in range(8)]
    assert max(abs(s - 100.0) for s in shifted) > 1.0 and all(abs(s - 100) <= 50 for s in shifted)


# ----------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("name", sorted(model_options()))
def test_factory_defaults_agree_with_the_schema(name):
    """Defaults live in the schema; a factory's own defaults (for use from Python) match it."""
    option = model_options()[name]
    schema_name = option.defaults[0].removeprefix("/schema_model_").removesuffix("@_here_")
    schema = SCHEMAS["model"][schema_name]
    factory = type(_backbone(name))
    parameters = inspect.signature(factory.__init__).parameters
    for field in dataclasses.fields(schema):
        if field.name in parameters and parameters[field.name].default is not inspect.Parameter.empty:
            default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
                       else getattr(field.default, "value", field.default))  # an enum choice: its value
            assert list(np.atleast_1d(parameters[field.name].default)) == list(np.atleast_1d(default)), (
                name, field.name)


# ----------------------------------------------------------------------------- a new task
class CharacterCount(Task):
    """A task defined only here: how many words a line has (`text_lines`), by regression on
    a sequence encoder. Nothing else in the package knows about it."""

    def adapt(self, splits):
        self.vectorizer = keras.layers.TextVectorization(max_tokens=200, output_sequence_length=8)
        self.vectorizer.adapt(splits.train[0])

    def dataset(self, pair, training, batch_size):
        counts = np.array([min(len(t.split()), 8) for t in pair[0]], "float32")
        ds = tf.data.Dataset.from_tensor_slices((list(pair[0]), counts))
        ds = (ds.repeat() if training else ds).batch(batch_size, drop_remainder=training)
        return ds.map(lambda text, y: (self.vectorizer(text), y))

    def build_model(self):
        ids = keras.Input((None,), dtype="int32")
        x = self.backbone.text_encoder(self.vectorizer.vocabulary_size(), 8)(ids)
        return keras.Model(ids, keras.layers.Dense(1, dtype="float32")(x)[:, 0], name=self.model_name)

    def loss(self, y_true, y_pred):
        return tf.square(y_true - y_pred)

    def stats(self, y_true, y_pred):
        error = tf.abs(y_true - y_pred)
        return {"error": (tf.reduce_sum(error), tf.cast(tf.size(error), tf.float32))}

    def evaluate(self, model, pair, batch_size):
        predicted = model.predict(self.vectorizer(tf.constant(pair[0][:64])), verbose=0)
        truth = np.array([min(len(t.split()), 8) for t in pair[0][:64]])
        return {"mean_absolute_error": float(np.abs(predicted - truth).mean())}

    def serving_fn(self, model):
        return lambda text: {"count": model(self.vectorizer(text))}

    def trackables(self):
        return [self.vectorizer]


def test_a_task_defined_only_in_a_test_runs_the_whole_path(tmp_path):
    task_cfg = OmegaConf.create({"name": "word_count", "_target_": f"{__name__}.CharacterCount",
                                 "reader": "text_lines", "needs": ["sequence_encoder"],
                                 "monitor": "val_loss"})
    cfg = _compose("model=gru", *SMALL["gru"], "debug=smoke", "data.limit=64")
    OmegaConf.set_struct(cfg, False)
    cfg.task = task_cfg
    check(cfg)
    result = execute(cfg, tmp_path)
    assert set(result.metrics) == {"mean_absolute_error"}
    served = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    texts = ["the old teacher sees a dog", "a dog"]
    np.testing.assert_allclose(served(text=tf.constant(texts))["count"].numpy(),
                               result.task.serve_in_process(result.model, texts)["count"],
                               atol=1e-5)
