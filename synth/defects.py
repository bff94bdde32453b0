"""Test-set defects for the sample dataset: scratches, holes, stains and foreign-texture patches.

Deliberately NOT the training synthesis (no cut-paste from same-category normals, no Poisson
blending), so that evaluating a model trained on synth/ output on these defects is not circular.
Each generator returns the defective image and its 0/255 mask.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Result = tuple[np.ndarray, np.ndarray]
DefectFn = Callable[[np.ndarray, np.random.Generator, np.ndarray | None], tuple[np.ndarray, np.ndarray]]


def scratch(image: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None = None) -> Result:
    """A thin dark or bright polyline across part of the image."""
    h, w = image.shape[:2]
    n = int(rng.integers(2, 5))
    start = rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
    steps = rng.normal(0, 0.2 * min(h, w), size=(n - 1, 2))
    pts = np.vstack([start, start + np.cumsum(steps, axis=0)]).clip(2, min(h, w) - 3).astype(np.int32)
    thickness = int(rng.integers(2, 5))
    mask = np.zeros((h, w), np.uint8)
    cv2.polylines(mask, [pts], False, 255, thickness, lineType=cv2.LINE_8)
    value = rng.uniform(10, 40) if rng.random() < 0.6 else rng.uniform(215, 245)
    out = image.copy()
    out[mask > 0] = np.clip(value + rng.normal(0, 6, size=(int((mask > 0).sum()), 3)), 0, 255)
    return out, mask


def hole(image: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None = None) -> Result:
    """A dark elliptical hole with a lighter rim."""
    h, w = image.shape[:2]
    r = rng.uniform(0.04, 0.09, size=2) * min(h, w)
    centre = rng.uniform([0.25 * w, 0.25 * h], [0.75 * w, 0.75 * h])
    angle = float(rng.uniform(0, 180))
    mask = np.zeros((h, w), np.uint8)
    c, axes = tuple(int(v) for v in centre), (int(r[0]), int(r[1]))
    cv2.ellipse(mask, c, axes, angle, 0, 360, 255, -1)
    rim = np.zeros_like(mask)
    cv2.ellipse(rim, c, (axes[0] + 3, axes[1] + 3), angle, 0, 360, 255, 3)
    out = image.astype(np.float32)
    out[rim > 0] = out[rim > 0] * 0.5 + 110
    out[mask > 0] = rng.uniform(5, 25) + out[mask > 0] * 0.1
    mask = np.maximum(mask, rim)
    return np.clip(out, 0, 255).astype(np.uint8), mask


def stain(image: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None = None) -> Result:
    """A soft irregular discolouration (blob of a few Gaussians, blended with a stain colour)."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    centre = rng.uniform([0.25 * h, 0.25 * w], [0.75 * h, 0.75 * w])
    field = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = centre + rng.normal(0, 0.05 * min(h, w), size=2)
        s = rng.uniform(0.03, 0.07) * min(h, w)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    mask = np.where(field > 0.5, 255, 0).astype(np.uint8)
    alpha = (np.clip(field, 0, 1) * rng.uniform(0.55, 0.8))[:, :, None]
    colour = rng.choice(np.array([[90, 60, 20], [40, 40, 40], [150, 130, 40], [30, 60, 90]], np.float32))
    out = image.astype(np.float32) * (1 - alpha) + colour * alpha
    out = np.where(mask[:, :, None] > 0, out, image.astype(np.float32))
    return np.clip(out, 0, 255).astype(np.uint8), mask


def foreign_patch(image: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None = None) -> Result:
    """An irregular polygon of another material, pasted with hard edges."""
    if foreign is None:
        raise ValueError("foreign_patch needs a foreign texture image")
    h, w = image.shape[:2]
    centre = rng.uniform([0.3 * w, 0.3 * h], [0.7 * w, 0.7 * h])
    n = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.08, 0.16, n) * min(h, w)
    pts = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [pts.astype(np.int32)], 255)
    source = cv2.resize(foreign, (w, h), interpolation=cv2.INTER_AREA)
    out = np.where(mask[:, :, None] > 0, source, image)
    return out, mask


DEFECTS: dict[str, DefectFn] = {
    "scratch": scratch,
    "hole": hole,
    "stain": stain,
    "foreign": foreign_patch,
}
