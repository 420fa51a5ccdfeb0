"""Classification metrics of the paper's Table 2 (numpy, torch-free)."""
from __future__ import annotations

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    k = min(k, scores.shape[1])
    topk = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((topk == labels[:, None]).any(axis=1).mean())


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Non-interpolated AP of one class (the area under its precision-recall steps)."""
    order = np.argsort(-scores, kind="stable")
    pos = positives[order].astype(np.float64)
    if pos.sum() == 0:
        return float("nan")
    hits = np.cumsum(pos)
    precision = hits / np.arange(1, len(pos) + 1)
    return float((precision * pos).sum() / pos.sum())


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes (that occur in ``labels``) of one-vs-rest AP."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    aps = [average_precision(scores[:, c], labels == c) for c in range(scores.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """acc@1, acc@5 and mAP (in %) over the labeled samples (label >= 0)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    keep = labels >= 0
    scores, labels = scores[keep], labels[keep]
    if len(labels) == 0:
        return {"acc1": float("nan"), "acc5": float("nan"), "mAP": float("nan")}
    return {"acc1": 100 * topk_accuracy(scores, labels, 1),
            "acc5": 100 * topk_accuracy(scores, labels, 5),
            "mAP": 100 * mean_average_precision(scores, labels)}
