"""Classification metrics of the paper's Table 2 (numpy, torch-free)."""
from __future__ import annotations

import numpy as np


def top_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best classes of one score vector, best first, by THE ranking rule of jedi-deploy:
    higher score first, a tie broken toward the lower class index (what ``argmax`` picks). Used by
    every top-k list, acc@k, the INT8 gate and ``jedi eval`` alike (:func:`label_ranks`)."""
    return np.argsort(-np.asarray(scores), kind="stable")[:max(1, k)]


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based rank of each sample's label by the rule of :func:`top_classes`: the classes scoring
    higher, plus the tied classes of a lower index, plus one."""
    scores, labels = np.asarray(scores), np.asarray(labels).astype(np.int64)
    own = scores[np.arange(len(labels)), labels][:, None]
    lower = np.arange(scores.shape[1])[None, :] < labels[:, None]
    return (scores > own).sum(axis=1) + ((scores == own) & lower).sum(axis=1) + 1


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` best classes (:func:`label_ranks`)."""
    return float((label_ranks(scores, labels) <= k).mean())


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


#: An initial expert at or above this acc@1 (%) leaves no room to show a gain.
CEILING = 99.0


def verdict(lo: float, hi: float) -> str:
    """"beats" only when the whole interval of the gain is above 0, "worse" when below, else "within noise"."""
    return "beats" if lo > 0 else ("worse" if hi < 0 else "within noise")


def paired_bootstrap(correct: np.ndarray, baseline: np.ndarray, *, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """The acc@1 gain (points) of a model over a baseline on the same videos, with a percentile
    bootstrap interval that resamples videos (both models' outcomes on a video move together)."""
    a, b = np.asarray(correct, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError("paired_bootstrap needs two equally long, non-empty 1-D arrays")
    d = a - b
    rng = np.random.default_rng(seed)
    boots = np.concatenate([d[rng.integers(0, len(d), (min(256, resamples - k), len(d)))].mean(axis=1)
                            for k in range(0, resamples, 256)]) * 100
    lo, hi = (float(x) for x in np.percentile(boots, [50 * (1 - level), 50 * (1 + level)]))
    return {"gain": float(100 * d.mean()), "ci95": [lo, hi], "verdict": verdict(lo, hi), "videos": int(len(d))}
