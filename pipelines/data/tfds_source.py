"""`data=tfds data.name=NAME`: TensorFlow Datasets by name (downloads on first use)."""
from __future__ import annotations

import re

from pipelines.data.source import Source
from pipelines.data.splits import Splits, hold_out, limit_splits

_TEXT_KEYS = ("text", "sentence", "review", "content", "document")
# The language pair in a config name: pt_to_en, de-en, en2de.
_LANGUAGE_PAIR = re.compile(r"([a-z]{2,3})(?:_to_|-|2)([a-z]{2,3})")


class TfdsSource(Source):
    """Loads TFDS splits into the same raw lists as the other sources."""

    name = "tfds"

    def __init__(self, name: str, data_dir: str | None = None, train_split: str = "train",
                 validation_split: str | None = None, test_split: str | None = "test",
                 validation_fraction: float = 0.1, text_key: str | None = None,
                 label_key: str | None = None, source_lang: str | None = None,
                 target_lang: str | None = None, download: bool = True,
                 limit: int | None = None, seed: int = 42, ignore_index: int | None = None):
        self.name, self.data_dir, self.download = name, data_dir, download
        self.split_names = {"train": train_split, "validation": validation_split,
                            "test": test_split}
        self.validation_fraction = validation_fraction
        self.text_key, self.label_key = text_key, label_key
        self.source_lang, self.target_lang = source_lang, target_lang
        self.limit, self.seed = limit, seed
        self.ignore_index = ignore_index  # segmentation: read by the task

    def _load(self, decoders: dict | None = None):
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(self.name, data_dir=self.data_dir)
            if self.download:
                builder.download_and_prepare()
        except Exception as error:  # noqa: BLE001 - any TFDS failure gets the same advice
            raise RuntimeError(
                f"data.name={self.name}: TensorFlow Datasets could not load it ({error}). "
                "Check the name (tfds.list_builders()), the network, or use data=files / "
                "data=synthetic offline."
            ) from error
        datasets = {
            split: builder.as_dataset(split=name, decoders=decoders)
            for split, name in self.split_names.items()
            if name is not None
        }
        return builder.info, datasets

    def labelled_text(self) -> Splits:
        import tensorflow_datasets as tfds

        info, datasets = self._load()
        features = info.features
        text_key = self.text_key or next((k for k in _TEXT_KEYS if k in features), None)
        label_key = self.label_key or "label"
        if text_key is None or label_key not in features:
            raise RuntimeError(
                f"data.name={self.name}: cannot tell the text and label features apart among "
                f"{list(features)}; set data.text_key=... data.label_key=..."
            )
        names = getattr(features[label_key], "names", None)
        splits = {}
        for split, dataset in datasets.items():
            texts, labels = [], []
            for example in tfds.as_numpy(dataset):
                texts.append(example[text_key].decode("utf-8"))
                label = int(example[label_key])
                labels.append(names[label] if names else str(label))
            splits[split] = (texts, labels)
        if "validation" not in splits:
            splits["train"], splits["validation"] = hold_out(
                splits["train"], self.validation_fraction, self.seed
            )
        return limit_splits(Splits(**splits), self.limit, self.seed)

    def _finish(self, splits: dict) -> Splits:
        """Holds out validation from train when no validation split is named; applies limit."""
        if "validation" not in splits:
            splits["train"], splits["validation"] = hold_out(
                splits["train"], self.validation_fraction, self.seed
            )
        return limit_splits(Splits(**splits), self.limit, self.seed)

    def _languages(self, features) -> tuple[str, str]:
        """(source, target) feature names: data.source_lang/target_lang, else from the config
        name (`ted_hrlr_translate/pt_to_en` -> pt, en; `wmt14_translate/de-en` -> de, en)."""
        source, target = self.source_lang, self.target_lang
        names = list(features)
        config = self.name.split(":")[0].split("/", 1)[1] if "/" in self.name else ""
        match = _LANGUAGE_PAIR.fullmatch(config)
        pair = list(match.groups()) if match else names if len(names) == 2 else None
        if source is None and target is None and match:
            source, target = pair
        elif (source is None) != (target is None) and pair:
            # One given: the other is the rest of the pair (data.source_lang=en on pt_to_en).
            given = source or target
            other = next((name for name in pair if name != given), None)
            source, target = (given, other) if source else (other, given)
        if source is None or target is None or source not in names or target not in names:
            raise RuntimeError(
                f"data.name={self.name}: cannot tell the source and target language features "
                f"among {names} (got source_lang={source}, target_lang={target}); set "
                "data.source_lang=... data.target_lang=..."
            )
        return source, target

    def parallel_text(self) -> Splits:
        """source sentences (str) -> target sentences (str), e.g.
        `ted_hrlr_translate/pt_to_en` (pt -> en) or `wmt14_translate/de-en` (de -> en).

        Everything is read into Python lists: slice big corpora with TFDS split syntax
        (`data.train_split=train[:10%]`).
        """
        import tensorflow_datasets as tfds

        info, datasets = self._load()
        source, target = self._languages(info.features)
        splits = {}
        for split, dataset in datasets.items():
            sources, targets = [], []
            for example in tfds.as_numpy(dataset):
                sources.append(example[source].decode("utf-8"))
                targets.append(example[target].decode("utf-8"))
            splits[split] = (sources, targets)
        return self._finish(splits)

    def conll(self) -> Splits:
        """token lists -> IOB2 tag lists, e.g. `conll2003` (features `tokens` and `ner`, a
        Sequence of ClassLabel; data.text_key / data.label_key name others)."""
        import tensorflow_datasets as tfds

        from pipelines.data.conll import iob1_to_iob2

        info, datasets = self._load()
        features = info.features
        token_key, tag_key = self.text_key or "tokens", self.label_key or "ner"
        if token_key not in features or tag_key not in features:
            raise RuntimeError(
                f"data.name={self.name}: no token feature {token_key!r} or tag feature "
                f"{tag_key!r} among {list(features)}; set data.text_key=... data.label_key=..."
            )
        names = getattr(getattr(features[tag_key], "feature", None), "names", None)
        splits = {}
        for split, dataset in datasets.items():
            sentences, all_tags = [], []
            for index, example in enumerate(tfds.as_numpy(dataset)):
                tokens = [token.decode("utf-8") for token in example[token_key]]
                tags = [names[int(tag)] if names else tag.decode("utf-8")
                        for tag in example[tag_key]]
                if len(tokens) != len(tags):
                    raise RuntimeError(
                        f"data.name={self.name}: example {index} of split {split!r} has "
                        f"{len(tokens)} tokens but {len(tags)} tags"
                    )
                sentences.append(tokens)
                # Identity on valid IOB2; repairs IOB1-style I- starts.
                all_tags.append(iob1_to_iob2(tags))
            splits[split] = (sentences, all_tags)
        return self._finish(splits)

    def _vision(self, image_key: str, target_key: str, encoded: tuple[str, ...], convert) -> Splits:
        """Images (and `encoded` features) stay encoded bytes: the task decodes and resizes
        them, so a big dataset never sits decoded in memory."""
        import tensorflow_datasets as tfds

        info, datasets = self._load(decoders={key: tfds.decode.SkipDecoding() for key in encoded})
        features = info.features
        for key, name in ((image_key, "data.text_key"), (target_key, "data.label_key")):
            if key not in features:
                raise RuntimeError(f"data.name={self.name}: no feature {key!r} among "
                                   f"{list(features)}; set {name}=... to the right one")
        splits = {}
        for split, dataset in datasets.items():
            images, targets = [], []
            for example in tfds.as_numpy(dataset):
                images.append(example[image_key])
                targets.append(convert(example[target_key]))
            splits[split] = (images, targets)
        return self._finish(splits)

    def image_masks(self) -> Splits:
        """images -> masks, e.g. `oxford_iiit_pet` (features `image`, `segmentation_mask`;
        its labels 1 pet, 2 background, 3 border stay as they are). data.text_key /
        data.label_key name other image and mask features."""
        import numpy as np

        def mask(value):  # encoded bytes stay; a decoded (H, W, 1) loses its channel axis
            if isinstance(value, bytes):
                return value
            value = np.asarray(value)
            return value[..., 0] if value.ndim == 3 else value

        image_key, mask_key = self.text_key or "image", self.label_key or "segmentation_mask"
        return self._vision(image_key, mask_key, (image_key, mask_key), mask)

    def image_captions(self) -> Splits:
        """images -> caption lists, e.g. `coco_captions` (features `image` and `captions`, a
        Sequence of {`text`, `id`}); data.text_key / data.label_key name others."""
        import numpy as np

        def captions(value):
            texts = value["text"] if isinstance(value, dict) else value
            return [t.decode("utf-8").strip() if isinstance(t, bytes) else str(t).strip()
                    for t in np.atleast_1d(texts)]

        image_key = self.text_key or "image"
        return self._vision(image_key, self.label_key or "captions", (image_key,), captions)


    def labelled_images(self) -> Splits:
        """uint8 images (H, W, 3) -> label names, e.g. `mnist`, `cifar10`, `oxford_iiit_pet`
        (features `image` and `label`, a ClassLabel; data.text_key / data.label_key name
        others). Grayscale is repeated into three channels; images that share one shape
        come as one array (N, H, W, 3). Slice big sets with `data.train_split=train[:20%]`.
        """
        import numpy as np
        import tensorflow_datasets as tfds

        info, datasets = self._load()
        features = info.features
        image_key, label_key = self.text_key or "image", self.label_key or "label"
        if image_key not in features or label_key not in features:
            raise RuntimeError(
                f"data.name={self.name}: no image feature {image_key!r} or label feature "
                f"{label_key!r} among {list(features)}; set data.text_key=... (the image) "
                "data.label_key=..."
            )
        names = getattr(features[label_key], "names", None)
        splits = {}
        for split, dataset in datasets.items():
            images, labels = [], []
            for example in tfds.as_numpy(dataset):
                image = np.asarray(example[image_key])
                if image.ndim == 2:
                    image = image[:, :, None]
                if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
                    raise RuntimeError(
                        f"data.name={self.name}: feature {image_key!r} has shape {image.shape} "
                        f"in split {split!r}; expected an image (height, width, 1, 3 or 4)")
                image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[:, :, :3]
                images.append(image.astype(np.uint8))
                label = int(example[label_key])
                labels.append(names[label] if names else str(label))
            if len({image.shape for image in images}) == 1:
                images = np.stack(images)
            splits[split] = (images, labels)
        return self._finish(splits)
