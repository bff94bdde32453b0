"""Pixel AUROC: our mergeable histogram state against sklearn.metrics.roc_auc_score.

Prints one JSON object: seconds and peak traced memory (tracemalloc sees numpy's buffers) of each,
the absolute difference of the two values, and our own error bound. The scores are float32 in
[0, 1] like the model's anomaly maps (5 % anomalous pixels, overlapping distributions, so there are
many exact float32 ties as well as near ties).

    python benchmarks/metrics.py [--n 50000000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np


def make_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n, dtype=np.float32) < 0.05
    scores = rng.standard_normal(n, dtype=np.float32)
    scores *= 0.15
    scores += 0.3 + 0.25 * labels
    np.clip(scores, 0.0, 1.0, out=scores)
    return scores, labels


def ours(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from evaluate.pixel_state import PixelMetricState

    state = PixelMetricState()
    state.update_pixels(scores, labels)
    return state.auroc(), state.auroc_error_bound()


def sklearn_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def measure(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    fn(*args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return value, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=50_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import sklearn.metrics  # noqa: F401

    import evaluate.pixel_state  # noqa: F401  (import time is not part of the figure)

    scores, labels = make_scores(args.n, args.seed)
    data_mib = (scores.nbytes + labels.nbytes) / 2**20
    (value, bound), t_ours, m_ours = measure(ours, scores, labels)
    ref, t_sk, m_sk = measure(sklearn_auroc, scores, labels)
    print(
        json.dumps(
            {
                "n_scores": args.n,
                "scores_and_labels_mib": round(data_mib, 1),
                "ours_s": round(t_ours, 3),
                "ours_peak_mib": round(m_ours / 2**20, 1),
                "sklearn_s": round(t_sk, 3),
                "sklearn_peak_mib": round(m_sk / 2**20, 1),
                "speedup": round(t_sk / t_ours, 1),
                "ours_auroc": value,
                "sklearn_auroc": ref,
                "abs_diff": abs(value - ref),
                "ours_error_bound": bound,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
