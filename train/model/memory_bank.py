"""Memory bank of normal patches: nearest-neighbour anomaly maps, calibrated against normal images.

The bank holds every patch of the k normal references (with 90/180/270-degree rotations when k is
small), reduced by greedy coreset subsampling (PatchCore) when a layer exceeds its patch budget. Its
maps are smoothed with a Gaussian (PatchCore), which removes single-patch noise that would otherwise
set an image's score. A calibration learnt from the references themselves (leave-one-image-out)
tells where "normal" ends, on each layer (which weighs the layers) and on their weighted sum, so a
bank map and the decoder map can be put on one scale and fused. The smoothing and the weights are
refinements of the plain nearest-neighbour map (the layers' mean, unsmoothed), and the map guard
keeps them, and the decoder, only where they do not rank held-out references against synthetic
anomalies below what the plain map ranks (:class:`MapGuard`).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from train.model.config import Fusion

log = logging.getLogger(__name__)

ROTATIONS = 4  # 0/90/180/270 degrees
PROJECTION_DIM = 128  # coreset distances on a random projection, as PatchCore
QUERY_CHUNK = 256  # query rows per similarity block
BANK_CHUNK = 4096  # bank rows per similarity block


def with_rotations(images: torch.Tensor) -> torch.Tensor:
    """The images and their 90/180/270-degree rotations, rotation-major: [all k at 0°, all at 90°, ...]."""
    return torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)])


MIN_IMAGES_FOR_FIT = 3
"""Fewer normal maps than this give no usable spread: their highest peak is the top of normal."""


@dataclass(frozen=True)
class Calibration:
    """Where normal ends on one kind of map, measured on normal images: ``level`` is their mean pixel
    score, ``top`` the peak score above which a normal image is rare. ``normalise`` maps level to 0
    and top to 1. A bank's distance calibration also weighs its layers (``layer_weights``)."""

    level: float
    top: float
    layer_weights: tuple[float, ...] | None = None
    """Per bank layer, the weight of its distances in the bank's map (summing to 1); None: equal."""

    @classmethod
    def from_maps(cls, maps: torch.Tensor, false_alarm_rate: float = 0.0) -> Calibration:
        """From normal maps (N, 1, H, W). With ``false_alarm_rate`` > 0 and at least three maps, the
        top is the (1 - rate) quantile of a normal law fitted to the maps' peaks; otherwise the
        highest peak. The fit does not grow with N as the highest of N peaks does, and one odd
        reference (a defect in the "good" folder) moves it far less."""
        maps = maps.float()
        level = float(maps.mean())
        peaks = maps.flatten(1).amax(dim=1)
        if false_alarm_rate > 0 and peaks.numel() >= MIN_IMAGES_FOR_FIT:
            z = NormalDist().inv_cdf(1.0 - false_alarm_rate)
            top = float(peaks.mean() + z * peaks.std())
        else:
            top = float(peaks.max())
        return cls(level, max(top, level + 1e-6))

    @classmethod
    def from_layer_maps(cls, layer_maps: torch.Tensor, false_alarm_rate: float = 0.0) -> Calibration:
        """From a bank's per-layer distance maps of normal images (N, L, H, W). Each layer is weighed
        by the inverse of its own normal spread (top - level), so that every layer speaks in units
        of where normal ends on it: unweighted, the layer with the widest distances (the deepest)
        sets the map's peaks and its normal noise hides what the finer layers see."""
        layers = range(layer_maps.shape[1])
        spreads = [cls.from_maps(layer_maps[:, i : i + 1], false_alarm_rate) for i in layers]
        inverse = [1.0 / (c.top - c.level) for c in spreads]
        weights = tuple(w / sum(inverse) for w in inverse)
        combined = cls.from_maps(combine_layers(layer_maps, weights), false_alarm_rate)
        return cls(combined.level, combined.top, weights)

    def normalise(self, maps: torch.Tensor) -> torch.Tensor:
        # in place on the one new tensor: a large category's calibration normalises hundreds of maps
        return (maps - self.level).div_(self.top - self.level).clamp_min_(0.0)


def combine_layers(layer_maps: torch.Tensor, weights: tuple[float, ...] | None) -> torch.Tensor:
    """(B, L, H, W) per-layer maps -> (B, 1, H, W): their weighted sum (None: their mean)."""
    if weights is None:
        return layer_maps.mean(dim=1, keepdim=True)
    if len(weights) != layer_maps.shape[1]:
        raise ValueError(f"{len(weights)} layer weights for a bank of {layer_maps.shape[1]} layers")
    w = torch.tensor(weights, dtype=layer_maps.dtype, device=layer_maps.device).view(1, -1, 1, 1)
    # Layer by layer, in the order a sum over dim 1 adds them (the same bits): the product of all
    # layers at once would be a second copy of the maps, the largest tensor of a bank's build.
    combined = layer_maps[:, :1] * w[:, :1]
    for i in range(1, layer_maps.shape[1]):
        combined += layer_maps[:, i : i + 1] * w[:, i : i + 1]
    return combined


UNCALIBRATED = Calibration(0.0, 1.0)
"""A bank whose references cannot be held out from each other (one image, no rotations)."""


def squash(normalised: torch.Tensor) -> torch.Tensor:
    """[0, inf) -> [0, 1): the top of normal (1) lands on 0.5, the decoder's own decision point."""
    return normalised / (1.0 + normalised)


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) maps, each channel blurred by a separable Gaussian of ``sigma`` pixels
    (reflected borders)."""
    if sigma <= 0:
        return maps
    b, c, h, w = maps.shape
    maps = maps.reshape(b * c, 1, h, w)
    radius = min(int(4 * sigma + 0.5), min(maps.shape[-2:]) - 1)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    rows = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    smoothed = F.conv2d(F.pad(rows, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return smoothed.reshape(b, c, h, w)


EXACT_CORESET_COST = 100_000_000
"""Rows x budget up to which the coreset is exact greedy k-centre (about 10 s on 2 cores); above
it, greedy k-centre within cells (benchmarks/coreset_scale.py)."""
CELL_ROWS = 4096
"""Most rows of one cell of the cell coreset, unless the budget is so small that each cell would
hold fewer than about ``CELL_SHARE`` picks."""
CELL_SHARE = 32
"""A cell has at least ``CELL_SHARE`` x rows / budget rows, so it holds some 16-32 picks: with
fewer, a cluster cut by a cell border needs a pick on each side and the coverage suffers."""
PROGRESS_EVERY_S = 10.0


def greedy_coreset(
    features: torch.Tensor,
    budget: int,
    seed: int = 0,
    exact_cost: int = EXACT_CORESET_COST,
    cell_rows: int = CELL_ROWS,
    label: str = "memory bank",
) -> torch.Tensor:
    """Indices of ``budget`` rows chosen by greedy k-centre (PatchCore's coreset): each pick is the
    row farthest from everything picked so far, so the subset covers the whole feature space.

    Exact greedy costs rows x budget distance rows, which at an MVTec category's all-shot bank
    (hundreds of images x thousands of patches, tens of thousands kept) runs for hours. Above
    ``exact_cost`` the rows are first split into cells of neighbouring rows (a k-d tree: halves at
    the median of the widest coordinate, down to ``cell_rows``), and greedy k-centre runs within
    the cells: each pick is the row farthest from the picks of its own cell, in the cell where that
    distance is largest. A pick then updates one cell, not every row, so the cost is budget x
    cell rows, flat in the rows (tests/unit/model/test_memory_bank.py bounds its covering radius
    against the exact one's)."""
    n = features.shape[0]
    if budget >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    dim = min(PROJECTION_DIM, features.shape[1])
    projection = torch.randn(features.shape[1], dim, generator=generator) / dim**0.5
    points = features.float().cpu() @ projection
    progress = _Progress(label, n, budget)
    if n * budget <= exact_cost:
        return _greedy(points, budget, progress).sort().values
    cells = _kd_cells(points, max(cell_rows, -(-CELL_SHARE * n // budget)))
    order = torch.cat(cells)
    points = points[order]  # cell after cell; the unordered copy is freed
    return order[_greedy_in_cells(points, [len(c) for c in cells], budget, progress)].sort().values


def _greedy(points: torch.Tensor, budget: int, progress: _Progress) -> torch.Tensor:
    """Greedy k-centre of ``points``' rows, starting from row 0: ``budget`` row indices."""
    chosen = torch.empty(budget, dtype=torch.long)
    chosen[0] = 0
    nearest = torch.linalg.vector_norm(points - points[0], dim=1)
    for i in range(1, budget):
        pick = int(nearest.argmax())
        chosen[i] = pick
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(points - points[pick], dim=1))
        progress.step()
    progress.step()
    return chosen


def _kd_cells(points: torch.Tensor, most_rows: int) -> list[torch.Tensor]:
    """Row indices of ``points`` in cells of at most ``most_rows`` neighbouring rows: the leaves of
    a k-d tree that halves each cell at the median of its widest coordinate (more than
    ``most_rows`` / 2 rows each, so there are fewer than 2 x rows / ``most_rows`` cells)."""
    cells, pending = [], [torch.arange(points.shape[0])]
    while pending:
        rows = pending.pop()
        if rows.numel() <= most_rows:
            cells.append(rows)
            continue
        values = points if rows.numel() == points.shape[0] else points[rows]  # the root: no copy
        along = values[:, int(values.var(dim=0).argmax())].argsort(stable=True)
        half = rows.numel() // 2
        pending += [rows[along[half:]], rows[along[:half]]]
    return cells


def _greedy_in_cells(
    points: torch.Tensor, sizes: list[int], budget: int, progress: _Progress
) -> torch.Tensor:
    """Greedy k-centre of ``points``' rows, stored cell after cell (``sizes`` rows each), with
    distances only within a cell: each cell starts from its first row; each further pick is the
    row farthest from its cell's picks, in the cell where that is farthest. ``budget`` indices."""
    starts = [0, *itertools.accumulate(sizes)]
    cells = points.split(sizes)
    nearest = [torch.linalg.vector_norm(cell - cell[0], dim=1) for cell in cells]
    farthest = torch.stack([d.max() for d in nearest])
    chosen = starts[:-1]
    progress.done += len(cells)
    for _ in range(budget - len(cells)):
        k = int(farthest.argmax())
        pick = int(nearest[k].argmax())
        chosen.append(starts[k] + pick)
        nearest[k] = torch.minimum(nearest[k], torch.linalg.vector_norm(cells[k] - cells[k][pick], dim=1))
        farthest[k] = nearest[k].max()
        progress.step()
    return torch.tensor(chosen)


class _Progress:
    """A log line every ``PROGRESS_EVERY_S`` of a long coreset: picks made, budget, time left."""

    def __init__(self, label: str, rows: int, budget: int) -> None:
        self.label, self.rows, self.budget = label, rows, budget
        self.done = 0
        self.started = self.last = time.monotonic()

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            left = (now - self.started) / self.done * (self.budget - self.done)
            log.info(
                "%s: coreset of %d patches to %d: %d picked (%.0f%%), about %.0f s left",
                *(self.label, self.rows, self.budget, self.done, 100 * self.done / self.budget, left),
            )


def pairwise_auroc(normal_scores: torch.Tensor, anomaly_scores: torch.Tensor) -> float:
    """Image-AUROC from its definition: the share of (anomaly, normal) pairs the anomaly outranks,
    ties counting half."""
    diff = anomaly_scores.double().view(-1, 1) - normal_scores.double().view(1, -1)
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def auroc_standard_error(auroc: float, normals: int, anomalies: int) -> float:
    """Standard error of an AUROC measured on ``normals`` x ``anomalies`` images (Hanley and McNeil,
    1982): how far it moves by chance at that sample size."""
    a = min(max(auroc, 1e-6), 1.0 - 1e-6)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    variance = a * (1 - a) + (anomalies - 1) * (q1 - a * a) + (normals - 1) * (q2 - a * a)
    return math.sqrt(max(variance, 0.0) / (normals * anomalies))


@dataclass(frozen=True)
class MapGuard:
    """What the map guard measured on one bank, as Image-AUROC on its references held out against
    synthetic anomalies: the plain map (the layers' mean, unsmoothed), the refined one (smoothed,
    layers weighed; None where the configuration refines nothing), the bank's map as kept
    (``bank_auroc``) and that map fused with the decoder's (None without a decoder)."""

    plain_auroc: float
    refined_auroc: float | None
    fused_auroc: float | None
    normals: int
    anomalies: int

    @property
    def refinements_dropped(self) -> bool:
        """Smoothing and layer weights go where they rank the probes below the plain map: on the
        suite's validation data the plain map ranks best on average (docs/model.md), so the
        refinements have to show that they do not hurt this category."""
        return self.refined_auroc is not None and self.refined_auroc < self.plain_auroc

    @property
    def bank_auroc(self) -> float:
        """The Image-AUROC of the bank's map as kept (refined or plain)."""
        if self.refined_auroc is None or self.refinements_dropped:
            return self.plain_auroc
        return self.refined_auroc

    @property
    def tolerance(self) -> float:
        """One standard error of the bank's AUROC: a smaller drop on a few dozen images is chance."""
        return auroc_standard_error(self.bank_auroc, self.normals, self.anomalies)

    @property
    def decoder_kept(self) -> bool:
        """The decoder stays unless it lowers the bank's ranking by more than chance would."""
        return self.fused_auroc is not None and self.fused_auroc >= self.bank_auroc - self.tolerance

    def to_dict(self) -> dict[str, float | int | bool | None]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "plain_auroc": rounded(self.plain_auroc),
            "refined_auroc": rounded(self.refined_auroc),
            "refinements_dropped": self.refinements_dropped,
            "bank_auroc": rounded(self.bank_auroc),
            "fused_auroc": rounded(self.fused_auroc),
            "tolerance": round(self.tolerance, 4),
            "normals": self.normals,
            "anomalies": self.anomalies,
            "decoder_kept": self.decoder_kept,
        }


@dataclass
class MemoryBank:
    """Per encoder layer, normal patches as unit vectors (N_l, C_l) and, per patch, which reference
    image it came from (``image_ids``; ``rotation_ids`` its rotation) so that a reference can be
    held out when the bank scores the references themselves."""

    features: list[torch.Tensor]
    image_ids: list[torch.Tensor]
    rotation_ids: list[torch.Tensor]
    category: str | None = None
    shots: int = 0
    smoothing: float = 0.0
    """Sigma in pixels of the Gaussian that smooths every distance map (0: none)."""
    nn_calibration: Calibration = UNCALIBRATED
    decoder_calibration: Calibration | None = None
    fused_calibration: Calibration | None = None
    """Of the bank map fused with the decoder's (None: the fused map stays as it is)."""
    fusion: Fusion = "calibrated"
    """How its map joins the decoder's (``MemoryBankConfig.fusion_for`` its category)."""
    guard: MapGuard | None = None
    """What the map guard measured (None: not guarded). Where it dropped the refinements,
    ``smoothing`` is 0 and the layers are equal; where it dropped the decoder,
    ``decoder_calibration`` is None and the map is the bank's alone."""

    @classmethod
    def from_patch_maps(
        cls,
        patch_maps: list[torch.Tensor],
        shots: int,
        rotations: int = 1,
        category: str | None = None,
        smoothing: float = 0.0,
    ) -> MemoryBank:
        """``patch_maps`` (shots * rotations, C, h, w) per layer, rotation-major as ``with_rotations``."""
        feats, images, rots = [], [], []
        for m in patch_maps:
            n, c, h, w = m.shape
            if n != shots * rotations:
                raise ValueError(f"memory bank: {n} feature maps for {shots} shots x {rotations} rotations")
            feats.append(F.normalize(m.detach().flatten(2).transpose(1, 2).reshape(-1, c), dim=-1))
            per_map = torch.arange(n).repeat_interleave(h * w)
            images.append(per_map % shots)
            rots.append(per_map // shots)
        return cls(feats, images, rots, category, shots, smoothing)

    @property
    def n_patches(self) -> list[int]:
        return [f.shape[0] for f in self.features]

    @property
    def nbytes(self) -> int:
        tensors = [*self.features, *self.image_ids, *self.rotation_ids]
        return sum(t.numel() * t.element_size() for t in tensors)

    def subsample(self, max_patches: int, seed: int = 0) -> MemoryBank:
        """At most ``max_patches`` per layer, by greedy coreset (layers under the budget stay whole)."""
        name = f"memory bank {self.category or ''}".rstrip()
        keep = [
            greedy_coreset(f, max_patches, seed, label=f"{name}, layer {i + 1}/{len(self.features)}")
            for i, f in enumerate(self.features)
        ]
        return replace(  # the rest (category, shots, smoothing, calibrations) carries over
            self,
            features=[f[k.to(f.device)] for f, k in zip(self.features, keep, strict=True)],
            image_ids=[i[k] for i, k in zip(self.image_ids, keep, strict=True)],
            rotation_ids=[r[k] for r, k in zip(self.rotation_ids, keep, strict=True)],
        )

    def layer_distance_maps(
        self,
        patch_maps: list[torch.Tensor],
        size: tuple[int, int],
        hold_out: list[int] | None = None,
        smoothed: bool = True,
    ) -> torch.Tensor:
        """Per layer, 1 - max cosine similarity to the bank, upsampled and (unless not ``smoothed``)
        smoothed: (B, L, H, W).

        ``hold_out[b]`` = index of a reference image that query ``b`` is: with several shots its
        patches (all rotations) are left out; with one shot only its unrotated copy is."""
        if len(patch_maps) != len(self.features):
            raise ValueError(f"memory bank has {len(self.features)} layers, query has {len(patch_maps)}")
        sims = []
        for layer, fmap in enumerate(patch_maps):
            b, _, h, w = fmap.shape
            bank = self.features[layer].to(fmap.device, fmap.dtype)
            queries = F.normalize(fmap.flatten(2).transpose(1, 2), dim=-1)  # (B, hw, C)
            best = []
            for i in range(b):
                allowed = None if hold_out is None else self._allowed(layer, hold_out[i]).to(fmap.device)
                best.append(_best_similarity(queries[i], bank, allowed))
            sim = torch.stack(best).reshape(b, 1, h, w)
            sims.append(F.interpolate(sim, size=size, mode="bilinear", align_corners=True))
        distances = 1.0 - torch.cat(sims, dim=1)
        return gaussian_smooth(distances, self.smoothing) if smoothed else distances

    def distance_map(
        self, patch_maps: list[torch.Tensor], size: tuple[int, int], hold_out: list[int] | None = None
    ) -> torch.Tensor:
        """The bank's distances (B, 1, H, W): its layers' maps weighed as ``nn_calibration`` says."""
        layer_maps = self.layer_distance_maps(patch_maps, size, hold_out)
        return combine_layers(layer_maps, self.nn_calibration.layer_weights)

    def plain_map(self, patch_maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1]: the layers' distances averaged, halved (cosine distance lies in
        [0, 2]); no weights, no calibration. The map of a bank used as the plain baseline."""
        return self.layer_distance_maps(patch_maps, size).mean(dim=1, keepdim=True).div(2.0).clamp(0.0, 1.0)

    def _allowed(self, layer: int, image: int) -> torch.Tensor:
        same = self.image_ids[layer] == image
        if self.shots == 1:
            same = same & (self.rotation_ids[layer] == 0)
        if bool(same.all()):
            raise ValueError("memory bank: holding out the only reference leaves nothing to compare with")
        return ~same

    def can_hold_out(self) -> bool:
        """Whether the references can be scored against the rest (needs 2 shots or rotations)."""
        return self.shots > 1 or any(bool((r > 0).any()) for r in self.rotation_ids)


def _best_similarity(query: torch.Tensor, bank: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Max cosine similarity of each query row to the (allowed) bank rows. Queries and bank both go
    in chunks: each product block stays a few MB, which on a CPU runs about five times faster than
    one block of all the bank's rows (allocating and scanning hundreds of MB per block)."""
    if allowed is not None:
        bank = bank[allowed]
    best = []
    for rows in query.split(QUERY_CHUNK):
        top = None
        for part in bank.split(BANK_CHUNK):
            sims = (rows @ part.T).amax(dim=1)
            top = sims if top is None else torch.maximum(top, sims)
        best.append(top)
    return torch.cat(best)
