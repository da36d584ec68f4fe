"""Final metrics on hand-computed examples: IoU/Dice with an ignore label, BLEU via sacrebleu."""
import numpy as np
import pytest
import sacrebleu

from pipelines.metrics import (caption_bleu, confusion_matrix, corpus_bleu, per_class_dice,
                               per_class_iou, segmentation_scores)

# Truth and prediction of a 2x3 image; 255 marks an ignored pixel, predicted as class 0.
TRUTH = np.array([[0, 0, 1], [1, 2, 255]])
PREDICTION = np.array([[0, 1, 1], [1, 2, 0]])


def test_confusion_matrix_leaves_out_ignored_pixels():
    confusion = confusion_matrix(TRUTH, PREDICTION, num_classes=3, ignore_index=255)
    # rows: truth, columns: prediction; the ignored pixel's prediction (0) is not counted.
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])


def test_scores_by_hand_with_an_ignore_label():
    scores = segmentation_scores(confusion_matrix(TRUTH, PREDICTION, 3, ignore_index=255))
    # class 0: TP 1, FP 0, FN 1 -> IoU 1/2, Dice 2/3; class 1: TP 2, FP 1, FN 0 -> IoU 2/3,
    # Dice 4/5; class 2: TP 1 -> IoU 1, Dice 1. Pixel accuracy: 4 of 5 evaluated pixels.
    assert scores["mean_iou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert scores["dice"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 5)


def test_ignored_pixels_change_nothing_whatever_is_predicted_there():
    for guess in (0, 1, 2):
        prediction = PREDICTION.copy()
        prediction[1, 2] = guess
        np.testing.assert_array_equal(confusion_matrix(TRUTH, prediction, 3, ignore_index=255),
                                      confusion_matrix(TRUTH, PREDICTION, 3, ignore_index=255))


def test_region_restricts_the_pixels_like_an_ignore_label():
    truth = np.where(TRUTH == 255, 0, TRUTH)
    region = TRUTH != 255
    np.testing.assert_array_equal(confusion_matrix(truth, PREDICTION, 3, region=region),
                                  confusion_matrix(TRUTH, PREDICTION, 3, ignore_index=255))


def test_absent_class_is_left_out_but_a_false_positive_class_counts():
    confusion = confusion_matrix(TRUTH, PREDICTION, num_classes=4, ignore_index=255)
    assert np.isnan(per_class_iou(confusion)[3]) and np.isnan(per_class_dice(confusion)[3])
    assert segmentation_scores(confusion)["mean_iou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    # Predicting class 3 where truth is 2: class 3 now has union 1 and IoU 0; class 2 IoU 0.
    prediction = PREDICTION.copy()
    prediction[1, 1] = 3
    iou = per_class_iou(confusion_matrix(TRUTH, prediction, 4, ignore_index=255))
    np.testing.assert_allclose(iou, [1 / 2, 2 / 3, 0.0, 0.0])


def test_binary_dice_is_f1_of_the_foreground():
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    prediction = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    dice = per_class_dice(confusion_matrix(truth, prediction, 2))
    assert dice[1] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # TP 2, FP 1, FN 1
    assert dice[0] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))


def test_labels_out_of_range_name_the_values():
    with pytest.raises(ValueError, match=r"y_true must hold class indices in \[0, 3\).*255"):
        confusion_matrix(TRUTH, PREDICTION, 3)


def test_no_evaluated_pixel_gives_zeros_not_nan():
    confusion = confusion_matrix(np.full((2, 2), 255), np.zeros((2, 2)), 3, ignore_index=255)
    assert segmentation_scores(confusion) == {"mean_iou": 0.0, "pixel_accuracy": 0.0, "dice": 0.0}


HYPOTHESES = ["a small red circle left of a blue square", "a green triangle",
              "two yellow squares on a striped background"]
REFERENCES = [
    ["a small red circle left of a blue square", "a red circle to the left of a blue square",
     "a small red circle and a blue square"],
    ["a big green triangle", "a green triangle on a dotted background", "one green triangle",
     "a large green triangle", "the green triangle"],
    ["two yellow squares", "two yellow squares on stripes", "a pair of yellow squares",
     "yellow squares on a striped background"],
]


def test_bleu_uses_every_reference_and_equals_sacrebleu():
    scores = caption_bleu(HYPOTHESES, REFERENCES)
    # With equal reference counts the streams are plain sacrebleu input.
    three = [refs[:3] for refs in REFERENCES]
    streams = [list(column) for column in zip(*three)]
    assert corpus_bleu(HYPOTHESES, three) == pytest.approx(
        sacrebleu.corpus_bleu(HYPOTHESES, streams).score)
    assert corpus_bleu(HYPOTHESES, three, 1) == pytest.approx(
        sacrebleu.metrics.BLEU(max_ngram_order=1).corpus_score(HYPOTHESES, streams).score)
    # Here every extra reference adds n-gram matches (and no worse brevity penalty).
    first = corpus_bleu(HYPOTHESES, [refs[:1] for refs in REFERENCES])
    assert scores["bleu4"] >= corpus_bleu(HYPOTHESES, three) >= first
    assert scores["bleu4"] > first  # the extra refs of images 2 and 3 were used
    assert 0 < scores["bleu4"] <= scores["bleu1"] == pytest.approx(100)


def test_bleu_perfect_and_argument_errors():
    assert caption_bleu(["a red circle"], [["a red circle", "a circle"]])["bleu1"] == pytest.approx(100)
    with pytest.raises(ValueError, match="one reference list per hypothesis"):
        corpus_bleu(["a"], [])
    with pytest.raises(ValueError, match="at least one reference"):
        corpus_bleu(["a"], [[]])
