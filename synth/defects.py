"""Test-set defects for the sample dataset: scratches, holes, stains and foreign-material patches.

Deliberately NOT the training synthesis (NSA: rectangles cut from other normal images of the same
category and Poisson-blended): scratches, holes and stains are drawn procedurally, and foreign
patches are hard-edged polygons of another category's held-out texture, so evaluating a model
trained on synth/ output on these defects is not circular.

Every generator takes the normal image, the ``region`` where a defect may lie (the coin for the
object category, the whole image for textures), a random generator, a foreign texture (used by
``foreign_patch`` only) and its parameters (``defects`` in synth/data/sample_sources.yaml; lengths
are fractions of the image side). It returns the defective image and its 0/255 mask: the drawn
region, outside which no pixel changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

Result = tuple[np.ndarray, np.ndarray]
Params = dict[str, Any]
DefectFn = Callable[[np.ndarray, np.ndarray, np.random.Generator, np.ndarray | None, Params], Result]

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def scratch(
    image: np.ndarray, region: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None, p: Params
) -> Result:
    """A thin curved line, dark on bright surfaces and bright on dark ones (the stronger contrast)."""
    h, w = image.shape[:2]
    side = min(h, w)
    length = rng.uniform(*p["length"]) * side
    width = max(1, round(rng.uniform(*p["width"]) * side))
    centre = _place(region, 0.3 * length, rng)
    angle = rng.uniform(0, np.pi)
    along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    ends = centre - along * length / 2, centre + along * length / 2
    control = centre + across * 2 * rng.uniform(-p["bend"], p["bend"]) * length
    t = np.linspace(0, 1, 32)[:, None]
    pts = (1 - t) ** 2 * ends[0] + 2 * (1 - t) * t * control + t**2 * ends[1]
    mask = np.zeros((h, w), np.uint8)
    pts = np.round(pts).astype(np.int32)
    for j in range(len(pts) - 1):  # tapered: full width in the middle, thinner towards the ends
        thick = max(1, round(width * np.sin(np.pi * (j + 0.5) / (len(pts) - 1)) ** 0.5))
        cv2.line(mask, tuple(int(v) for v in pts[j]), tuple(int(v) for v in pts[j + 1]), 255, thick)
    mask[~region] = 0
    inside = mask > 0
    out = image.astype(np.float32)
    strength = rng.uniform(*p["strength"]) * rng.uniform(0.85, 1.0, size=(int(inside.sum()), 1))
    pixels = out[inside]
    if float((pixels @ LUMA).mean()) > 128:
        out[inside] = pixels * (1 - strength)
    else:
        out[inside] = pixels + (255 - pixels) * strength
    return _finish(out, mask)


def hole(
    image: np.ndarray, region: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None, p: Params
) -> Result:
    """A ragged dark hole whose far inner wall catches the light, inside a shaded raised rim."""
    h, w = image.shape[:2]
    side = min(h, w)
    radius = rng.uniform(*p["radius"]) * side
    rim = max(1, round(p["rim"] * side))
    centre = _place(region, radius + rim + 1, rng)
    phi = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    wobble = 1 + sum(
        rng.uniform(0, p["ragged"]) / k * np.sin(k * phi + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    tilt = rng.uniform(0, np.pi)
    x, y = radius * np.cos(phi) * wobble, radius * rng.uniform(*p["aspect"]) * np.sin(phi) * wobble
    pts = centre + np.stack([x * np.cos(tilt) - y * np.sin(tilt), x * np.sin(tilt) + y * np.cos(tilt)], 1)
    inner = np.zeros((h, w), np.uint8)
    cv2.fillPoly(inner, [np.round(pts).astype(np.int32)], 255)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim + 1, 2 * rim + 1))
    ring = (cv2.dilate(inner, kernel) > 0) & (inner == 0) & region
    inside = inner > 0
    light = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    towards = ((xx - centre[0]) * np.cos(light) + (yy - centre[1]) * np.sin(light)) / radius
    out = image.astype(np.float32)
    wall = rng.uniform(*p["floor"]) + 50 * np.clip(towards[inside], 0, 1) ** 2
    out[inside] = out[inside] * 0.08 + (wall + rng.normal(0, 3, wall.shape))[:, None]
    shade = np.clip(0.5 - 0.5 * towards[ring], 0, 1)[:, None]
    out[ring] = out[ring] * 0.45 + 0.55 * (40 + 190 * shade)
    return _finish(out, np.where(inside | ring, 255, 0).astype(np.uint8))


def stain(
    image: np.ndarray, region: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None, p: Params
) -> Result:
    """An irregular translucent discolouration with a darker drying ring, the texture showing through."""
    h, w = image.shape[:2]
    side = min(h, w)
    sigma = rng.uniform(*p["sigma"]) * side
    centre = _place(region, 1.3 * sigma + 1.5 * p["spread"] * side, rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(p["blobs"][0], p["blobs"][1] + 1))):
        cx, cy = centre + rng.normal(0, p["spread"] * side, size=2)
        s = sigma * rng.uniform(0.6, 1.0)
        field += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    inside = (field > 0.5) & region
    colour = _contrasting_colour(image[inside] if inside.any() else image.reshape(-1, 3), p, rng)
    ring = np.exp(-(((field - 0.55) / 0.08) ** 2))
    alpha = rng.uniform(*p["strength"]) * (0.6 + 0.4 * np.clip((field - 0.5) / 0.4, 0, 1)) + 0.12 * ring
    alpha = np.clip(alpha, 0, 0.85)[inside][:, None]
    out = image.astype(np.float32)
    out[inside] = out[inside] * (1 - alpha) + colour * alpha
    return _finish(out, np.where(inside, 255, 0).astype(np.uint8))


def foreign_patch(
    image: np.ndarray, region: np.ndarray, rng: np.random.Generator, foreign: np.ndarray | None, p: Params
) -> Result:
    """An irregular polygon of another material, pasted with hard edges (no blending)."""
    if foreign is None:
        raise ValueError("foreign_patch needs a foreign texture image")
    h, w = image.shape[:2]
    radius = rng.uniform(*p["radius"]) * min(h, w)
    centre = _place(region, radius, rng)
    n = int(rng.integers(p["vertices"][0], p["vertices"][1] + 1))
    angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
    radii = rng.uniform(0.65, 1.0, n) * radius
    pts = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    mask[~region] = 0
    source = foreign if foreign.shape == image.shape else cv2.resize(foreign, (w, h), cv2.INTER_AREA)
    return np.where(mask[:, :, None] > 0, source, image), mask


def acceptable(before: np.ndarray, after: np.ndarray, mask: np.ndarray, limits: Params) -> bool:
    """Whether a drawn defect is as big and as visible as an inspector would expect (``accept``)."""
    inside = mask > 0
    area = float(inside.mean())
    if not limits["min_area"] <= area <= limits["max_area"]:
        return False
    change = np.abs(after.astype(np.float32) - before.astype(np.float32)).mean(axis=2)
    return float(change[inside].mean()) >= limits["min_contrast"]


def _place(region: np.ndarray, margin: float, rng: np.random.Generator) -> np.ndarray:
    """A random (x, y) at least ``margin`` inside the region (the deepest point if none is)."""
    inside = np.pad(region.astype(np.uint8), 1)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(depth >= margin)
    if len(ys) == 0:
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return np.array([x, y], np.float64)
    i = int(rng.integers(len(ys)))
    return np.array([xs[i], ys[i]], np.float64)


def _contrasting_colour(pixels: np.ndarray, p: Params, rng: np.random.Generator) -> np.ndarray:
    """A palette colour far enough from the surface's mean colour (the farthest if none is)."""
    palette = np.asarray(p["palette"], np.float32)
    distance = np.linalg.norm(palette - pixels.reshape(-1, 3).astype(np.float32).mean(axis=0), axis=1)
    far = np.flatnonzero(distance >= p["min_colour_distance"])
    return palette[int(rng.choice(far))] if len(far) else palette[int(np.argmax(distance))]


def _finish(out: np.ndarray, mask: np.ndarray) -> Result:
    """Round the drawn image back to uint8; the mask is the drawn region, nothing outside it changed."""
    return np.clip(np.round(out), 0, 255).astype(np.uint8), mask


DEFECTS: dict[str, DefectFn] = {
    "scratch": scratch,
    "hole": hole,
    "stain": stain,
    "foreign": foreign_patch,
}
