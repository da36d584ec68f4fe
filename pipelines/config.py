"""Typed schemas for the Hydra config tree, and the checks that run before TensorFlow.

Every group option in `conf/` starts from one of these dataclasses (its defaults list names
`/schema_<group>_<name>`), so a misspelt key or a value of the wrong type fails while Hydra
composes, for `--cfg job` too. Nothing here imports TensorFlow: `--help`, config printing
and every config error stay fast.
"""
from __future__ import annotations

import dataclasses
import enum
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


def option_value(option) -> str:
    """An enum option's value as a string (`Precision.float32` -> "float32"), or the string."""
    return str(getattr(option, "value", option))


class ConfigError(ValueError):
    """A config that composes but cannot run; the message names the key and the fix."""


# ----------------------------------------------------------------------------- choices
class Precision(str, enum.Enum):
    float32 = "float32"
    mixed_float16 = "mixed_float16"
    mixed_bfloat16 = "mixed_bfloat16"


class Optimizer(str, enum.Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Schedule(str, enum.Enum):
    constant = "constant"
    cosine = "cosine"
    warmup_cosine = "warmup_cosine"


class Strategy(str, enum.Enum):
    default = "default"
    mirrored = "mirrored"
    multi_worker = "multi_worker"
    tpu = "tpu"


class Backend(str, enum.Enum):
    mlflow = "mlflow"
    none = "none"


class CharFeatures(str, enum.Enum):
    none = "none"
    cnn = "cnn"  # layers.CharCNN: a convolution over the characters, max-pooled
    lstm = "lstm"  # layers.CharBiLSTM: the final states of a character BiLSTM


class DecodeStrategy(str, enum.Enum):
    greedy = "greedy"
    beam = "beam"  # decode.beam_size hypotheses, decode.length_penalty
    random = "random"  # sampling from the whole distribution (with decode.temperature)
    top_k = "top_k"  # sampling from the decode.top_k most probable tokens
    top_p = "top_p"  # nucleus sampling: the smallest set with probability >= decode.top_p


class Documents(str, enum.Enum):
    blank_lines = "blank_lines"  # the lines up to a blank line are one document
    lines = "lines"  # every line is a document


class Source(str, enum.Enum):
    synthetic = "synthetic"
    files = "files"
    tfds = "tfds"
    tfrecord = "tfrecord"


# ----------------------------------------------------------------------------- groups
@dataclass
class TaskConfig:
    name: str = MISSING
    _target_: str = MISSING  # the Task class
    reader: str = MISSING  # the data format it reads (pipelines.data.source.FORMATS)
    needs: list[str] = field(default_factory=list)  # backbone roles (pipelines.models.roles)
    # The backbones this task accepts; None: every model group whose roles cover `needs`.
    models: Optional[list[str]] = None
    # Per model option, keys of its group that this task does not use: setting one is refused.
    unused_model_keys: dict[str, list[str]] = field(default_factory=dict)
    # model.init_from: the vocabularies of a pretraining run (wordpiece, word) this task can
    # take its encoder and tokenizer from; null: it cannot start from one.
    init_from_tokenizers: Optional[list[str]] = None
    monitor: str = "val_loss"
    # The decode.strategy values the task reads; None: decode.strategy must stay null.
    decode_strategies: Optional[list[str]] = None


@dataclass
class SentimentTask(TaskConfig):
    max_length: int = 64
    vocabulary_size: int = 20000
    lowercase: bool = True
    # batches of similar length, each padded to its bucket (pipelines.data.bucketing)
    length_buckets: Optional[list[int]] = field(default_factory=lambda: [16, 32, 64])


class TranslationTokenizer(str, enum.Enum):
    wordpiece = "wordpiece"  # keras-hub WordPiece (pieces joined by spaces: "T - Shirt")
    sentencepiece = "sentencepiece"  # SentencePiece BPE, reversible ("T-Shirt")


@dataclass
class TranslationTask(TaskConfig):
    source_length: int = 32
    target_length: int = 32
    tokenizer: TranslationTokenizer = TranslationTokenizer.sentencepiece
    vocabulary_size: int = 4000
    vocabulary_sample: Optional[int] = 1_000_000  # lines (seeded sample) a vocabulary learns on
    lowercase: bool = False
    # batches cut to the bucket of their longest side (pipelines.data.bucketing); null = off
    length_buckets: Optional[list[int]] = None


@dataclass
class NerTask(TaskConfig):
    max_length: int = 64
    vocabulary_size: int = 30000
    lowercase: bool = False
    # batches of similar length, each padded to its bucket (pipelines.data.bucketing)
    length_buckets: Optional[list[int]] = field(default_factory=lambda: [16, 32, 64])
    max_word_length: int = 20  # characters per word for model.char_features (longer: cut)
    word_dropout: float = 0.0  # training only: a word id becomes [UNK] with this probability
    case_features: bool = False  # a case-class embedding (lower, UPPER, Title, digit, other)
    monitor: str = "val_f1"


@dataclass
class LanguageModelingTask(TaskConfig):
    sequence_length: int = 64  # the context: tokens per training window and for generation
    vocabulary_size: int = 4000  # WordPiece vocabulary, learned on the training text
    lowercase: bool = False
    # wordpiece (detokenized by rules, see language_modeling.py) or sentencepiece (exact)
    tokenizer: TranslationTokenizer = TranslationTokenizer.wordpiece
    documents: Documents = Documents.blank_lines  # what one [START] ... [END] document is
    vocabulary_sample: Optional[int] = 1_000_000  # lines (seeded sample) the vocabulary learns on
    num_samples: int = 20  # generations from evaluation lines written to samples.json
    prompt_words: int = 4  # the first words of an evaluation line as a sample's prompt
    monitor: str = "val_token_loss"


class MlmTokenizer(str, enum.Enum):
    wordpiece = "wordpiece"  # keras-hub WordPiece subwords (loading the export needs tensorflow_text)
    word = "word"  # whitespace-separated words: what a word tagger (NER) can fine-tune from


@dataclass
class MaskedLmTask(TaskConfig):
    max_length: int = 128  # tokens per sequence, [CLS] and [SEP] included
    vocabulary_size: int = 8000
    vocabulary_sample: Optional[int] = 1_000_000  # lines (seeded sample) the vocabulary learns on
    tokenizer: MlmTokenizer = MlmTokenizer.wordpiece
    lowercase: bool = True
    mask_rate: float = 0.15  # of the tokens: 80% [MASK], 10% random, 10% kept
    max_predictions: Optional[int] = None  # masked slots per sequence; None: ceil(rate * length)
    next_sentence: bool = False  # NSP: [CLS] A [SEP] B [SEP], B the next line or a random one
    top_k: int = 5  # fill-mask export: tokens per [MASK]
    # data hygiene: files (comma-separated, read like the corpus) whose lines are dropped from it
    exclude_texts: Optional[str] = None
    # batches of similar length, each padded to its bucket (pipelines.data.bucketing)
    length_buckets: Optional[list[int]] = field(default_factory=lambda: [16, 32, 64])

    @staticmethod
    def check(task: DictConfig, data: DictConfig | None = None) -> None:
        if data is not None and data.get("streaming") is True:
            check_masked_lm_streaming(task)


def check_masked_lm_streaming(task: DictConfig) -> None:
    """task=masked_lm with a streamed corpus (data.streaming): what needs the corpus whole."""
    wanting = [f"{key}={value}" for key, value in (
        ("task.reader", task.reader if task.reader != "text_lines" else None),
        ("task.next_sentence", task.next_sentence or None),  # B: a random line of the corpus
        ("task.exclude_texts", task.get("exclude_texts"))) if value is not None]
    if wanting:
        raise ConfigError(
            f"task=masked_lm streams its corpus (data.streaming) as text_lines, line by line; "
            f"{', '.join(wanting)} needs it read whole. Set data.streaming=false, or "
            "task.reader=text_lines task.next_sentence=false task.exclude_texts=null")


class SegmentationLoss(str, enum.Enum):
    cross_entropy = "cross_entropy"
    dice = "dice"
    both = "both"  # cross-entropy + soft Dice


@dataclass
class SegmentationTask(TaskConfig):
    image_size: int = 64  # images and masks are resized to image_size x image_size
    loss: SegmentationLoss = SegmentationLoss.cross_entropy
    augment: bool = True  # random flips of image and mask together (training only)
    brightness: float = 20.0  # with augment: max random brightness shift, in pixel values (0 = off)
    num_pictures: int = 6  # validation overlays written to pictures/


class CaptionTokenizer(str, enum.Enum):
    word = "word"  # TextVectorization: core TF ops only
    wordpiece = "wordpiece"  # keras-hub WordPiece: loading needs tensorflow_text
    sentencepiece = "sentencepiece"  # SentencePiece BPE, reversible; needs tensorflow_text


class CaptionSampling(str, enum.Enum):
    sample = "sample"  # one random caption per image each time the image is seen
    all = "all"  # every (image, caption) pair once per epoch


@dataclass
class CaptioningTask(TaskConfig):
    image_size: int = 64
    caption_length: int = 20  # decoder positions, [START] and [END] included
    tokenizer: CaptionTokenizer = CaptionTokenizer.word
    vocabulary_size: int = 5000
    vocabulary_sample: Optional[int] = 1_000_000  # captions (seeded sample) it learns on
    lowercase: bool = True
    captions: CaptionSampling = CaptionSampling.sample
    encoder_filters: list[int] = field(default_factory=lambda: [32, 64, 128])
    encoder_norm: Optional[str] = "batch"
    # target batches cut to the bucket of their longest caption; null = off
    length_buckets: Optional[list[int]] = None
    num_pictures: int = 4  # attention-map figures written to pictures/


@dataclass
class ImageAugment:
    flip: bool = True  # random left-right mirror (off for digits and text)
    crop: bool = False  # pad by image_size / 8 (reflected), crop back at a random offset
    brightness: float = 0.0  # max random brightness shift, a fraction of 255 (0 = off)


@dataclass
class ImageClassificationTask(TaskConfig):
    image_size: int = 32  # images are resized (bilinear, antialiased) to this square
    augment: ImageAugment = field(default_factory=ImageAugment)
    num_samples: int = 20  # test predictions written to samples.json


@dataclass
class ImageTextTask(TaskConfig):
    image_size: int = 64  # images resized to this square (training and serving)
    text_length: int = 24  # caption tokens (longer captions are cut)
    vocabulary_size: int = 5000  # words, learned on the training captions
    lowercase: bool = True
    # The text tower: a model group with the sequence_encoder role; per group, keys changed
    # in it ({transformer: {hidden_dim: 64}}), read when that group is the text tower.
    text_tower: str = "transformer"
    text_tower_options: dict[str, Any] = field(default_factory=dict)
    embedding_dim: int = 128  # the shared space both towers project to
    temperature: float = 0.07  # initial; learned as a logit scale 1 / temperature
    max_logit_scale: float = 100.0  # the logit scale's clip (CLIP)
    prompt: str = "a photo of a {}"  # zero-shot prompt, {} = the label
    labels: Optional[list[str]] = None  # None: the colour-shape pairs on generated scenes
    holdout_pairs: list[str] = field(default_factory=list)  # "red circle": unseen in training
    num_samples: int = 20  # zero-shot predictions written to samples.json
    monitor: str = "val_loss"

    @staticmethod
    def check(task: DictConfig, data: DictConfig | None = None) -> None:
        check_image_text(task, data)


def check_image_text(task: DictConfig, data: DictConfig | None = None) -> None:
    """task=image_text's own checks (no TF): labels, prompt, held-out pairs, text tower."""
    labels = task.get("labels")
    if labels is not None and (not len(labels) or any(not str(v).strip() for v in labels)):
        raise ConfigError(f"task.labels must be null or a non-empty list of non-empty label "
                          f"names; received task.labels={list(labels)}")
    if "{}" not in str(task.prompt):
        raise ConfigError(f"task.prompt must hold {{}} where the label goes (e.g. 'a photo of a "
                          f"{{}}'); received task.prompt={task.prompt!r}")
    from pipelines.data.scenes import parse_pairs

    try:
        parse_pairs(list(task.holdout_pairs))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if task.holdout_pairs and data is not None and option_value(data.source) != "synthetic":
        raise ConfigError(f"task.holdout_pairs needs generated scenes (data=synthetic); "
                          f"received data={option_value(data.source)}")
    check_text_tower(task)


def check_text_tower(task: DictConfig) -> None:
    """`task.text_tower` (a model group with the sequence_encoder role) and the keys of
    `task.text_tower_options` (image_text, visual_qa)."""
    check_model_group("task.text_tower", task.text_tower, "task.text_tower_options",
                      task.text_tower_options, "sequence_encoder", "a text encoder")


def check_model_group(key: str, name: str, options_key: str, options, role: str, what: str,
                      unused: dict[str, list[str]] | None = None) -> None:
    """A second model group that a task key names (`key=name`; image_text's text tower,
    multitask's caption decoder): one whose `roles` hold `role` ("is not `what`" otherwise),
    and `options` ({group: {key: value}}, at `options_key`) holding only keys of that group's
    yaml, none of them in `unused[group]` (keys the task does not read)."""
    groups = [group for group, option in model_options().items()
              if role in option.get("roles", [])]
    if name not in groups:
        raise ConfigError(f"{key}={name} is not {what}; valid: {', '.join(groups)}")
    for group, changes in options.items():
        if group not in groups:
            raise ConfigError(f"{options_key}.{group}: {group} is not {what}; valid: "
                              f"{', '.join(groups)}")
        skipped = set((unused or {}).get(group, []))
        known = set(model_options()[group]) - {"defaults", "name", "_target_", "roles"}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"{options_key}.{group} has keys {unknown} that model={group} "
                              f"does not have; its keys: {', '.join(sorted(known - skipped))}")
        refused = sorted(set(changes) & skipped)
        if refused:
            raise ConfigError(f"{options_key}.{group} has keys {refused} that {what} does not "
                              f"read; the keys it reads: {', '.join(sorted(known - skipped))}")


def check_source_reads(task: DictConfig, data: DictConfig | None) -> None:
    """The data source can read the task's format `task.reader` (data=tfrecord: its manifest
    decides, when it is read)."""
    if data is None or option_value(data.source) == "tfrecord":
        return
    from hydra.utils import get_class

    from pipelines.data.source import FORMATS

    source = get_class(data._target_)
    if not callable(getattr(source, task.reader, None)):
        reads = [name for name in FORMATS if callable(getattr(source, name, None))]
        raise ConfigError(
            f"task={task.name} reads the format {task.reader} ({FORMATS[task.reader]}), "
            f"which data={option_value(data.source)} cannot read (it reads "
            f"{', '.join(reads)}); data=synthetic generates it from its scenes")


class Fusion(str, enum.Enum):
    film = "film"  # the question scales and shifts every image location's features (FiLM)
    product = "product"  # pooled image features times question features, elementwise
    concat = "concat"  # pooled image features beside question features


@dataclass
class VisualQaTask(TaskConfig):
    image_size: int = 64  # images resized to this square (training and serving)
    question_length: int = 12  # question words (longer questions are cut)
    vocabulary_size: int = 1000  # question words, learned on the training questions
    lowercase: bool = True
    # The question encoder: a model group with the sequence_encoder role, as task=image_text's
    # text tower (task.text_tower_options.<group> changes its keys).
    text_tower: str = "lstm"
    text_tower_options: dict[str, Any] = field(default_factory=dict)
    fusion: Fusion = Fusion.film
    fusion_dim: int = 128  # width of the fused image-question features
    dropout: float = 0.1  # before the answer classifier
    # The question types asked (scene_questions.QUESTION_TYPES); the others are left out.
    question_types: list[str] = field(default_factory=lambda: ["colour", "shape", "count"])
    # Training: the questions each image brings to a batch (encoded once for all of them);
    # trainer.batch_size counts questions and must be a multiple of it.
    questions_per_image: int = 4
    num_samples: int = 20  # answered test questions written to samples.json
    monitor: str = "val_accuracy"

    @staticmethod
    def check(task: DictConfig, data: DictConfig | None = None) -> None:
        check_visual_qa(task, data)


def check_visual_qa(task: DictConfig, data: DictConfig | None = None) -> None:
    """task=visual_qa's own checks (no TF): question types, sizes, the question encoder, a
    data source that reads the task's format."""
    from pipelines.data.scene_questions import QUESTION_TYPES

    types = [str(t) for t in task.question_types]
    unknown = sorted(set(types) - set(QUESTION_TYPES))
    if not types or unknown or len(set(types)) < len(types):
        raise ConfigError(f"task.question_types must be a non-empty list of distinct types from "
                          f"{', '.join(QUESTION_TYPES)}; received task.question_types={types}")
    for key in ("image_size", "question_length", "vocabulary_size", "fusion_dim",
                "questions_per_image"):
        if task[key] < 1:
            raise ConfigError(f"task.{key} must be >= 1; received task.{key}={task[key]}")
    if not 0.0 <= task.dropout < 1.0:
        raise ConfigError(f"task.dropout must be in [0, 1); received task.dropout={task.dropout}")
    check_text_tower(task)
    check_source_reads(task, data)


@dataclass
class Head:
    """One head of task=multitask (`task.heads.<name>`); the keys of other kinds keep their
    defaults (`check_multitask` refuses a changed one)."""
    kind: Optional[str] = None  # classification, segmentation or caption (HEAD_KINDS); null: the name
    weight: float = 1.0  # of its loss in the training loss and of its metric in the objective
    metric: Optional[str] = None  # its metric in the objective; null: the kind's first
    loss: Optional[str] = None  # null: the kind's first (segmentation: cross_entropy, dice, both)
    # segmentation: channels of each upsampling step (UpBlock) from the encoder's grid
    filters: int = 32
    # caption: decoder positions ([START], [END] included), tokenizer, decoder over the grid
    caption_length: int = 20
    tokenizer: CaptionTokenizer = CaptionTokenizer.word
    vocabulary_size: int = 5000
    lowercase: bool = True
    # a model group with the sequence_decoder role; decoder_options.<group> changes its keys
    decoder: str = "lstm"
    decoder_options: dict[str, Any] = field(default_factory=dict)
    memory_dim: int = 128  # the encoder's grid projected to this width, with positions


@dataclass(frozen=True)
class HeadKind:
    metrics: tuple[str, ...]  # what evaluate reports (prefixed by the head's name), headline first
    losses: tuple[str, ...]  # the values of `loss`, the default first
    keys: tuple[str, ...] = ()  # its own keys of `Head` (besides kind, weight, metric, loss)
    outputs: tuple[str, ...] = ("",)  # the export's outputs: the head's name + each suffix


HEAD_KINDS: dict[str, HeadKind] = {
    # the largest shape's kind (task=image_classification's head and metrics)
    "classification": HeadKind(("accuracy", "top5_accuracy"), ("cross_entropy",),
                               outputs=("", "_probabilities")),
    # the mask of shape kinds (task=segmentation's loss and metrics)
    "segmentation": HeadKind(("mean_iou", "pixel_accuracy", "dice"),
                             ("cross_entropy", "dice", "both"), ("filters",)),
    # the scene's captions (task=captioning's tokenizers, decoders and BLEU)
    "caption": HeadKind(("bleu4", "bleu1"), ("cross_entropy",),
                        ("caption_length", "tokenizer", "vocabulary_size", "lowercase", "decoder",
                         "decoder_options", "memory_dim")),
}
# The model keys a caption decoder does not read (they configure encoders, or NER).
CAPTION_DECODER_UNUSED = {
    "lstm": ["num_layers", "bidirectional", "merge_mode", "char_features", "char_dim",
             "char_filters", "crf", "init_from"],
    "gru": ["num_layers", "bidirectional", "merge_mode", "char_features", "char_dim",
            "char_filters", "crf", "init_from"],
    "transformer": ["num_layers", "attention", "char_features", "char_dim", "char_filters", "crf",
                    "init_from"],
}
HEAD_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass
class MultitaskTask(TaskConfig):
    image_size: int = 32  # images (and masks) resized to this square, training and serving
    # name -> head; ~task.heads.NAME drops one. A new head goes in a yaml (an experiment file):
    # OmegaConf cannot add a typed Head from the command line.
    heads: dict[str, Head] = field(default_factory=dict)
    num_samples: int = 20  # test scenes with every head's prediction in samples.json
    monitor: str = "val_objective"

    @staticmethod
    def check(task: DictConfig, data: DictConfig | None = None) -> None:
        check_multitask(task, data)


def head_kind(name: str, head: DictConfig) -> str:
    """A head's kind: its `kind`, else its name."""
    return str(head.kind) if head.get("kind") is not None else name


def check_multitask(task: DictConfig, data: DictConfig | None = None) -> None:
    """task=multitask's own checks (no TF): at least one head; each of a known kind, a weight
    > 0, a metric and loss of its kind, no key of another kind changed, its decoder; distinct
    export outputs; a monitor the run logs; a data source that reads the task's format."""
    if task.image_size < 16:
        raise ConfigError(f"task.image_size must be >= 16; received {task.image_size}")
    if not task.heads:
        raise ConfigError("task.heads is empty: task=multitask needs at least one head, e.g. "
                          "task.heads={shape: {kind: classification}} (kinds: "
                          f"{', '.join(HEAD_KINDS)})")
    defaults = OmegaConf.structured(Head)
    outputs: dict[str, str] = {}
    for name, head in task.heads.items():
        where = f"task.heads.{name}"
        if not HEAD_NAME.fullmatch(name) or name in ("objective", "image", "image_features"):
            raise ConfigError(f"{where}: a head's name names its outputs and metrics: lower-case "
                              f"letters, digits and _, starting with a letter, not objective, "
                              f"image or image_features; received {name!r}")
        kind = head_kind(name, head)
        if kind not in HEAD_KINDS:
            given = (f"{where}.kind={kind}" if head.kind is not None else
                     f"{where} has no kind, and its name {name}")
            raise ConfigError(f"{given} is not a head kind; kinds: {', '.join(HEAD_KINDS)} (set "
                              f"{where}.kind=KIND; a head without kind is of the kind its name "
                              "says)")
        spec = HEAD_KINDS[kind]
        if not head.weight > 0:
            raise ConfigError(f"{where}.weight must be > 0 (the weight of its loss and of its "
                              f"metric in the objective); received {where}.weight={head.weight} "
                              f"(drop the head instead: ~{where})")
        if head.metric is not None and head.metric not in spec.metrics:
            raise ConfigError(f"{where}.metric={head.metric} is not a metric of a {kind} head; "
                              f"its metrics: {', '.join(spec.metrics)}")
        if head.loss is not None and head.loss not in spec.losses:
            raise ConfigError(f"{where}.loss={head.loss} is not a loss of a {kind} head; its "
                              f"losses: {', '.join(spec.losses)}")
        own = {"kind", "weight", "metric", "loss", *spec.keys}
        for key in head:
            if key not in own and option_value(head[key]) != option_value(defaults[key]):
                raise ConfigError(f"{where}.{key} has no effect on a {kind} head (keep its "
                                  f"default {option_value(defaults[key])}); its keys: "
                                  f"{', '.join(k for k in head if k in own)}")
        for key in ("filters", "caption_length", "vocabulary_size", "memory_dim"):
            if key in spec.keys and head[key] < 1:
                raise ConfigError(f"{where}.{key} must be >= 1; received {head[key]}")
        if kind == "caption":
            if head.caption_length < 3:
                raise ConfigError(f"{where}.caption_length must be >= 3 ([START], a word, "
                                  f"[END]); received {head.caption_length}")
            check_model_group(f"{where}.decoder", head.decoder, f"{where}.decoder_options",
                              head.decoder_options, "sequence_decoder", "a caption decoder",
                              CAPTION_DECODER_UNUSED)
        for suffix in spec.outputs:
            output = name + suffix
            if output in outputs:
                raise ConfigError(f"the heads {outputs[output]} and {name} both export the "
                                  f"output {output}: rename one")
            outputs[output] = name
    check_multitask_monitor(task)
    check_source_reads(task, data)


def multitask_monitors(task: DictConfig) -> list[str]:
    """What task=multitask's `task.monitor` can name: the weighted loss, the objective, each
    head's loss and accuracy statistics and (validation) its metrics."""
    names = ["val_loss", "train_loss", "val_objective"]
    for name, head in task.heads.items():
        kind = head_kind(name, head)
        names += [f"{split}_{name}_{stat}" for split in ("val", "train")
                  for stat in ("loss", "accuracy")]
        names += [f"val_{name}_{metric}" for metric in HEAD_KINDS[kind].metrics]
    return list(dict.fromkeys(names))  # a head's accuracy is a statistic and a metric


def check_multitask_monitor(task: DictConfig) -> None:
    """`task.monitor` is one of `multitask_monitors` (the heads' kinds checked before)."""
    monitors = multitask_monitors(task)
    if str(task.monitor) not in monitors:
        raise ConfigError(f"task.monitor={task.monitor} is not logged by these heads; it can "
                          f"monitor: {', '.join(monitors)}")


class Aggregate(str, enum.Enum):
    mean = "mean"  # the mean of the verbalizer words' log-probabilities
    logsumexp = "logsumexp"  # the log of their summed probability


@dataclass
class ZeroShotTextTask(TaskConfig):
    # The pretraining tasks whose run (model.init_from) this task takes whole, network and
    # tokenizer (pipelines.pretrained.check_whole_run); nothing trains.
    init_from_tasks: list[str] = field(default_factory=lambda: ["masked_lm", "language_modeling"])
    prompt: str = "{} It was [MASK]."  # {} = the text; [MASK] = where a verbalizer word goes
    labels: list[str] = field(default_factory=lambda: ["negative", "positive"])
    # label -> its words; a label's score aggregates their log-probabilities at [MASK].
    # Entries of labels not in `labels` are unused (Hydra merges dicts: defaults stay).
    verbalizers: dict[str, list[str]] = field(default_factory=lambda: {
        "negative": ["terrible", "bad", "awful"], "positive": ["great", "good", "wonderful"]})
    aggregate: Aggregate = Aggregate.mean
    calibrate: bool = False  # subtract the scores of the empty text (label-free calibration)
    # label -> the evaluation data's name of it (SST-2 files: {negative: "0", positive: "1"});
    # None: the data's labels are the label names
    data_labels: Optional[dict[str, str]] = None
    # The labels of a negative / positive VADER compound score (< 0 / >= 0) for the lexicon
    # baseline (lexicon_accuracy, lexicon_macro_f1); None: no lexicon baseline.
    lexicon_labels: Optional[list[str]] = field(default_factory=lambda: ["negative", "positive"])
    num_samples: int = 20  # predictions written to samples.json
    monitor: str = "val_accuracy"  # unused: nothing trains

    @staticmethod
    def check(task: DictConfig, data: DictConfig | None = None) -> None:
        check_zero_shot_text(task)

    @staticmethod
    def check_run(task: DictConfig, run) -> None:
        check_zero_shot_run(task, run)


def check_zero_shot_text(task: DictConfig) -> None:
    """task=zero_shot_text's own checks (no TF): labels, prompt, verbalizers, label maps."""
    labels = [str(label) for label in task.labels]
    if not labels or any(not label.strip() for label in labels) or len(set(labels)) < len(labels):
        raise ConfigError(f"task.labels must be a non-empty list of distinct, non-empty label "
                          f"names (e.g. [negative, positive]); received task.labels={labels}")
    prompt = str(task.prompt)
    if prompt.count("{}") != 1:
        raise ConfigError(f"task.prompt must hold {{}} once, where the text goes (e.g. '{{}} It "
                          f"was [MASK].'); received task.prompt={prompt!r}")
    if prompt.count("[MASK]") > 1:
        raise ConfigError(f"task.prompt holds [MASK] {prompt.count('[MASK]')} times; one "
                          f"[MASK] is where a verbalizer word goes. Received {prompt!r}")
    verbalizers = task.verbalizers
    missing = [label for label in labels if not list(verbalizers.get(label) or [])]
    if missing:
        raise ConfigError(f"task.verbalizers has no words for the labels {missing}: give each "
                          f"label its words, e.g. task.verbalizers.{missing[0]}=[word, ...]")
    blank = [label for label in labels if any(not str(w).strip() for w in verbalizers[label])]
    if blank:
        raise ConfigError(f"task.verbalizers.{blank[0]} holds an empty word: "
                          f"{list(verbalizers[blank[0]])}")
    for key in ("data_labels", "lexicon_labels"):
        given = task.get(key)
        outside = sorted(set(given or []) - set(labels))
        if outside:
            raise ConfigError(f"task.{key} names {outside}, which are not in task.labels={labels}")
    lexicon = task.get("lexicon_labels")
    if lexicon is not None and len(lexicon) != 2:
        raise ConfigError(f"task.lexicon_labels must be [NEGATIVE_LABEL, POSITIVE_LABEL] or null; "
                          f"received {list(lexicon)}")


def check_zero_shot_run(task: DictConfig, run) -> None:
    """What a masked_lm run (`pipelines.pretrained.RunInfo`) asks of task=zero_shot_text: a
    [MASK] in the prompt, and every verbalizer word one token of the run's vocabulary."""
    if run.config.task.name != "masked_lm":
        return  # a language model scores continuations of any number of tokens
    if "[MASK]" not in str(task.prompt):
        raise ConfigError(f"model.init_from={run.directory} is a masked_lm run: task.prompt "
                          f"needs a [MASK] where the label word goes (e.g. '{{}} It was "
                          f"[MASK].'); received task.prompt={task.prompt!r}")
    lowercase = bool(run.manifest["lowercase"])
    vocabulary = set(run.manifest["vocabulary"][5:])  # the 5 special tokens first
    for label in task.labels:
        for word in task.verbalizers[label]:
            if (str(word).lower() if lowercase else str(word)) not in vocabulary:
                raise ConfigError(
                    f"task.verbalizers.{label}: {str(word)!r} is not one token of the "
                    f"vocabulary of model.init_from={run.directory} ({len(vocabulary)} "
                    f"{run.manifest['tokenizer']} tokens{', lower case' if lowercase else ''}), "
                    "and the [MASK] predicts one token: use words the run's vocabulary holds "
                    "whole (its pretraining.json lists them)")


@dataclass
class ModelConfig:
    name: str = MISSING
    _target_: str = MISSING  # the backbone factory
    roles: list[str] = field(default_factory=list)  # what it can build (pipelines.models.roles)


@dataclass
class RecurrentModel(ModelConfig):
    init_from: Optional[str] = None  # a masked_lm run directory to fine-tune from (pipelines.pretrained)
    cell: str = "lstm"
    embedding_dim: int = 128
    units: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    merge_mode: str = "concat"
    dropout: float = 0.0
    attention: str = "additive"
    # NER only (other tasks refuse them): characters of each word, a CRF output layer
    char_features: CharFeatures = CharFeatures.none
    char_dim: int = 30  # character embedding width
    char_filters: int = 50  # cnn: filters (the word vector size); lstm: units per direction
    crf: bool = False


@dataclass
class TransformerModel(ModelConfig):
    init_from: Optional[str] = None  # a masked_lm run directory to fine-tune from (pipelines.pretrained)
    hidden_dim: int = 128
    num_heads: int = 4
    intermediate_dim: int = 256
    num_layers: int = 2
    num_decoder_layers: int = 2
    dropout: float = 0.1
    normalize_first: bool = False
    positional: str = "learned"
    attention: str = "softmax"
    # NER only (other tasks refuse them): characters of each word, a CRF output layer
    char_features: CharFeatures = CharFeatures.none
    char_dim: int = 30  # character embedding width
    char_filters: int = 50  # cnn: filters (the word vector size); lstm: units per direction
    crf: bool = False


@dataclass
class UNetModel(ModelConfig):
    filters: int = 16
    depth: int = 3
    kernel_size: int = 3
    norm: Optional[str] = "batch"
    dropout: float = 0.0


@dataclass
class CnnModel(ModelConfig):
    filters: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # one stage each
    num_convs: int = 2  # convs per ConvBlock
    kernel_size: int = 3
    residual: bool = True
    norm: Optional[str] = "batch"  # batch, layer or null
    dropout: float = 0.1  # before the head


@dataclass
class VitModel(ModelConfig):
    patch_size: int = 4  # must divide task.image_size
    hidden_dim: int = 64
    num_heads: int = 4
    intermediate_dim: int = 128
    num_layers: int = 4
    dropout: float = 0.0
    shifted_patches: bool = True  # Shifted Patch Tokenization (Lee et al., 2021)


@dataclass
class DecodeConfig:
    beam_size: int = 4
    length_penalty: float = 0.6
    max_length: Optional[int] = None  # None: the task's target length
    # language_modeling: the search (None: top_k there); translation/captioning keep it None
    strategy: Optional[DecodeStrategy] = None
    top_k: int = 40
    top_p: float = 0.9
    temperature: float = 1.0  # 0: greedy
    seed: int = 0  # sampling draws are stateless, seeded (seed, step)
    # translation/captioning: XLA-compile the search; auto: where `benchmarks jit_families
    # --decode` measured it faster for the decoder family on this device and one decode has
    # enough sentences to pay for the compile; the export's signature only with true
    # (pipelines.distribute.choose_decode_jit)
    jit_compile: Any = "auto"


@dataclass
class PrepareKeys:
    """Every data group's keys of `python -m pipelines.prepare` (not passed to the source)."""
    shards: int = 8  # TFRecord shards per split
    out: Optional[str] = None  # the folder it writes (manifest.json and the shards)


@dataclass
class SyntheticData(PrepareKeys):
    _target_: str = "pipelines.data.synthetic.SyntheticSource"
    source: Source = Source.synthetic
    seed: int = 42
    num_train: Optional[int] = None  # None: the task's default size
    num_validation: Optional[int] = None
    num_test: Optional[int] = None
    limit: Optional[int] = None
    ignore_index: Optional[int] = None  # segmentation: a mask label left out of loss and metrics


@dataclass
class FilesData(PrepareKeys):
    _target_: str = "pipelines.data.files.FilesSource"
    source: Source = Source.files
    seed: int = 42
    train: str = MISSING
    validation: Optional[str] = None
    test: Optional[str] = None
    validation_fraction: float = 0.1
    text_column: str = "text"
    label_column: str = "label"
    source_lang: str = "en"
    target_lang: str = "de"
    tag_scheme: str = "iob2"
    limit: Optional[int] = None
    ignore_index: Optional[int] = None  # segmentation: a mask label left out of loss and metrics
    image_dir: Optional[str] = None  # segmentation: images folder (default images/); captioning: image folder
    mask_dir: Optional[str] = None  # segmentation: masks folder (default masks/)
    region_dir: Optional[str] = None  # segmentation: region masks (field of view) restricting metrics
    pair_key: Optional[str] = None  # segmentation: regex whose first group pairs image and mask stems
    # true: train stays in its files, read by tf.data (pipelines.data.streaming: the text
    # tasks, image_classification);
    # auto: so when its files hold at least streaming_threshold_mb
    streaming: Any = False
    streaming_threshold_mb: float = 256.0
    shuffle_buffer: int = 10_000  # streaming: examples in the training shuffle buffer


@dataclass
class TfdsData(PrepareKeys):
    _target_: str = "pipelines.data.tfds_source.TfdsSource"
    source: Source = Source.tfds
    seed: int = 42
    name: str = MISSING
    data_dir: Optional[str] = None
    train_split: str = "train"
    validation_split: Optional[str] = None
    test_split: Optional[str] = "test"
    validation_fraction: float = 0.1
    text_key: Optional[str] = None
    label_key: Optional[str] = None
    source_lang: Optional[str] = None  # translation: feature names of the two languages
    target_lang: Optional[str] = None
    download: bool = True
    limit: Optional[int] = None
    ignore_index: Optional[int] = None  # segmentation: a mask label left out of loss and metrics


@dataclass
class TfrecordData(PrepareKeys):
    _target_: str = "pipelines.data.records.TfrecordSource"
    source: Source = Source.tfrecord
    seed: int = 42
    path: str = MISSING  # the folder python -m pipelines.prepare wrote (manifest.json, shards)
    task: str = MISSING  # the task reading it (conf/data/tfrecord.yaml: ${task.name})
    streaming: Any = False  # true: train read shard by shard by tf.data; auto: by size
    streaming_threshold_mb: float = 256.0  # auto: stream train shards of at least this many MB
    shuffle_buffer: int = 10_000
    skip_corrupt: bool = False  # a corrupted shard: skipped with a warning instead of an error
    limit: Optional[int] = None


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    optimizer: Optimizer = Optimizer.adam
    weight_decay: float = 0.0
    lr_schedule: Schedule = Schedule.constant
    warmup_steps: int = 0
    clip_norm: Optional[float] = 1.0
    seed: int = 42
    steps_per_epoch: Optional[int] = None
    eval_steps: Optional[int] = None
    precision: Precision = Precision.float32
    # auto: XLA where the jit_families benchmark shows it faster for this model family on this
    # device and the run is long enough to pay for the compile (pipelines.distribute); true/false force it
    jit_compile: Any = "auto"
    early_stopping_patience: Optional[int] = 3
    deterministic: bool = False
    checkpoint_every_steps: Optional[int] = None  # mid-epoch save points (resume mid-epoch)
    max_nan_recoveries: int = 0  # NaN loss: restore the last save point, halve the LR
    eval_bleu_every: int = 0  # translation: validation BLEU every N epochs (0 = off)
    # task metrics on validation (val_<metric>) every N epochs; 0 = off; null = every epoch
    # when task.monitor names one, else eval_bleu_every (pipelines.tasks.validation)
    eval_every: Optional[int] = None
    freeze_epochs: int = 0  # with model.init_from: train only the new layers (the head) this many epochs
    # [a, b]: a TensorBoard profile of training steps a..b (1-based, within the first epoch)
    # in <run dir>/profile; null = off
    profile_steps: Optional[list[int]] = None
    verbose: bool = True


@dataclass
class DistributeConfig:
    strategy: Strategy = Strategy.default
    cpu_devices: Optional[int] = None
    workers: list[str] = field(default_factory=list)
    task_index: int = 0
    tpu: Optional[str] = None


@dataclass
class LoggerConfig:
    backend: Backend = Backend.mlflow
    tracking_uri: Optional[str] = None
    experiment_name: str = "pipelines"
    run_name: Optional[str] = None
    register_as: Optional[str] = None
    log_model: bool = True


@dataclass
class ExportConfig:
    enabled: bool = True
    dir: str = "saved_model"


SCHEMAS: dict[str, dict[str, Any]] = {
    "task": {"sentiment": SentimentTask, "translation": TranslationTask,
             "ner": NerTask, "segmentation": SegmentationTask, "captioning": CaptioningTask,
             "masked_lm": MaskedLmTask,
             "image_classification": ImageClassificationTask,
             "image_text": ImageTextTask, "zero_shot_text": ZeroShotTextTask,
             "visual_qa": VisualQaTask, "multitask": MultitaskTask,
             "language_modeling": LanguageModelingTask},
    "model": {"recurrent": RecurrentModel, "transformer": TransformerModel, "unet": UNetModel,
              "cnn": CnnModel, "vit": VitModel},
    "decode": {"decode": DecodeConfig},
    "data": {"synthetic": SyntheticData, "files": FilesData, "tfds": TfdsData,
             "tfrecord": TfrecordData},
    "trainer": {"trainer": TrainerConfig},
    "distribute": {"distribute": DistributeConfig},
    "logger": {"logger": LoggerConfig},
    "export": {"export": ExportConfig},
}


def register_schemas() -> None:
    """Stores every schema as the config `schema_<group>_<name>` for the group files' defaults
    lists (`- /schema_task_sentiment@_here_`). Configs at the root, not a group, so that
    `--help` lists only the user's groups."""
    # And our sweeper (`hydra/sweeper=pipelines_optuna`, its class and config node): Hydra finds
    # plugins by listing the `hydra_plugins` namespace with pkgutil, which cannot list a package
    # that an editable install (`pip install -e .`) serves through its import hook, so from any
    # folder but the repository root `hparams_search=optuna` failed ("Could not find
    # 'hydra/sweeper/pipelines_optuna'"). Importing the plugin stores its node.
    from hydra.core.plugins import Plugins
    from hydra_plugins.pipelines_optuna_sweeper.pipelines_optuna_sweeper import \
        PipelinesOptunaSweeper

    Plugins.instance().register(PipelinesOptunaSweeper)

    store = ConfigStore.instance()
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(name=f"schema_{group}_{name}", node=node)


# ----------------------------------------------------------------------------- checks
def conf_dir() -> pathlib.Path:
    """The folder of the Hydra config tree (shipped as the `conf` package)."""
    import conf

    return pathlib.Path(conf.__file__).parent


def model_options() -> dict[str, DictConfig]:
    """{option: its yaml} of every model group file (read as plain YAML, no TF)."""
    return {path.stem: OmegaConf.load(path) for path in sorted((conf_dir() / "model").glob("*.yaml"))}


def fitting_models(task_cfg: DictConfig) -> list[str]:
    """The model options that fit the task: `task.models` if given, else every model group
    whose `roles` cover the task's `needs`."""
    if task_cfg.get("models") is not None:
        return list(task_cfg.models)
    needs = set(task_cfg.needs)
    return [name for name, option in model_options().items()
            if needs <= set(option.get("roles", []))]


def check(cfg: DictConfig) -> None:
    """Raises ConfigError for a config that composed but cannot run (no TF import)."""
    task, model = cfg.task.name, cfg.model.name
    valid = fitting_models(cfg.task)
    if model not in valid:
        raise ConfigError(
            f"model={model} does not fit task={task}. Valid models for {task}: "
            f"{', '.join(valid)}. Example: python -m pipelines task={task} "
            f"model={valid[0] if valid else '...'}"
        )
    unused = list(cfg.task.get("unused_model_keys", {}).get(model, []))
    defaults = model_options().get(model, {})
    for key in unused:
        if key in cfg.model and key in defaults and cfg.model[key] != defaults[key]:
            used = [k for k in cfg.model if k not in ("name", "_target_", "roles", *unused)]
            raise ConfigError(
                f"model.{key}={option_value(cfg.model[key])} has no effect with task={task} model={model} "
                f"(keep its default {defaults[key]}). The model.* keys this pair uses: "
                f"{', '.join(used)}"
            )
    if cfg.trainer.jit_compile not in (True, False, "auto"):
        raise ConfigError(f"trainer.jit_compile must be auto, true or false; received "
                          f"{cfg.trainer.jit_compile!r}")
    if cfg.trainer.batch_size < 1:
        raise ConfigError(f"trainer.batch_size must be >= 1; received {cfg.trainer.batch_size}")
    if cfg.trainer.epochs < 1:
        raise ConfigError(f"trainer.epochs must be >= 1; received {cfg.trainer.epochs}")
    check_profile_steps(cfg.trainer.get("profile_steps"), cfg.trainer.steps_per_epoch)
    eval_every = cfg.trainer.get("eval_every")
    if eval_every is not None and eval_every < 0:
        raise ConfigError(f"trainer.eval_every must be >= 0 or null; received {eval_every}")
    monitor = str(cfg.task.get("monitor", "val_loss"))
    if not monitor.startswith(("val_", "train_")):
        raise ConfigError(
            f"task.monitor must name an epoch log: val_loss, val_<statistic> or "
            f"val_<task metric> (e.g. val_accuracy, val_f1, val_bleu, val_mean_iou), or a "
            f"train_ one; received task.monitor={monitor}"
        )
    _check_decode(cfg)
    # A task schema may carry its own checks (a `check(task, data)` staticmethod).
    task_check = getattr(OmegaConf.get_type(cfg.task), "check", None)
    if task_check is not None:
        task_check(cfg.task, cfg.data)
    from pipelines.pretrained import check_init_from

    check_init_from(cfg)
    cpu_devices = cfg.distribute.cpu_devices
    if cpu_devices is not None and cpu_devices < 1:
        raise ConfigError(f"distribute.cpu_devices must be >= 1; received {cpu_devices}")
    check_data(cfg.data)


def check_data(data: DictConfig) -> None:
    """The data keys `python -m pipelines` reads: `data.streaming` true, false or auto (with a
    positive threshold). `data.out` and `data.shards` say where `python -m pipelines.prepare`
    writes (`PrepareKeys`): a training run given one would silently ignore it."""
    prepare = ("python -m pipelines.prepare task=... data=... data.out=DIR writes the data as "
               "TFRecord shards; python -m pipelines task=... data=tfrecord data.path=DIR "
               "trains from them")
    if data.get("out") is not None:
        raise ConfigError(f"data.out={data.out} is a key of python -m pipelines.prepare, which "
                          f"python -m pipelines does not read: drop it. {prepare}")
    if data.get("shards", PrepareKeys.shards) != PrepareKeys.shards:
        raise ConfigError(f"data.shards={data.shards} is a key of python -m pipelines.prepare, "
                          f"which python -m pipelines does not read: drop it. {prepare}")
    streaming = data.get("streaming", False)
    if not (isinstance(streaming, bool) or streaming == "auto"):
        raise ConfigError(f"data.streaming must be true, false or auto (stream the training "
                          f"files when they hold at least data.streaming_threshold_mb); "
                          f"received data.streaming={streaming!r}")
    threshold = data.get("streaming_threshold_mb", 1.0)
    if not threshold > 0:
        raise ConfigError(f"data.streaming_threshold_mb must be > 0 (megabytes of training "
                          f"files from which data.streaming=auto streams); received {threshold}")
    if data.get("shuffle_buffer", 1) < 1:
        raise ConfigError(f"data.shuffle_buffer must be >= 1 (examples in the streaming "
                          f"training shuffle buffer); received {data.shuffle_buffer}")


def check_profile_steps(steps, steps_per_epoch: int | None) -> None:
    """`trainer.profile_steps`: null, or [a, b] with 1 <= a <= b <= the steps of an epoch
    (`steps_per_epoch`; None: not known before the data is read, `run` checks it then)."""
    if steps is None:
        return
    steps = list(steps) if OmegaConf.is_list(steps) or isinstance(steps, (list, tuple)) else steps
    if (not isinstance(steps, list) or len(steps) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
            or not 1 <= steps[0] <= steps[1]):
        raise ConfigError(f"trainer.profile_steps must be [a, b], two ints with 1 <= a <= b "
                          f"(training steps to profile), or null; received {steps}")
    if steps_per_epoch is not None and steps[1] > steps_per_epoch:
        raise ConfigError(f"trainer.profile_steps={steps} ends after the first epoch "
                          f"({steps_per_epoch} steps, trainer.steps_per_epoch); pick b <= "
                          f"{steps_per_epoch}")


def _check_decode(cfg: DictConfig) -> None:
    """decode.strategy only where the task reads it; sampling settings that can draw."""
    decode = cfg.get("decode")
    if decode is None:
        return
    strategy = decode.get("strategy")
    allowed = cfg.task.get("decode_strategies")
    if strategy is not None and option_value(strategy) not in (allowed or []):
        raise ConfigError(
            f"decode.strategy={option_value(strategy)} has no effect with task={cfg.task.name}"
            + (f"; it reads {', '.join(allowed)}" if allowed else
               " (keep it null: it searches by decode.beam_size, greedy when 1, else beam)"))
    if decode.top_k < 1:
        raise ConfigError(f"decode.top_k must be >= 1; received {decode.top_k}")
    if not 0.0 < decode.top_p <= 1.0:
        raise ConfigError(f"decode.top_p must be in (0, 1]; received {decode.top_p}")
    if decode.temperature < 0:
        raise ConfigError(f"decode.temperature must be >= 0 (0: greedy); received "
                          f"{decode.temperature}")
    if decode.get("jit_compile", "auto") not in (True, False, "auto"):
        raise ConfigError(f"decode.jit_compile must be auto, true or false; received "
                          f"{decode.jit_compile!r}")


def schema_fields(node: type) -> list[str]:
    return [f.name for f in dataclasses.fields(node)]
