"""NSA-style anomaly synthesis: cut a patch from another normal image, rescale, Poisson-blend it in.

Follows the method AnomalyGPT uses (Schlüter et al., "Natural Synthetic Anomalies", as described
in docs and reference notes): a Gamma-distributed patch half-width within per-category bounds, a rescale
factor clip(N(1, 0.5)), foreground-aware placement for object categories, ``cv2.seamlessClone``,
and a mask from the pixels the blend actually changed. Pure numpy/cv2; randomness only from ``rng``.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from synth.config import SynthConfig

MIN_SIDE = 8  # smallest patch side: seamlessClone fails on masks 2 px wide
MIN_MASK_PIXELS_224 = 50  # the reference aborts an attempt whose blend mask is smaller (at 224 px)
CHANGE_TOLERANCE = 1.0  # mean |RGB change| above this counts as changed (the reference's tol)
MIN_OBJECT_OVERLAP = 0.25  # object categories: share of the pasted patch that must land on the object
# Patch half-width law of the reference, a fraction of the side: OFFSET + Gamma(SHAPE, SCALE).
GAMMA_OFFSET, GAMMA_SHAPE, GAMMA_SCALE = 0.03, 2.0, 0.05


# (patch, patch foreground or None, rng) -> both transformed alike (a rot90 may swap height and width).
Augment = Callable[[np.ndarray, np.ndarray | None, np.random.Generator], tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class CategorySpec:
    """Synthesis bounds of one category (synth/data/categories.yaml)."""

    width: tuple[tuple[float, float], tuple[float, float]]
    resize: tuple[float, float]
    background: tuple[float, float] | None
    logistic: tuple[float, float]
    kind: str = "texture"


@dataclass
class Synthesis:
    image: np.ndarray
    """uint8 HxWx3."""
    mask: np.ndarray
    """uint8 HxW in {0, 255}."""
    regions: list[np.ndarray]
    """One boolean HxW mask per pasted patch (for position words)."""


@functools.cache
def load_category_specs(path: str | None = None) -> tuple[CategorySpec, dict[str, CategorySpec]]:
    """(default, per-category) specs from ``path`` or the packaged synth/data/categories.yaml."""
    if path is None:
        text = importlib.resources.files("synth.data").joinpath("categories.yaml").read_text()
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"synth bounds file not found: {path}")
        text = Path(path).read_text()
    data = yaml.safe_load(text)
    source = path or "synth/data/categories.yaml"
    default = _spec(data.get("default"), f"{source}: default")
    cats = {
        name: _spec(v, f"{source}: categories.{name}") for name, v in (data.get("categories") or {}).items()
    }
    return default, cats


def category_spec(category: str, bounds_file: str | None = None) -> CategorySpec:
    default, cats = load_category_specs(bounds_file)
    return cats.get(category, default)


def foreground(image: np.ndarray, background: tuple[float, float] | None) -> np.ndarray | None:
    """Object pixels: mean |pixel - brightness| over RGB above threshold; None for textures."""
    if background is None:
        return None
    brightness, threshold = background
    return np.abs(image.astype(np.float32) - brightness).mean(axis=2) > threshold


def synthesize(
    target: np.ndarray,
    source: np.ndarray,
    spec: CategorySpec,
    cfg: SynthConfig,
    rng: np.random.Generator,
    augment: Augment | None = None,
) -> Synthesis | None:
    """One anomalous image from ``target`` with patches of ``source`` (same size); None if it failed."""
    n = 1
    while n < cfg.max_patches and rng.random() < cfg.extra_patch_prob:
        n += 1
    image = target.copy()
    target_fg = foreground(target, spec.background)
    source_fg = foreground(source, spec.background)
    regions: list[np.ndarray] = []
    for _ in range(n):
        result = _paste_one(image, source, target_fg, source_fg, spec, cfg, rng, augment)
        if result is None:
            if not regions:
                return None
            break  # like the reference: a failed later patch leaves the earlier ones
        image, region = result
        regions.append(region)
    mask = np.zeros(target.shape[:2], bool)
    for region in regions:
        mask |= region
    if not mask.any():
        return None
    return Synthesis(image, np.where(mask, 255, 0).astype(np.uint8), regions)


def draw_half_widths(spec: CategorySpec, rng: np.random.Generator) -> tuple[float, float]:
    """Patch half-width per axis (height, width) as a fraction of the side, as the reference draws it.

    0.03 + Gamma(shape 2, scale 0.05), clipped to the category's width bounds; the box is then the
    centre +- this, so a patch spans twice the draw (median about 0.23 of the side, mean about 0.26).
    """
    (h_lo, h_hi), (w_lo, w_hi) = spec.width
    fh = float(np.clip(GAMMA_OFFSET + rng.gamma(GAMMA_SHAPE, GAMMA_SCALE), h_lo, h_hi))
    fw = float(np.clip(GAMMA_OFFSET + rng.gamma(GAMMA_SHAPE, GAMMA_SCALE), w_lo, w_hi))
    return fh, fw


def source_box(
    shape: tuple[int, int], half: tuple[float, float], spec: CategorySpec, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a source patch: a centre uniform in [min_w, side - min_w] per axis, +- the
    half-widths ``half`` (fractions of the side), clipped to the image, at least MIN_SIDE across."""
    edges = []
    for side, frac, (lo, _hi) in zip(shape, half, spec.width, strict=True):
        half_px = max(round(frac * side), MIN_SIDE // 2)
        margin = max(round(lo * side), MIN_SIDE // 2)
        centre = int(rng.integers(margin, side - margin))
        edges += [max(centre - half_px, 0), min(centre + half_px, side)]
    return edges[0], edges[1], edges[2], edges[3]


def rescaled_side(side_px: int, factor: float, bounds: tuple[float, float], full: int) -> int:
    """A box side after the rescale: its half-width times ``factor``, clipped back to the width
    bounds (fractions of ``full``), then the whole side to the image (a margin of 1 px each side)."""
    lo, hi = bounds
    half = float(np.clip(side_px * factor / 2, lo * full, hi * full))
    return int(np.clip(round(2 * half), MIN_SIDE, full - 2))


def _paste_one(
    image: np.ndarray,
    source: np.ndarray,
    target_fg: np.ndarray | None,
    source_fg: np.ndarray | None,
    spec: CategorySpec,
    cfg: SynthConfig,
    rng: np.random.Generator,
    augment: Augment | None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Paste one patch into ``image``: (blended image, changed-pixel region) or None if the attempt failed."""
    h, w = image.shape[:2]
    half = draw_half_widths(spec, rng)
    min_pixels = max(4, round(MIN_MASK_PIXELS_224 * h * w / 224**2))

    # Source patch: on the object for object categories.
    for _ in range(cfg.placement_attempts):
        y0, y1, x0, x1 = source_box((h, w), half, spec, rng)
        if source_fg is None or np.count_nonzero(source_fg[y0:y1, x0:x1]) >= min_pixels:
            break
    else:
        return None
    patch = source[y0:y1, x0:x1]
    patch_fg = None if source_fg is None else source_fg[y0:y1, x0:x1]

    # Rescale, keeping the aspect ratio and the per-category width bounds.
    factor = float(np.clip(rng.normal(1.0, 0.5), *spec.resize))
    nh = rescaled_side(y1 - y0, factor, spec.width[0], h)
    nw = rescaled_side(x1 - x0, factor, spec.width[1], w)
    if (nh, nw) != patch.shape[:2]:
        patch = cv2.resize(patch, (nw, nh), interpolation=cv2.INTER_LINEAR)
        if patch_fg is not None:
            patch_fg = cv2.resize(patch_fg.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) > 0
    if augment is not None:
        patch, patch_fg = augment(patch, patch_fg, rng)
        patch = np.ascontiguousarray(patch)
    nh, nw = patch.shape[:2]  # a rot90 swaps them

    clone_mask = np.zeros((nh, nw), np.uint8)
    clone_mask[1:-1, 1:-1] = 255  # border zeroed, as Poisson blending needs a boundary
    if patch_fg is not None:
        clone_mask[~patch_fg] = 0
    x, y, bw, bh = cv2.boundingRect(clone_mask)
    if int(np.count_nonzero(clone_mask)) < min_pixels or min(bw, bh) < 3:
        return None  # seamlessClone fails on masks 1-2 px across

    # Destination: anywhere the patch fits; object categories need it mostly on the object.
    for _ in range(cfg.placement_attempts):
        dy, dx = int(rng.integers(1, h - nh)), int(rng.integers(1, w - nw))
        if target_fg is None:
            break
        inside = clone_mask > 0
        if target_fg[dy : dy + nh, dx : dx + nw][inside].mean() > MIN_OBJECT_OVERLAP:
            break
    else:
        return None

    centre = (dx + x + bw // 2, dy + y + bh // 2)
    flag = cv2.NORMAL_CLONE if cfg.clone == "normal" else cv2.MIXED_CLONE
    blended = cv2.seamlessClone(patch, image, clone_mask, centre, flag)
    region = _changed_region(image, blended, (dy, dx, nh, nw), spec, cfg)
    if not region.any():
        return None
    return blended, region


def _changed_region(
    before: np.ndarray,
    after: np.ndarray,
    box: tuple[int, int, int, int],
    spec: CategorySpec,
    cfg: SynthConfig,
) -> np.ndarray:
    """Pixels inside the pasted box whose mean |RGB change| exceeds the tolerance (median-filtered)."""
    dy, dx, nh, nw = box
    region = np.zeros(before.shape[:2], bool)
    a = before[dy : dy + nh, dx : dx + nw].astype(np.int16)
    b = after[dy : dy + nh, dx : dx + nw].astype(np.int16)
    diff = np.abs(a - b).mean(axis=2)
    changed = cv2.medianBlur(np.where(diff > CHANGE_TOLERANCE, 255, 0).astype(np.uint8), 5) > 0
    if cfg.label_mode == "logistic":
        k, x0 = spec.logistic
        intensity = cv2.medianBlur(np.clip(diff, 0, 255).astype(np.uint8), 5).astype(np.float32)
        soft = changed / (1.0 + np.exp(-k * (intensity - x0)))
        changed = soft > cfg.soft_threshold
    region[dy : dy + nh, dx : dx + nw] = changed
    return region


def _spec(data: object, where: str) -> CategorySpec:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must be a mapping")
    allowed = {"kind", "width", "resize", "background", "logistic"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    try:
        (a, b), (c, d) = data["width"]
        width = ((float(a), float(b)), (float(c), float(d)))
        resize = (float(data["resize"][0]), float(data["resize"][1]))
        bg = data.get("background")
        background = None if bg is None else (float(bg[0]), float(bg[1]))
        logistic = (float(data["logistic"][0]), float(data["logistic"][1]))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"{where}: needs width [[lo, hi], [lo, hi]], resize, logistic: {exc}") from exc
    if not all(0 < lo <= hi < 1 for lo, hi in width):
        raise ValueError(f"{where}: width bounds must satisfy 0 < lo <= hi < 1, got {width}")
    return CategorySpec(width, resize, background, logistic, str(data.get("kind", "texture")))
