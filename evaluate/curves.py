"""Metric curves from per-level counts: shared by the exact image metrics and the pixel histograms.

Levels are score values (or score bins) in ascending order; ``pos``/``neg`` count the anomalous and
normal samples at each level.
"""

from __future__ import annotations

import numpy as np


def auroc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC = sum(pos * (2 * neg_below + neg_same)) / (2 P N): each positive beats the negatives of
    lower levels and ties (one half) with those of its own level, which is what scikit-learn's
    trapezoids give. Float64 holds every product exactly up to 2**53, so the only rounding is in
    the final sum."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    neg_below = np.cumsum(neg) - neg
    return float(np.dot(pos, 2.0 * neg_below + neg) / (2.0 * pos.sum() * neg.sum()))


def best_f1_from_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[int, float]:
    """(level, F1) of the best threshold "score >= level", as from precision_recall_curve; among
    equal F1 the highest level (the fewest alarms). Levels with nothing at or above them are skipped."""
    tp = np.cumsum(np.asarray(pos, dtype=np.float64)[::-1])  # thresholds from the highest level down
    fp = np.cumsum(np.asarray(neg, dtype=np.float64)[::-1])
    predicted = tp + fp
    f1 = np.where(predicted > 0, 2.0 * tp / np.maximum(predicted + tp[-1], 1e-300), -1.0)  # 2TP/(2TP+FP+FN)
    best = int(np.argmax(f1))  # the first maximum: the highest level
    return len(f1) - 1 - best, float(f1[best])


def f1_max_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """Best F1 over the thresholds "score >= level", as from precision_recall_curve."""
    return best_f1_from_counts(pos, neg)[1]


def partial_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under the curve (x nondecreasing) from x[0] to ``x_max``, interpolating y
    linearly at ``x_max`` (the MVTec AD PRO integration)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    inside = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:inside], y[:inside]
    if inside < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        xs = np.r_[xs, x_max]
        ys = np.r_[ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))
