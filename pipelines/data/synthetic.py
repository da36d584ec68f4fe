"""Built-in generated data, so that every command runs offline and deterministically.

`SyntheticSource(seed, num_train, ...)` is what `data=synthetic` instantiates; a task reads
the format its yaml names (`source.read("labelled_text")`, `"parallel_text"`, `"conll"`, ...,
`pipelines.data.source.FORMATS`), and each generator is a pure function of the seed. The translation and NER generators live in
`synthetic_translation.py` and `synthetic_ner.py`.
"""
from __future__ import annotations

import random

from pipelines.data.source import Source
from pipelines.data.splits import Splits, limit_splits
from pipelines.data.synthetic_ner import ner_example
from pipelines.data.synthetic_translation import translation_example

# ----------------------------------------------------------------------------- sentiment
_POSITIVE = ["good", "great", "excellent", "wonderful", "brilliant", "superb", "charming",
             "delightful", "moving", "clever", "gripping", "beautiful"]
_NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "weak", "horrible",
             "clumsy", "tedious", "bland", "messy"]
_NOUNS = ["movie", "film", "plot", "acting", "story", "script", "cast", "ending", "music",
          "dialogue", "direction", "pacing", "soundtrack", "camera work"]
_INTENSIFIERS = ["very", "really", "quite", "truly", "rather", "so", "incredibly"]
_OPENERS = ["", "", "", "honestly ", "i thought ", "to me ", "overall "]
_CONTRASTS = ["but", "yet", "however"]


def _clause(rng: random.Random) -> tuple[str, int]:
    """'the plot was not very good' -> (text, polarity in {+1, -1})."""
    positive = rng.random() < 0.5
    adjective = rng.choice(_POSITIVE if positive else _NEGATIVE)
    negated = rng.random() < 0.4
    words = ["the", rng.choice(_NOUNS), rng.choice(["was", "is", "felt", "seemed"])]
    if negated:
        words.append("not")
    if rng.random() < 0.4:
        words.append(rng.choice(_INTENSIFIERS))
    words.append(adjective)
    polarity = (1 if positive else -1) * (-1 if negated else 1)
    return " ".join(words), polarity


def sentiment_example(rng: random.Random) -> tuple[str, str]:
    """One (text, label) pair whose label needs word order.

    Negation flips the adjective after it, and in a contrast ("A but B", "although A, B")
    the second clause decides. "the plot was good but the acting was not bad" and "the plot
    was not good but the acting was bad" hold the same bag of words with opposite labels,
    so a bag-of-words model cannot reach 100%.
    """
    first, first_polarity = _clause(rng)
    kind = rng.random()
    if kind < 0.3:
        text, polarity = first, first_polarity
    elif kind < 0.65:
        second, polarity = _clause(rng)
        text = f"{first} {rng.choice(_CONTRASTS)} {second}"
    elif kind < 0.85:
        second, polarity = _clause(rng)
        text = f"although {first} , {second}"
    else:
        # Agreement: both clauses carry the label; 'and' joins two of the same polarity.
        second, second_polarity = _clause(rng)
        while second_polarity != first_polarity:
            second, second_polarity = _clause(rng)
        text, polarity = f"{first} and {second}", first_polarity
    text = rng.choice(_OPENERS) + text
    return text, "positive" if polarity > 0 else "negative"


class SyntheticSource(Source):
    """`data=synthetic`: generated splits of every format, deterministic per seed."""

    name = "synthetic"

    def __init__(self, seed: int = 42, num_train: int | None = None,
                 num_validation: int | None = None, num_test: int | None = None,
                 limit: int | None = None, ignore_index: int | None = None):
        self.seed = seed
        self.ignore_index = ignore_index  # segmentation: read by the task, not the generator
        self.sizes = {"train": num_train, "validation": num_validation, "test": num_test}
        self.limit = limit

    def _sizes(self, train: int, validation: int, test: int) -> dict[str, int]:
        """The configured split sizes, the task's defaults where they are None, capped by
        `limit` (generating only the first `limit` examples gives the same ones)."""
        defaults = {"train": train, "validation": validation, "test": test}
        sizes = {split: size if size is not None else defaults[split]
                 for split, size in self.sizes.items()}
        return {split: min(size, self.limit or size) for split, size in sizes.items()}

    def _generate(self, task: str, example, sizes: dict[str, int]) -> Splits:
        """Draws each split from its own generator, `random.Random(f"{seed}-{task}-{index}")`."""
        splits = {}
        for offset, (split, size) in enumerate(sizes.items()):
            rng = random.Random(f"{self.seed}-{task}-{offset}")
            pairs = [example(rng) for _ in range(size)]
            splits[split] = ([inputs for inputs, _ in pairs], [targets for _, targets in pairs])
        return limit_splits(Splits(**splits), self.limit)

    def labelled_text(self) -> Splits:
        """texts (str) -> labels ("positive"/"negative"); 8000 / 1000 / 1000 by default."""
        return self._generate("sentiment", sentiment_example, self._sizes(8000, 1000, 1000))

    def parallel_text(self) -> Splits:
        """source sentences (str) -> target sentences (str) of a made-up language related by
        vocabulary, reordering, agreement and tense rules (`synthetic_translation`);
        20000 / 1000 / 1000 by default.

        Example: "the old teacher found two red boxes near my house" ->
        "zape ratatam balepe buke sudumet vak sarip vapiten fedepos nikezake ta".
        """
        return self._generate("translation", translation_example,
                              self._sizes(20000, 1000, 1000))

    def text_lines(self) -> Splits:
        """texts -> document ids: the English side of the generated translation corpus
        (a small grammar, so a language model's perplexity falls fast), five sentences to a
        document; 20000 / 1000 / 1000 by default."""
        splits = self._generate("text_lines", lambda rng: (translation_example(rng)[0], 0),
                                self._sizes(20000, 1000, 1000))

        def documents(pair):
            return pair[0], [index // 5 for index in range(len(pair[0]))]

        return Splits(documents(splits.train), documents(splits.validation),
                      documents(splits.test))

    def conll(self) -> Splits:
        """token lists -> IOB2 tag lists (PER, LOC, ORG, MISC) where context decides the tag
        (`synthetic_ner`); 8000 / 1000 / 1000 by default.

        Example: president washington arrived in new york on friday .
                 O         B-PER      O       O  B-LOC I-LOC O O     O
        """
        return self._generate("ner", ner_example, self._sizes(8000, 1000, 1000))

    def _scenes(self, train: int, validation: int, test: int) -> dict:
        """{split: SceneBatch} from `scenes.scene_splits`: the same seed draws the same
        scenes for every vision task; `limit` draws only the first scenes."""
        from pipelines.data.scenes import scene_splits

        sizes = self._sizes(train, validation, test)
        cached = getattr(self, "_scene_cache", None)  # image_captions, then scene_shapes
        if cached is None or cached[0] != sizes:
            self._scene_cache = (sizes, scene_splits(self.seed, sizes))
        return self._scene_cache[1]

    def image_masks(self) -> Splits:
        """64 x 64 scenes (uint8 (64, 64, 3)) -> masks (uint8 (64, 64)): 0 = background,
        1 + the kind of each shape (`scenes.MASK_CLASSES`); 4000 / 500 / 500 by default."""
        batches = self._scenes(4000, 500, 500)
        return Splits(**{split: (list(batch.images), list(batch.masks))
                         for split, batch in batches.items()})

    def image_captions(self) -> Splits:
        """64 x 64 scenes -> their 3-5 true captions each ("a small red circle left of a
        large blue square", "two shapes on a noisy background", ...); 6000 / 500 / 500."""
        batches = self._scenes(6000, 500, 500)
        return Splits(**{split: (list(batch.images), list(batch.captions))
                         for split, batch in batches.items()})

    def image_questions(self) -> Splits:
        """64 x 64 scenes -> (question, answer) pairs answered from each scene's shapes ("what
        colour is the triangle?" -> "red", "how many circles?" -> "two"; only questions whose
        answer the scene defines, `scene_questions`); the scenes of `image_captions`."""
        import numpy as np

        from pipelines.data.scene_questions import scene_questions

        splits = {}
        for offset, (split, batch) in enumerate(self._scenes(6000, 500, 500).items()):
            rng = np.random.default_rng([self.seed, offset, 1])  # scenes draw from [seed, offset]
            splits[split] = (list(batch.images),
                             [scene_questions(shapes, rng) for shapes in batch.shapes])
        return Splits(**splits)

    def labelled_scenes(self) -> Splits:
        """64 x 64 scenes -> every target of each scene, `{"label": the largest shape's kind,
        "mask": uint8 (64, 64) of `scenes.MASK_CLASSES`, "captions": its 3-5 captions}` (the
        targets of image_masks, labelled_images and image_captions at once); the scenes of
        `image_captions`, 6000 / 500 / 500 by default."""
        return Splits(**{split: (list(batch.images),
                                 [{"label": label, "mask": mask, "captions": captions}
                                  for label, mask, captions in zip(batch.labels, batch.masks,
                                                                   batch.captions)])
                         for split, batch in self._scenes(6000, 500, 500).items()})

    def scene_shapes(self) -> dict[str, list]:
        """{split: the `scenes.Shape` records of each scene `image_captions` returns} (the
        largest shape first): the labels and held-out colour-shape pairs of image_text."""
        return {split: batch.shapes for split, batch in self._scenes(6000, 500, 500).items()}

    def labelled_images(self) -> Splits:
        """64 x 64 scenes of 1-3 coloured shapes on textured backgrounds (uint8 arrays
        (N, 64, 64, 3)) -> the kind of the largest shape ("circle", "square", "triangle",
        "diamond", "cross", "star"; `scenes.KINDS`); 12000 / 1000 / 1000 by default.

        A linear model on the pixels stays near chance; a small CNN exceeds 0.9.
        """
        from pipelines.data.scenes import scene_splits

        batches = scene_splits(self.seed, self._sizes(12000, 1000, 1000))
        return Splits(**{split: (batch.images, batch.labels) for split, batch in batches.items()})
