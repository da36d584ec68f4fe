"""The reference experiments in conf/experiment/: each composes (no TensorFlow) into the right
task, model and data files, its files exist where the shared data is, and (slow) each runs its
whole path with debug=smoke on the real data."""
import pathlib
import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.config import ConfigError, check, register_schemas
from tests.conftest import REPO, SHARED_DATA

register_schemas()
EXPERIMENTS_DIR = REPO / "conf" / "experiment"

# The data files of each data set, relative to `data_root` (`mnist_dir` for MNIST).
MULTI30K = {"train": "translation/multi30k_en_de/train", "test": "translation/multi30k_en_de/val"}
CONLL = {"train": "ner/conll2003/train.txt", "test": "ner/conll2003/valid.txt"}
WNUT17 = {"train": "ner/wnut17/wnut17train.conll", "test": "ner/wnut17/emerging.dev.conll"}
SST2 = {"train": "sentiment/sst2/stsa.binary.train", "test": "sentiment/sst2/stsa.binary.dev"}
MNIST_FOLDERS = {"train": "train", "test": "test"}
SST2_PHRASES = {"train": "sentiment/sst2/glue_sst2_train_phrases.tsv"}
CONLL_TRAIN = {"train": "ner/conll2003/train.txt"}
DRIVE = {"train": "semantic_segmentation/drive/training"}
COCO = {split: f"image_captioning/coco2017_mini/annotations/captions_{name}2017_mini.json"
        for split, name in (("train", "train"), ("validation", "val"))}
COCO_IMAGE_TEXT = {"train": COCO["train"],
                   "test": "image_captioning/coco2017_mini/annotations/captions_val2017_mini.json"}
# name -> (task, model, data files)
EXPECTED = {
    "multi30k_transformer": ("translation", "transformer", MULTI30K),
    "multi30k_gru_attention": ("translation", "gru", MULTI30K),
    "conll2003_bilstm": ("ner", "lstm", CONLL),
    "conll2003_transformer": ("ner", "transformer", CONLL),
    "wnut17_bilstm": ("ner", "lstm", WNUT17),
    "sst2_lstm": ("sentiment", "lstm", SST2),
    "sst2_transformer": ("sentiment", "transformer", SST2),
    "mnist_cnn": ("image_classification", "cnn", MNIST_FOLDERS),
    "mnist_vit": ("image_classification", "vit", MNIST_FOLDERS),
    "drive_unet": ("segmentation", "unet", DRIVE),
    "coco_mini_captioning": ("captioning", "gru", COCO),
    "coco_mini_image_text": ("image_text", "cnn", COCO_IMAGE_TEXT),
    "scenes_zero_shot": ("image_text", "cnn", {}),
    "scenes_visual_qa": ("visual_qa", "cnn", {}),
    "scenes_multitask": ("multitask", "cnn", {}),
    "lm_multi30k_en": ("language_modeling", "transformer",
                       {split: f"{path}.en.gz" for split, path in MULTI30K.items()}),
    "sst2_masked_lm": ("masked_lm", "transformer", SST2_PHRASES),
    "sst2_pretrained": ("sentiment", "transformer", SST2),
    "sst2_scratch": ("sentiment", "transformer", SST2),
    "conll2003_masked_lm": ("masked_lm", "transformer", CONLL_TRAIN),
    "conll2003_pretrained": ("ner", "transformer", CONLL),
    "conll2003_scratch": ("ner", "transformer", CONLL),
    "sst2_zero_shot": ("zero_shot_text", "transformer", SST2),
}
# Fine-tuned from the run of a pretraining experiment (model.init_from=outputs/<that name>).
PRETRAINED_FROM = {"sst2_pretrained": "sst2_masked_lm", "conll2003_pretrained": "conll2003_masked_lm",
                   "sst2_zero_shot": "sst2_masked_lm"}
# Experiments that take the pretraining run whole (no training): without one, check refuses.
NEED_THE_RUN = {"sst2_zero_shot"}
# Smoke runs pretrain on 128 lines: verbalizer words every WordPiece vocabulary holds (letters).
SMOKE = {"sst2_zero_shot": ["task.verbalizers.negative=[a]", "task.verbalizers.positive=[e]"]}
WITHOUT_PRETRAINING_RUN = ("model.init_from=null", "trainer.freeze_epochs=0")
# data=synthetic: no files, no data_root
GENERATED = {"scenes_zero_shot", "scenes_visual_qa", "scenes_multitask"}
MNIST = {"mnist_cnn", "mnist_vit"}  # image folders converted from IDX: `mnist_dir`, not data_root
METRICS = {"translation": {"bleu", "chrf"}, "ner": {"f1", "precision", "recall"},
           "sentiment": {"accuracy", "macro_f1"},
           "image_classification": {"accuracy", "top5_accuracy"},
           # drive_unet has 2 classes: the vessel class's f1 and auc come on top
           "segmentation": {"mean_iou", "pixel_accuracy", "dice", "f1", "auc"},
           "captioning": {"bleu4", "bleu1"},
           "language_modeling": {"perplexity", "bits_per_token"},
           "masked_lm": {"masked_accuracy", "perplexity"},
           "zero_shot_text": {"accuracy", "macro_f1", "chance_accuracy", "lexicon_accuracy",
                              "lexicon_macro_f1"},
           "image_text": {f"{way}_recall_at_{k}" for way in ("image_to_text", "text_to_image")
                          for k in (1, 5, 10)},
           "visual_qa": {"accuracy", "colour_accuracy", "shape_accuracy", "count_accuracy",
                         "prior_accuracy"},
           "multitask": {"objective", "shape_accuracy", "shape_top5_accuracy", "mask_mean_iou",
                         "mask_pixel_accuracy", "mask_dice", "caption_bleu4", "caption_bleu1"}}
# Experiments whose metrics differ from their task's default set.
EXPERIMENT_METRICS = {"scenes_zero_shot": METRICS["image_text"] | {
    "zero_shot_harmonic", "zero_shot_unseen", "zero_shot_seen", "zero_shot_unseen_images",
    "zero_shot_accuracy", "zero_shot_images"}}


def _compose(name, *overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", *overrides])


def _paths(cfg) -> dict[str, str]:
    """The data files the experiment names, resolved: {key: path}."""
    return {key: cfg.data[key] for key in ("train", "validation", "test")
            if cfg.data[key] is not None}


def _base_key(name):
    return "mnist_dir" if name in MNIST else "data_root"


def test_every_experiment_file_has_an_expectation():
    assert sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_composes_into_its_task_model_and_files(name):
    task, model, files = EXPECTED[name]
    if name in PRETRAINED_FROM:  # the run directory that the pretraining experiment writes
        assert _compose(name).model.init_from == f"outputs/{PRETRAINED_FROM[name]}"
        pretraining = OmegaConf.load(EXPERIMENTS_DIR / f"{PRETRAINED_FROM[name]}.yaml")
        assert pretraining.hydra.run.dir == f"outputs/{PRETRAINED_FROM[name]}"
    cfg = _compose(name, *(WITHOUT_PRETRAINING_RUN if name in PRETRAINED_FROM else ()))
    if name in NEED_THE_RUN:
        with pytest.raises(ConfigError, match="needs model.init_from=RUN_DIR"):
            check(cfg)
    else:
        check(cfg)
    if name in GENERATED:
        assert (cfg.task.name, cfg.model.name, cfg.data.source.value) == (task, model, "synthetic")
        return
    assert (cfg.task.name, cfg.model.name, cfg.data.source.value) == (task, model, "files")
    base = "data/mnist" if name in MNIST else "../shared/data"
    assert OmegaConf.select(cfg, _base_key(name)) == base
    assert _paths(cfg) == {key: f"{base}/{path}" for key, path in files.items()}


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - GENERATED))
def test_one_key_moves_every_data_path(name):
    cfg = _compose(name, f"{_base_key(name)}=/somewhere/else")
    assert _paths(cfg) and all(p.startswith("/somewhere/else/") for p in _paths(cfg).values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_documents_what_it_reproduces_and_how_to_run_it(name):
    text = (EXPERIMENTS_DIR / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    header = text.split("\ndefaults:")[0]
    for part in ("Reproduces:", "Anchor:", "Expected training time on a 2-core CPU: about",
                 f"python -m pipelines experiment={name}\n"):
        assert part in header, f"{name}.yaml: the header lacks {part!r}"


def _translation_files(prefix: pathlib.Path, cfg) -> list[pathlib.Path]:
    return [prefix.parent / f"{prefix.name}.{lang}.gz"
            for lang in (cfg.data.source_lang, cfg.data.target_lang)]


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - MNIST - GENERATED))
def test_data_files_exist_in_shared_data(name, shared_data):
    root = shared_data(".")  # skips with a reason where ../shared/data is absent
    cfg = _compose(name, f"data_root={root.resolve()}")
    for key, path in _paths(cfg).items():
        path = pathlib.Path(path)
        if cfg.task.name == "translation":  # a PREFIX naming PREFIX.en.gz and PREFIX.de.gz
            missing = [p for p in _translation_files(path, cfg) if not p.is_file()]
            assert not missing, f"{name}: data.{key} names missing files {missing}"
        else:
            assert path.exists(), f"{name}: data.{key}={path} does not exist"
        if cfg.task.name == "segmentation":
            for folder in (cfg.data.image_dir, cfg.data.mask_dir, cfg.data.region_dir):
                assert (path / folder).is_dir(), f"{name}: no folder {path / folder}"
        if cfg.task.name == "captioning":  # found beside the JSON's folder by its split name
            split = re.search(r"(train|val)2017", path.name).group(0)
            assert (path.parent.parent / split).is_dir()


@pytest.mark.parametrize("name", sorted(MNIST))
def test_mnist_conversion_commands_name_the_shared_idx_files_and_the_folders(name, shared_data):
    shared_data("image_classification/mnist")  # skips with a reason where it is absent
    commands = re.findall(r"python -m pipelines\.data\.idx (\S+) (\S+) (\S+)",
                          (EXPERIMENTS_DIR / f"{name}.yaml").read_text())
    assert len(commands) == 2
    cfg = _compose(name)
    assert sorted(out for *_, out in commands) == sorted(_paths(cfg).values())
    for images, labels, _ in commands:
        for path in (images, labels):  # written relative to the repository root
            assert (REPO / path).is_file(), f"{name}: the conversion input {path} is missing"


# ----------------------------------------------------------------------------- smoke
def _mnist_folders(target: pathlib.Path, count: int = 400) -> pathlib.Path:
    """The first `count` train and test digits as the folders the IDX conversion writes."""
    from pipelines.data.idx import read_idx, write_folders

    mnist = SHARED_DATA / "image_classification" / "mnist"
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(mnist / f"{prefix}-images-idx3-ubyte.gz")[:count]
        labels = read_idx(mnist / f"{prefix}-labels-idx1-ubyte.gz")[:count]
        write_folders(images, labels, target / split)
    return target


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_smoke_runs_on_the_real_data(name, shared_data, tmp_path):
    import keras

    from pipelines.run import execute

    root = shared_data(".")
    base = (f"mnist_dir={_mnist_folders(tmp_path / 'mnist')}" if name in MNIST
            else "data.limit=128" if name in GENERATED else f"data_root={root.resolve()}")
    pretraining = []
    if name in PRETRAINED_FROM:  # the two documented commands: pretraining, then fine-tuning
        pretraining_cfg = _compose(PRETRAINED_FROM[name], "debug=smoke", "logger=none", base)
        (tmp_path / "pretraining" / ".hydra").mkdir(parents=True)
        OmegaConf.save(pretraining_cfg, tmp_path / "pretraining" / ".hydra" / "config.yaml",
                       resolve=True)  # as the CLI writes it
        try:
            execute(pretraining_cfg, tmp_path / "pretraining")
        finally:
            keras.backend.clear_session()
        pretraining = [f"model.init_from={tmp_path / 'pretraining'}"]
    cfg = _compose(name, "debug=smoke", "logger=none", base, *pretraining, *SMOKE.get(name, []))
    try:
        result = execute(cfg, tmp_path / "run")
    finally:
        keras.backend.clear_session()
    assert set(result.metrics) == EXPERIMENT_METRICS.get(name, METRICS[cfg.task.name])
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert (tmp_path / "run" / "saved_model" / "saved_model.pb").is_file()
