"""Final task metrics, computed outside the graph from the reference definitions.

Segmentation scores come from one confusion matrix over all evaluated pixels (ignored
pixels never enter it); BLEU comes from sacrebleu itself, never a copy of it.

- `confusion_matrix(y_true, y_pred, num_classes, ignore_index)`: (C, C) pixel counts,
  rows = truth, columns = prediction.
- `segmentation_scores(confusion)`: `mean_iou`, `pixel_accuracy`, `dice`.
- `caption_bleu(hypotheses, references)`: corpus `bleu4` and `bleu1` with all references
  per image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


# ----------------------------------------------------------------------------- segmentation
def confusion_matrix(y_true, y_pred, num_classes: int, ignore_index: int | None = None,
                     region=None) -> np.ndarray:
    """Pixel counts `(C, C)`: entry [i, j] counts pixels of true class i predicted as j.

    Args:
        y_true: int array of any shape, class indices in [0, C) or `ignore_index`.
        y_pred: int array of the same shape, class indices in [0, C).
        num_classes: C.
        ignore_index: a label in `y_true` whose pixels are left out. Defaults to None.
        region: optional bool array of the same shape; pixels where it is False are left
            out (a field of view).

    Returns:
        int64 `(C, C)`.
    """
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same number of pixels; received "
                         f"{y_true.size} and {y_pred.size}")
    keep = np.ones_like(y_true, dtype=bool)
    if ignore_index is not None:
        keep &= y_true != ignore_index
    if region is not None:
        keep &= np.asarray(region, dtype=bool).ravel()
    y_true, y_pred = y_true[keep], y_pred[keep]
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must hold class indices in [0, {num_classes}) (or ignore_index="
                f"{ignore_index}); received values from {values.min()} to {values.max()}"
            )
    flat = y_true * num_classes + y_pred
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class; NaN for a class absent from truth and prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def per_class_dice(confusion: np.ndarray) -> np.ndarray:
    """Dice = 2 TP / (2 TP + FP + FN) per class; NaN for a class absent from both."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    total = confusion.sum(0) + confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * true_positive / total, np.nan)


def segmentation_scores(confusion: np.ndarray) -> dict[str, float]:
    """`mean_iou` and `dice`: means over the classes present in the truth or the
    prediction (a class absent from both is undefined, not perfect); `pixel_accuracy`:
    correct pixels / evaluated pixels. All in [0, 1]; 0 when no pixel was evaluated."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    if total == 0:
        return {"mean_iou": 0.0, "pixel_accuracy": 0.0, "dice": 0.0}
    return {
        "mean_iou": float(np.nanmean(per_class_iou(confusion))),
        "pixel_accuracy": float(np.trace(confusion) / total),
        "dice": float(np.nanmean(per_class_dice(confusion))),
    }


# ----------------------------------------------------------------------------- captioning
def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                max_ngram_order: int = 4) -> float:
    """Corpus BLEU (0-100) with every reference of every hypothesis, from sacrebleu.

    Args:
        hypotheses: one string per image.
        references: per image, its list of reference strings (any number >= 1).
        max_ngram_order: 4 for BLEU-4, 1 for BLEU-1.

    sacrebleu's defaults apply: 13a tokenisation, cased. Images with fewer references
    than the most have `None` in the missing streams, which sacrebleu skips.
    """
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"one reference list per hypothesis; received {len(hypotheses)} "
                         f"hypotheses and {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every hypothesis needs at least one reference")
    streams = max(len(refs) for refs in references)
    columns = [[refs[k] if k < len(refs) else None for refs in references]
               for k in range(streams)]
    return float(BLEU(max_ngram_order=max_ngram_order).corpus_score(
        list(hypotheses), columns).score)


def caption_bleu(hypotheses: Sequence[str],
                 references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{`bleu4`, `bleu1`}: corpus BLEU with all references per image (sacrebleu, 0-100)."""
    return {"bleu4": corpus_bleu(hypotheses, references, 4),
            "bleu1": corpus_bleu(hypotheses, references, 1)}
