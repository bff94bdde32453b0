"""Image-level metrics of anomaly detection, exact and tie-aware.

Conventions (the ones the paper and scikit-learn use): label 1 = anomalous, a higher score means
more anomalous, a tie between a positive and a negative counts one half. Pixel-level metrics are
accumulated in :class:`evaluate.pixel_state.PixelMetricState` (re-exported here) so that no process
ever needs every anomaly map at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluate.curves import auroc_from_counts, best_f1_from_counts
from evaluate.pixel_state import PixelMetricState

__all__ = [
    "PixelMetricState",
    "answer_accuracy",
    "answer_agreement",
    "auroc",
    "best_threshold_accuracy",
    "f1_max",
    "f1_max_threshold",
    "has_both_classes",
    "position_accuracy",
    "substring_accuracy",
    "threshold_accuracy",
]


def _as_arrays(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray):
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/inf values")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:5].tolist()}")
    return s, y.astype(bool)


def has_both_classes(labels: Sequence[int] | np.ndarray) -> bool:
    """True when AUROC/F1 are defined: at least one normal and one anomalous sample."""
    y = np.asarray(labels).astype(bool)
    return bool(y.any() and (~y).any())


def _tie_groups(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative counts per distinct score, scores ascending."""
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    sizes = np.diff(np.r_[starts, s.size])
    pos = np.add.reduceat(y.astype(np.int64), starts)
    return pos, sizes - pos


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve, exact: the Mann-Whitney statistic with ties counted one half,
    which is exactly what ``sklearn.metrics.roc_auc_score``'s trapezoids give.

    Raises ValueError when only one class is present (the AUROC is undefined), as scikit-learn does.
    """
    s, y = _as_arrays(scores, labels)
    if not has_both_classes(y):
        raise ValueError("AUROC needs at least one normal and one anomalous sample")
    pos, neg = _tie_groups(s, y)
    return auroc_from_counts(pos, neg)


def _best_f1(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of the best rule "anomalous when score >= threshold" over every distinct
    score; among equal F1 the highest threshold (the fewest alarms)."""
    if not y.any():
        raise ValueError("F1-max needs at least one anomalous sample")
    level, f1 = best_f1_from_counts(*_tie_groups(s, y))
    return float(np.unique(s)[level]), f1


def f1_max(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Maximum F1 over all thresholds (every distinct score); needs at least one anomalous sample."""
    return _best_f1(*_as_arrays(scores, labels))[1]


def f1_max_threshold(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The threshold where :func:`f1_max` is reached (a sample is anomalous when its score is
    ``>=`` it): the map's own yes/no decision, against which the answers are compared."""
    return _best_f1(*_as_arrays(scores, labels))[0]


def best_threshold_accuracy(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> float:
    """The best accuracy any threshold on the score reaches: the ceiling for answers that follow
    the map. Thresholds are every distinct score (">= level") and one above them all (nothing
    anomalous), so with a single class present it is 1.0, which that threshold truly reaches."""
    s, y = _as_arrays(scores, labels)
    if not y.size:
        raise ValueError("accuracy of zero samples is undefined")
    pos, neg = _tie_groups(s, y)
    tp = np.r_[0, np.cumsum(pos[::-1])]  # called anomalous: nothing, then the top levels
    fp = np.r_[0, np.cumsum(neg[::-1])]
    return float((tp + neg.sum() - fp).max() / y.size)


def threshold_accuracy(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Accuracy without the LLM, the paper's rule (Table 4): the threshold is the highest score of a
    normal sample, and a sample is called anomalous when its score is strictly above it.

    So every normal sample is classified correctly by construction; the figure measures how many
    anomalies score above all normals. Needs at least one normal sample.
    """
    s, y = _as_arrays(scores, labels)
    if y.all():
        raise ValueError("threshold accuracy needs at least one normal sample")
    threshold = s[~y].max()
    return float(np.mean((s > threshold) == y))


def answer_accuracy(verdicts: Sequence[bool | None], labels: Sequence[int] | np.ndarray) -> float:
    """Accuracy of parsed answers (``True`` = says anomalous); an answer that says neither yes nor
    no (``None``) is counted wrong, never dropped."""
    y = np.asarray(labels).astype(bool).ravel()
    if len(verdicts) != y.size:
        raise ValueError(f"verdicts and labels differ in length: {len(verdicts)} vs {y.size}")
    if not y.size:
        raise ValueError("accuracy of zero answers is undefined")
    correct = [v is not None and v == bool(t) for v, t in zip(verdicts, y, strict=True)]
    return float(np.mean(correct))


def substring_accuracy(answers: Sequence[str | None], labels: Sequence[int] | np.ndarray) -> float:
    """The reference code's rule, reported beside the strict one: correct when "Yes" is a substring
    of the answer to an anomalous image, or "No" of the answer to a normal one (case-sensitive)."""
    y = np.asarray(labels).astype(bool).ravel()
    if len(answers) != y.size:
        raise ValueError(f"answers and labels differ in length: {len(answers)} vs {y.size}")
    if not y.size:
        raise ValueError("accuracy of zero answers is undefined")
    correct = [("Yes" if t else "No") in (a or "") for a, t in zip(answers, y, strict=True)]
    return float(np.mean(correct))


def answer_agreement(verdicts: Sequence[bool | None], decisions: Sequence[bool] | np.ndarray) -> float:
    """Share of answers whose yes/no equals the map's decision; an answer that says neither
    (``None``) disagrees, as it counts wrong in :func:`answer_accuracy`."""
    d = np.asarray(decisions).astype(bool).ravel()
    if len(verdicts) != d.size:
        raise ValueError(f"verdicts and decisions differ in length: {len(verdicts)} vs {d.size}")
    if not d.size:
        raise ValueError("agreement of zero answers is undefined")
    return float(np.mean([v is not None and v == t for v, t in zip(verdicts, d, strict=True)]))


def position_accuracy(answered: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> float:
    """Share of images whose answer names at least one grid cell that holds a ground-truth
    region's centroid; an answer that names no cell misses."""
    if len(answered) != len(truth):
        raise ValueError(f"answers and truths differ in length: {len(answered)} vs {len(truth)}")
    if not truth:
        raise ValueError("position accuracy of zero images is undefined")
    return float(np.mean([bool(set(a) & set(t)) for a, t in zip(answered, truth, strict=True)]))
