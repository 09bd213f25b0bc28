"""Top-k accuracy and the VOC 2007 11-point interpolated mAP against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from bissl.metrics import (
    classification_metrics,
    mean_average_precision,
    topk_accuracy,
    voc11_average_precision,
)


def _voc07_reference(scores: np.ndarray, labels: np.ndarray) -> float:
    """VOC 2007 devkit's rule on a ranking without ties: cumulative TP/FP down the sorted list,
    then the mean over t = 0, 0.1, …, 1 of the best precision at recall >= t."""
    order = np.argsort(-scores)
    tp = np.cumsum(labels[order] == 1)
    fp = np.cumsum(labels[order] == 0)
    rec = tp / labels.sum()
    prec = tp / (tp + fp)
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        ap += (prec[rec >= t - 1e-12].max() if (rec >= t - 1e-12).any() else 0.0) / 11.0
    return ap


def test_topk_accuracy_small_example() -> None:
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    targets = torch.tensor([1, 1, 0, 0])
    assert topk_accuracy(scores, targets, 1) == pytest.approx(50.0)
    assert topk_accuracy(scores, targets, 2) == pytest.approx(75.0)
    assert topk_accuracy(scores, targets, 5) == pytest.approx(100.0)  # k > C


def test_topk_multilabel_hit_when_any_top_class_is_positive() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.1, 0.2, 0.9]])
    targets = np.array([[0, 0, 1], [0, 1, 0]], dtype=np.float32)
    assert topk_accuracy(scores, targets, 1) == pytest.approx(0.0)
    assert topk_accuracy(scores, targets, 2) == pytest.approx(100.0)


def test_voc11_hand_computed() -> None:
    # ranking: + - + - -  -> (recall, precision): (.5,1) (.5,.5) (1,.667) (1,.5) (1,.4)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 1, 0, 0])
    # t = 0..0.5 (6 points): max precision 1; t = 0.6..1 (5 points): 2/3
    assert voc11_average_precision(scores, labels) == pytest.approx((6 * 1.0 + 5 * (2 / 3)) / 11)


@pytest.mark.parametrize("seed", range(5))
def test_voc11_matches_devkit_rule_on_random_rankings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.permutation(200).astype(float)  # distinct scores: no ties
    labels = (rng.random(200) < 0.2 + 0.1 * seed).astype(int)
    assert voc11_average_precision(scores, labels) == pytest.approx(
        _voc07_reference(scores, labels), abs=1e-12
    )


def test_map_skips_classes_without_positives_and_agrees_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((50, 4))
    targets = (rng.random((50, 4)) < 0.3).astype(np.float32)
    targets[:, 2] = 0  # no positive: excluded from the mean
    expected = np.mean([_voc07_reference(scores[:, c], targets[:, c]) for c in (0, 1, 3)])
    assert mean_average_precision(scores, targets) == pytest.approx(100 * expected)
    sk = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in (0, 1, 3)])
    assert mean_average_precision(scores, targets, eleven_point=False) == pytest.approx(100 * sk)


def test_classification_metrics_keys() -> None:
    logits = torch.randn(10, 6)
    assert set(classification_metrics(logits, torch.randint(0, 6, (10,)))) == {"top1", "top5"}
    multi = (torch.rand(10, 6) < 0.3).float()
    multi[0] = 1
    assert set(classification_metrics(logits, multi)) == {"top1", "top5", "map11", "map"}
    perfect = classification_metrics(multi * 10, multi)
    assert perfect["map11"] == pytest.approx(100.0) and perfect["map"] == pytest.approx(100.0)


def test_difficult_pairs_are_left_out_of_the_ranking() -> None:
    """VOC devkit rule: a difficult image-class pair is neither a hit nor a false alarm.

    Class 0 ranks (difficult, pos, neg, pos). Counted as a negative: precision 1/2 at both
    recalls, AP = 0.5. Left out: (pos, neg, pos), precision 1 up to recall 0.5 then 2/3,
    AP = (6·1 + 5·2/3) / 11. Class 1 has no difficult pair and keeps its AP.
    """
    scores = np.array([[0.9, 0.1], [0.8, 0.9], [0.7, 0.2], [0.6, 0.3]])
    targets = np.array([[0, 0], [1, 1], [0, 0], [1, 0]], dtype=np.float32)
    ignore = np.zeros_like(targets, dtype=bool)
    ignore[0, 0] = True
    class1 = 1.0  # its one positive ranks first
    assert mean_average_precision(scores, targets) == pytest.approx(100 * (0.5 + class1) / 2)
    with_ignore = mean_average_precision(scores, targets, ignore=ignore)
    assert with_ignore == pytest.approx(100 * ((6 + 5 * 2 / 3) / 11 + class1) / 2)
    # labelled positive instead ("difficult=positive" loading): the same once left out
    as_positive = targets.copy()
    as_positive[0, 0] = 1
    assert mean_average_precision(scores, as_positive, ignore=ignore) == pytest.approx(with_ignore)
    metrics = classification_metrics(scores, targets, ignore=ignore)
    assert metrics["map11"] == pytest.approx(with_ignore)
    with pytest.raises(ValueError, match="ignore must be"):
        mean_average_precision(scores, targets, ignore=ignore[:, :1])
