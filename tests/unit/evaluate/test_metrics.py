"""Image and pixel metrics against scikit-learn and a slow, obviously-correct AUPRO reference."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score

from evaluate.metrics import (
    PixelMetricState,
    answer_accuracy,
    auroc,
    f1_max,
    substring_accuracy,
    threshold_accuracy,
)


def _sk_f1_max(scores, labels) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=(precision + recall) > 0,
    )
    return float(f1.max())


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_f1_match_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx(_sk_f1_max(scores, labels), abs=1e-12)


@pytest.mark.parametrize("levels", [1, 2, 3, 7])
def test_auroc_and_f1_match_sklearn_on_heavily_tied_data(levels):
    rng = np.random.default_rng(levels)
    labels = rng.integers(0, 2, 1000)
    labels[:2] = [0, 1]
    scores = rng.integers(0, levels, 1000) / 4.0 + 0.25 * labels * (rng.random(1000) < 0.3)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx(_sk_f1_max(scores, labels), abs=1e-12)


def test_all_tied_is_one_half_and_one_class_is_an_error():
    assert auroc([0.3] * 6, [0, 1, 0, 1, 1, 0]) == 0.5
    with pytest.raises(ValueError, match="normal and one anomalous"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        auroc([0.1, 0.2], [0, 2])


def test_threshold_accuracy_is_the_papers_rule():
    # threshold = 0.4 (highest normal); anomalies at 0.9 and 0.4 -> one above, one not
    scores = [0.1, 0.4, 0.9, 0.4]
    labels = [0, 0, 1, 1]
    assert threshold_accuracy(scores, labels) == 0.75
    with pytest.raises(ValueError, match="normal sample"):
        threshold_accuracy([0.5], [1])


def test_answer_accuracies_strict_and_substring():
    labels = [1, 0, 1, 0]
    answers = ["Yes, there is an anomaly.", "No, there is no anomaly.", "Not sure. Yes?", "I see Nothing"]
    verdicts = [True, False, None, None]  # as a strict parser reads them
    assert answer_accuracy(verdicts, labels) == 0.5  # None is wrong, never dropped
    assert substring_accuracy(answers, labels) == 1.0  # "Yes" in answer 3, "No" in "Nothing"
    with pytest.raises(ValueError, match="length"):
        answer_accuracy([True], labels)


# ---- pixel metrics ------------------------------------------------------------------------------


def _random_maps(rng, n_images=6, size=48, quantise=None):
    maps, masks = [], []
    for i in range(n_images):
        mask = np.zeros((size, size), np.uint8)
        if i % 3:  # some images normal
            for _ in range(int(rng.integers(1, 4))):
                c = rng.integers(4, size - 4, 2)
                cv2.circle(mask, (int(c[0]), int(c[1])), int(rng.integers(1, 6)), 255, -1)
        smooth = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (7, 7), 2)
        score = np.clip(0.5 * smooth + 0.4 * (mask > 0) * rng.random(), 0, 1).astype(np.float32)
        if quantise:
            score = np.round(score * quantise) / quantise
        maps.append(score)
        masks.append(mask)
    return maps, masks


def _slow_aupro(maps, masks, max_fpr=0.3):
    """Threshold by threshold, the textbook definition (MVTec AD): mean per-region overlap vs FPR."""
    regions = []
    for m in masks:
        n, lab = cv2.connectedComponents((m > 0).astype(np.uint8), connectivity=8)
        regions += [(len(regions), lab == k) for k in range(1, n)]
    scores = np.concatenate([s.ravel() for s in maps])
    normal = np.concatenate([(m == 0).ravel() for m in masks])
    region_images = []
    for idx, m in enumerate(masks):
        n, lab = cv2.connectedComponents((m > 0).astype(np.uint8), connectivity=8)
        region_images += [(idx, lab == k) for k in range(1, n)]
    xs, ys = [0.0], [0.0]
    for t in np.unique(scores)[::-1]:
        xs.append(float(np.mean(scores[normal] >= t)))
        ys.append(float(np.mean([np.mean(maps[i][r] >= t) for i, r in region_images])))
    xs, ys = np.array(xs), np.array(ys)
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


@pytest.mark.parametrize("quantise", [None, 16])
def test_pixel_state_matches_sklearn_and_slow_aupro(quantise):
    rng = np.random.default_rng(3)
    maps, masks = _random_maps(rng, quantise=quantise)
    state = PixelMetricState()
    for s, m in zip(maps, masks, strict=True):
        state.update(s, m)
    scores = np.concatenate([s.ravel() for s in maps])
    labels = np.concatenate([(m > 0).ravel() for m in masks]).astype(int)
    assert state.auroc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    if quantise is None:  # distinct scores: the bound from the histogram itself is tiny
        assert state.auroc_error_bound() < 1e-5
    assert state.f1_max() == pytest.approx(
        _sk_f1_max(scores, labels), abs=1e-4 if quantise is None else 1e-12
    )
    assert state.aupro() == pytest.approx(_slow_aupro(maps, masks), abs=1e-6)
    assert state.n_images == len(maps)


def test_pixel_state_is_exact_on_tied_levels_and_merges_like_one_state():
    rng = np.random.default_rng(7)
    maps, masks = _random_maps(rng, n_images=9, quantise=8)
    whole = PixelMetricState()
    parts = [PixelMetricState(), PixelMetricState(), PixelMetricState()]
    for i, (s, m) in enumerate(zip(maps, masks, strict=True)):
        whole.update(s, m)
        parts[i % 3].update(s, m)
    merged = PixelMetricState()
    for p in parts:
        merged.merge(pickle.loads(pickle.dumps(p)))  # the sparse form Ray actors send
    labels = np.concatenate([(m > 0).ravel() for m in masks]).astype(int)
    scores = np.concatenate([s.ravel() for s in maps])
    assert whole.auroc() == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    for name in ("auroc", "aupro", "f1_max"):
        assert getattr(merged, name)() == getattr(whole, name)()
    assert merged.n_regions == whole.n_regions > 0


def test_pixel_state_pickles_sparsely_and_rejects_out_of_range():
    state = PixelMetricState()
    state.update(np.full((64, 64), 0.25, np.float32), np.zeros((64, 64), np.uint8))
    assert len(pickle.dumps(state)) < 10_000  # 2**22 bins, one occupied
    assert state.auroc() is None and state.aupro() is None and state.f1_max() is None
    with pytest.raises(ValueError, match=r"outside the metric range \[0.0, 1.0\]"):
        state.update(np.full((4, 4), 1.5, np.float32), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        state.update(np.full((4, 4), np.nan, np.float32), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="same"):
        state.update(np.zeros((4, 4)), np.zeros((4, 5)))


def test_region_weights_sum_exactly_per_region_and_merge_order_does_not_matter():
    rng = np.random.default_rng(11)
    maps, masks = _random_maps(rng, n_images=8)
    forward, backward = PixelMetricState(), PixelMetricState()
    for s, m in zip(maps, masks, strict=True):
        forward.update(s, m)
    for s, m in reversed(list(zip(maps, masks, strict=True))):
        backward.update(s, m)
    assert forward.aupro() == backward.aupro()  # also adds the buffered pixels
    assert forward.region_weight.sum() == forward.n_regions * (1 << 42)
    assert np.array_equal(forward.region_weight, backward.region_weight)


@pytest.mark.parametrize("bins", [1 << 22, 64])  # sparse transport of a small state / dense of a full one
def test_pickled_states_merge_to_the_same_histograms_either_way(bins):
    rng = np.random.default_rng(5)
    maps, masks = _random_maps(rng, n_images=4, quantise=32)
    whole, parts = PixelMetricState(bins), [PixelMetricState(bins), PixelMetricState(bins)]
    for i, (s, m) in enumerate(zip(maps, masks, strict=True)):
        whole.update(s, m)
        parts[i % 2].update(s, m)
    merged = pickle.loads(pickle.dumps(parts[0])).merge(pickle.loads(pickle.dumps(parts[1])))
    assert (merged.auroc(), merged.aupro(), merged.f1_max()) == (whole.auroc(), whole.aupro(), whole.f1_max())
    assert np.array_equal(merged.counts, whole.counts)
    assert np.array_equal(merged.region_weight, whole.region_weight)
