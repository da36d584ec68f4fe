"""`data=tfds data.name=NAME`: TensorFlow Datasets by name (downloads on first use)."""
from __future__ import annotations

from pipelines.data.splits import Splits, hold_out, limit_splits

_TEXT_KEYS = ("text", "sentence", "review", "content", "document")


class TfdsSource:
    """Loads TFDS splits into the same raw lists as the other sources."""

    def __init__(self, name: str, data_dir: str | None = None, train_split: str = "train",
                 validation_split: str | None = None, test_split: str | None = "test",
                 validation_fraction: float = 0.1, text_key: str | None = None,
                 label_key: str | None = None, source_lang: str | None = None,
                 target_lang: str | None = None, download: bool = True,
                 limit: int | None = None, seed: int = 42):
        self.name, self.data_dir, self.download = name, data_dir, download
        self.split_names = {"train": train_split, "validation": validation_split,
                            "test": test_split}
        self.validation_fraction = validation_fraction
        self.text_key, self.label_key = text_key, label_key
        self.source_lang, self.target_lang = source_lang, target_lang
        self.limit, self.seed = limit, seed

    def _load(self):
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
            split: builder.as_dataset(split=name)
            for split, name in self.split_names.items()
            if name is not None
        }
        return builder.info, datasets

    def sentiment(self) -> Splits:
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
        return limit_splits(Splits(**splits), self.limit)
