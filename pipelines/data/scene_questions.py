"""Questions about a generated scene, answered from the scene's own shapes (`visual_qa`).

Three types of question, each asked only where its answer is well defined for the scene:

- colour: "what colour is the triangle?" when the scene holds exactly one triangle;
  "what colour is the largest shape?" always (one shape is large, `scenes`);
- shape: "what shape is the red object?" when exactly one shape is red;
  "what shape is the largest object?" always;
- count: "how many circles?" for every kind the scene holds and for one kind it does not
  hold (answer "zero"), drawn from `rng`; "how many shapes?" always.

Answers are words: a colour (`scenes.COLOURS`), a kind (`scenes.KINDS`) or a number word
("zero" to "three"). `question_type` reads the type back from a question's first words.
Pure Python, no TensorFlow.
"""
from __future__ import annotations

import collections
import re

import numpy as np

from pipelines.data.scenes import KINDS, Shape

QUESTION_TYPES = ("colour", "shape", "count")
NUMBERS = ("zero", "one", "two", "three")
# The first words of a question -> its type (American spelling too, as in VQA v2).
_TYPE_PATTERNS = (("colour", re.compile(r"^\s*what colou?r\b")),
                  ("shape", re.compile(r"^\s*what shape\b")),
                  ("count", re.compile(r"^\s*how many\b")))


def plural(kind: str) -> str:
    """"circle" -> "circles", "cross" -> "crosses"."""
    return f"{kind}es" if kind.endswith(("s", "x")) else f"{kind}s"


def question_type(question: str) -> str:
    """"what colour is ..." -> "colour", "what shape ..." -> "shape", "how many ..." ->
    "count"; anything else -> "other"."""
    text = question.lower()
    return next((name for name, pattern in _TYPE_PATTERNS if pattern.match(text)), "other")


def scene_questions(shapes: list[Shape], rng: np.random.Generator) -> list[tuple[str, str]]:
    """(question, answer) pairs about one scene, its shapes the largest first (see the module
    docstring); `rng` draws the kind absent from the scene that a count question asks about."""
    kinds = collections.Counter(shape.kind for shape in shapes)
    colours = collections.Counter(shape.colour for shape in shapes)
    large = shapes[0]
    pairs = [("what colour is the largest shape?", large.colour)]
    pairs += [(f"what colour is the {shape.kind}?", shape.colour)
              for shape in shapes if kinds[shape.kind] == 1]
    pairs.append(("what shape is the largest object?", large.kind))
    pairs += [(f"what shape is the {shape.colour} object?", shape.kind)
              for shape in shapes if colours[shape.colour] == 1]
    pairs.append(("how many shapes?", NUMBERS[len(shapes)]))
    present = [kind for kind in KINDS if kinds[kind]]
    absent = [kind for kind in KINDS if not kinds[kind]]
    pairs += [(f"how many {plural(kind)}?", NUMBERS[kinds[kind]]) for kind in present]
    absent_kind = absent[int(rng.integers(len(absent)))]  # at most 3 of the 6 kinds are present
    pairs.append((f"how many {plural(absent_kind)}?", "zero"))
    return pairs
