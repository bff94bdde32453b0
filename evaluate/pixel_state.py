"""Pixel-level metrics that workers accumulate separately and the driver merges.

A category's pixel AUROC, AUPRO and pixel F1-max are functions of, per score level, how many normal
and how many anomalous pixels have that score (and, for AUPRO, how much of each ground-truth region
they cover). :class:`PixelMetricState` keeps exactly those sums over ``bins`` equal-width score bins
(default 2**22 over [0, 1]: bin width 2.4e-7, four float32 values wide at the top of the range).
Counting is exact; the only approximation is that a normal and an anomalous pixel with *different*
scores in the *same* bin count as a tie (one half) instead of 0 or 1. :meth:`auroc_error_bound`
states the worst case of that from the counts themselves (typically ~1e-8 for real maps); equal
scores always land in the same bin, so ties are handled exactly as scikit-learn does.

Memory is fixed by ``bins`` (64 MiB of counts at 2**22, plus 32 MiB once ground-truth regions
are seen), never by the number of pixels, and a
state pickles sparsely (only occupied bins), which is what travels from a Ray actor to the driver.
"""

from __future__ import annotations

import numpy as np

from evaluate import curves

DEFAULT_BINS = 1 << 22
_FLUSH_PIXELS = 1 << 22  # buffered pixels before they are added to the histograms
_REGION_SCALE = 1 << 42  # each ground-truth region carries this much integer weight in total
_MAX_REGIONS = 1 << 20  # keeps n_regions * _REGION_SCALE far inside int64


class PixelMetricState:
    """Histogram of normal/anomalous pixel scores (+ region coverage) for one category."""

    def __init__(self, bins: int = DEFAULT_BINS, lo: float = 0.0, hi: float = 1.0) -> None:
        if bins < 2 or not hi > lo:
            raise ValueError(f"need bins >= 2 and hi > lo, got bins={bins}, range=[{lo}, {hi}]")
        self.bins, self.lo, self.hi = int(bins), float(lo), float(hi)
        self.counts: np.ndarray | None = None  # (bins, 2) int64: normal, anomalous pixels
        self.region_weight: np.ndarray | None = None  # (bins,) int64: region coverage, fixed point
        self.n_regions = 0  # ground-truth connected components seen
        self.n_images = 0
        # Not yet in the histograms: binned pixels (bin, label, region weight) and occupied-bin
        # sums received from other states (bins, (n, 2) counts, region weights); a small state
        # never allocates the dense arrays at all.
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._pending_pixels = 0
        self._sparse: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []

    # ---- accumulating -------------------------------------------------------------------------
    def update(self, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        """Add one image: its (H, W) anomaly map and (H, W) binary ground truth (nonzero = defect).

        Ground-truth regions are the 8-connected components of the mask (as the MVTec AD PRO code).
        """
        import cv2

        scores = np.asarray(anomaly_map)
        gt = np.asarray(mask) > 0
        if scores.ndim != 2 or scores.shape != gt.shape:
            raise ValueError(f"map {scores.shape} and mask {gt.shape} must be the same (H, W)")
        n_labels, regions = cv2.connectedComponents(gt.astype(np.uint8), connectivity=8)
        weight = None
        if n_labels > 1:
            weight = _region_weights(regions.ravel(), n_labels)
            self.n_regions += n_labels - 1
            if self.n_regions >= _MAX_REGIONS:
                raise ValueError(f"more than {_MAX_REGIONS} ground-truth regions in one category")
        self._add(scores.ravel(), gt.ravel(), weight)
        self.n_images += 1

    def update_pixels(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add flat pixel scores and 0/1 labels without region information (AUROC and F1 only)."""
        scores, labels = np.asarray(scores).ravel(), np.asarray(labels).ravel()
        if scores.shape != labels.shape:
            raise ValueError(f"scores and labels differ in length: {scores.size} vs {labels.size}")
        for start in range(0, scores.size, _FLUSH_PIXELS):
            stop = start + _FLUSH_PIXELS
            self._add(scores[start:stop], labels[start:stop].astype(bool, copy=False), None)

    def _bin(self, scores: np.ndarray) -> np.ndarray:
        # float32 arithmetic is monotone (equal scores share a bin, order is kept) and, for the
        # default [0, 1] range with a power-of-two bin count, exact.
        scaled = np.asarray(scores, dtype=np.float32) - np.float32(self.lo)
        scaled *= np.float32(self.bins / (self.hi - self.lo))
        bad = ~((scaled >= 0) & (scaled <= self.bins))  # also catches NaN
        if bad.any():
            worst = np.asarray(scores)[bad][0]
            raise ValueError(
                f"{int(bad.sum())} pixel scores outside the metric range [{self.lo}, {self.hi}] "
                f"(e.g. {worst}); set evaluate.score_range to cover the model's anomaly maps"
            )
        idx = scaled.astype(np.int64)
        np.minimum(idx, self.bins - 1, out=idx)  # score == hi goes to the top bin
        return idx

    def _add(self, scores: np.ndarray, labels: np.ndarray, weight: np.ndarray | None) -> None:
        idx = self._bin(scores)
        self._pending.append((idx, labels, weight))
        self._pending_pixels += idx.size
        if self._pending_pixels >= _FLUSH_PIXELS:
            self._flush()

    def _counts(self) -> np.ndarray:
        if self.counts is None:
            self.counts = np.zeros((self.bins, 2), np.int64)
        return self.counts

    def _region_weight(self) -> np.ndarray:
        if self.region_weight is None:  # allocated only once a ground-truth region is seen
            self.region_weight = np.zeros(self.bins, np.int64)
        return self.region_weight

    def _flush(self) -> None:
        if self._pending:
            counts = self._counts()
            idx = np.concatenate([p[0] for p in self._pending])
            idx <<= 1
            idx |= np.concatenate([p[1] for p in self._pending])
            counts += np.bincount(idx, minlength=2 * self.bins).reshape(self.bins, 2)
            del idx
            weighted = [(i[lab], w[lab]) for i, lab, w in self._pending if w is not None]
            if weighted:  # integer adds: the sums do not depend on the order images arrive in
                np.add.at(
                    self._region_weight(),
                    np.concatenate([i for i, _ in weighted]),
                    np.concatenate([w for _, w in weighted]),
                )
            self._pending, self._pending_pixels = [], 0
        for occupied, counts, weight in self._sparse:  # occupied bins are unique: plain fancy adds
            self._counts()[occupied] += counts
            if weight is not None:
                self._region_weight()[occupied] += weight
        self._sparse = []

    def merge(self, other: PixelMetricState) -> PixelMetricState:
        """Add ``other``'s pixels into this state (same bins and range); returns self.
        ``other`` is consumed: do not update it afterwards."""
        if (other.bins, other.lo, other.hi) != (self.bins, self.lo, self.hi):
            raise ValueError("cannot merge pixel states with different bins or score ranges")
        self._pending += other._pending
        self._pending_pixels += other._pending_pixels
        self._sparse += other._sparse
        if other.counts is not None:
            self._counts()[:] += other.counts
        if other.region_weight is not None:
            self._region_weight()[:] += other.region_weight
        self.n_regions += other.n_regions
        self.n_images += other.n_images
        if self._pending_pixels >= _FLUSH_PIXELS:
            self._flush()
        return self

    # ---- transport: only occupied bins travel -------------------------------------------------
    def _occupied(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """(occupied bins, their (n, 2) counts, their region weights or None); None when empty.
        A small state is reduced with np.unique, never touching the dense arrays."""
        entries = self._pending_pixels + sum(len(o) for o, _, _ in self._sparse)
        if self.counts is not None or entries > self.bins // 8:
            self._flush()
            if self.counts is None:
                return None
            rw = self.region_weight
            occupied = np.flatnonzero(self.counts.any(axis=1) | (rw != 0 if rw is not None else False))
            return occupied, self.counts[occupied], rw[occupied] if rw is not None else None
        if not entries:
            return None
        bins = [p[0] for p in self._pending] + [o.astype(np.int64) for o, _, _ in self._sparse]
        pos = [p[1].astype(np.int64) for p in self._pending] + [c[:, 1] for _, c, _ in self._sparse]
        neg = [1 - p[1].astype(np.int64) for p in self._pending] + [c[:, 0] for _, c, _ in self._sparse]
        weight = [p[2] if p[2] is not None else np.zeros(p[0].size, np.int64) for p in self._pending]
        weight += [w if w is not None else np.zeros(o.size, np.int64) for o, _, w in self._sparse]
        occupied, inverse = np.unique(np.concatenate(bins), return_inverse=True)
        counts = np.zeros((occupied.size, 2), np.int64)
        np.add.at(counts[:, 0], inverse, np.concatenate(neg))
        np.add.at(counts[:, 1], inverse, np.concatenate(pos))
        weights = np.concatenate(weight)
        has_regions = bool(weights.any())
        region = np.zeros(occupied.size, np.int64)
        if has_regions:
            np.add.at(region, inverse, weights)
        return occupied, counts, region if has_regions else None

    def __getstate__(self) -> dict:
        state = {k: getattr(self, k) for k in ("bins", "lo", "hi", "n_regions", "n_images")}
        occupied = self._occupied()
        if occupied is not None:
            state["occupied"] = occupied[0].astype(np.uint32)
            state["counts"], state["region_weight"] = occupied[1], occupied[2]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["bins"], state["lo"], state["hi"])
        self.n_regions, self.n_images = state["n_regions"], state["n_images"]
        if "occupied" in state:
            occupied = state["occupied"].astype(np.int64)
            self._sparse = [(occupied, state["counts"], state["region_weight"])]

    # ---- results ------------------------------------------------------------------------------
    def pixel_counts(self) -> tuple[int, int]:
        """(normal pixels, anomalous pixels) seen so far."""
        self._flush()
        if self.counts is None:
            return 0, 0
        neg, pos = self.counts.sum(axis=0)
        return int(neg), int(pos)

    def auroc(self) -> float | None:
        """Pixel AUROC; None when there are no anomalous (or no normal) pixels."""
        neg, pos = self.pixel_counts()
        if not (neg and pos):
            return None
        return curves.auroc_from_counts(self.counts[:, 1], self.counts[:, 0])

    def auroc_error_bound(self) -> float:
        """Largest possible |binned - exact| AUROC: half the share of normal/anomalous pixel pairs
        that share a bin (their true order is unknown to the histogram). Conservative: pairs with
        exactly equal scores also share a bin and count here, although they are exact ties."""
        neg, pos = self.pixel_counts()
        if not (neg and pos):
            return 0.0
        c = self.counts.astype(np.float64)
        return float(0.5 * np.dot(c[:, 0], c[:, 1]) / (float(neg) * float(pos)))

    def f1_max(self) -> float | None:
        """Best pixel F1 over all thresholds; None without anomalous pixels."""
        _, pos = self.pixel_counts()
        if not pos:
            return None
        return curves.f1_max_from_counts(self.counts[:, 1], self.counts[:, 0])

    def aupro(self, max_fpr: float = 0.3) -> float | None:
        """Area under the per-region-overlap curve for FPR in [0, max_fpr], divided by max_fpr.

        PRO at a threshold is the mean, over ground-truth regions, of the share of the region's
        pixels at or above it; FPR is the share of normal pixels at or above it. None without
        regions or normal pixels.
        """
        neg, _ = self.pixel_counts()
        if not (neg and self.n_regions):
            return None
        fpr = np.r_[0.0, np.cumsum(self.counts[::-1, 0]) / neg]
        pro = np.r_[0.0, np.cumsum(self._region_weight()[::-1]) / (self.n_regions * _REGION_SCALE)]
        return curves.partial_area(fpr, pro, max_fpr) / max_fpr


def _region_weights(regions: np.ndarray, n_labels: int) -> np.ndarray:
    """Per pixel, its share of its region as an integer: the pixels of a region of size s get
    2**42 // s, the first (2**42 mod s) of them one more, so every region sums to exactly 2**42.
    Integer weights make AUPRO independent of summation order (1 worker or N give the same bits)."""
    counts = np.bincount(regions, minlength=n_labels).astype(np.int64)
    sizes = np.maximum(counts, 1)
    base = _REGION_SCALE // sizes
    extra = _REGION_SCALE - base * sizes
    base[0] = extra[0] = 0  # background pixels carry no region weight
    order = np.argsort(regions, kind="stable")
    rank = np.empty(regions.size, np.int64)
    rank[order] = np.arange(regions.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return base[regions] + (rank < extra[regions])
