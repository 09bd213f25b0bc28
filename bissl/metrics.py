"""Downstream metrics: top-k accuracy and (11-point interpolated) mean average precision.

All accuracies and mAPs are returned in percent. Single-label targets are class indices ``[N]``;
multi-label targets are multi-hot ``[N, C]`` (a top-k prediction is a hit when any of the k
highest-scoring classes is positive).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _np(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def topk_accuracy(scores: ArrayLike, targets: ArrayLike, k: int = 1) -> float:
    """Percentage of rows whose ``k`` highest scores (``scores [N, C]``) contain a true class.

    ``k`` larger than C counts every row as a hit (top-5 of a 3-class problem is 100%).
    """
    s = _np(scores)
    t = _np(targets)
    if s.ndim != 2 or len(s) != len(t):
        raise ValueError(f"scores must be [N, C] and match targets, got {s.shape} and {t.shape}")
    if len(s) == 0:
        return float("nan")
    k = min(k, s.shape[1])
    # argsort of the negated scores, stable: ties resolved towards lower class indices
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    if t.ndim == 2:
        hits = np.take_along_axis(t > 0.5, top, axis=1).any(axis=1)
    else:
        hits = (top == t[:, None]).any(axis=1)
    return 100.0 * float(hits.mean())


def voc11_average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """PASCAL VOC 2007 11-point interpolated AP of one class, in [0, 1].

    AP = (1/11) Σ_{t ∈ {0, 0.1, …, 1}} max{precision(c) : recall(c) >= t} (0 if no cut-off c
    reaches recall t), over the cut-offs c of the ranking by score (tied scores form one cut-off).
    NaN when the class has no positive.
    """
    from sklearn.metrics import precision_recall_curve

    y = _np(labels).astype(bool).ravel()
    s = _np(scores).astype(np.float64).ravel()
    if not y.any():
        return float("nan")
    precision, recall, _ = precision_recall_curve(y, s)
    # sklearn appends (recall 0, precision 1), which is no cut-off of the ranking: drop it
    precision, recall = precision[:-1], recall[:-1]
    ap = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        reach = recall >= t - 1e-12
        ap += float(precision[reach].max()) if reach.any() else 0.0
    return ap / 11.0


def mean_average_precision(
    scores: ArrayLike,
    targets: ArrayLike,
    eleven_point: bool = True,
    ignore: ArrayLike | None = None,
) -> float:
    """Mean over classes (with at least one positive) of the AP, in percent.

    ``eleven_point`` uses :func:`voc11_average_precision` (VOC 2007); otherwise scikit-learn's
    non-interpolated ``average_precision_score``. ``ignore`` (``bool [N, C]``) leaves image-class
    pairs out of that class's ranking, as the VOC devkit does with its "difficult" (0) entries.
    """
    from sklearn.metrics import average_precision_score

    s = _np(scores)
    t = _np(targets)
    if s.shape != t.shape or s.ndim != 2:
        raise ValueError(
            f"scores and multi-hot targets must both be [N, C], got {s.shape}, {t.shape}"
        )
    skip = np.zeros(s.shape, dtype=bool) if ignore is None else _np(ignore).astype(bool)
    if skip.shape != s.shape:
        raise ValueError(f"ignore must be [N, C] like the scores {s.shape}, got {skip.shape}")
    aps = []
    for c in range(s.shape[1]):
        keep = ~skip[:, c]
        positive = t[keep, c] > 0.5
        if not positive.any():
            continue
        if eleven_point:
            aps.append(voc11_average_precision(s[keep, c], positive))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                aps.append(float(average_precision_score(positive, s[keep, c])))
    return 100.0 * float(np.mean(aps)) if aps else float("nan")


def classification_metrics(
    logits: ArrayLike, targets: ArrayLike, ignore: ArrayLike | None = None
) -> dict[str, float]:
    """``top1``, ``top5`` (and ``map11`` and ``map`` for multi-hot targets), all in percent.

    ``ignore`` (``bool [N, C]``, multi-hot only) is passed to :func:`mean_average_precision`.
    """
    t = _np(targets)
    out = {"top1": topk_accuracy(logits, t, 1), "top5": topk_accuracy(logits, t, 5)}
    if t.ndim == 2:
        out["map11"] = mean_average_precision(logits, t, eleven_point=True, ignore=ignore)
        out["map"] = mean_average_precision(logits, t, eleven_point=False, ignore=ignore)
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}
