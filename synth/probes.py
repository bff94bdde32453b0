"""Synthetic anomalies made from a category's references, to check a memory bank's map on them.

The map guard (``memory_bank.fusion_guard``) compares the bank's ranking with and without its
refinements and the decoder, on the references held out and on these probes. Each probe is one
reference made anomalous, scored with that reference held out of the bank. Kinds:

- ``nsa``: a patch of another reference cut, rescaled and Poisson-blended in: the training
  synthesis, so the decoder has learnt exactly this kind (a guard that sees only it favours it).
- ``swirl``: the texture inside a disc twisted about its centre (a smooth rotation field).
- ``bulge``: the texture inside a disc magnified from its centre outwards (a fish-eye lens).

``swirl`` and ``bulge`` change structure without adding anything from elsewhere: of another kind
than the training synthesis, the demo's test defects and the robustness suite's generators, so a
choice the guard makes on them is not one the decoder was trained for or the suite would reward.
Deterministic for equal references, count and kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from synth.config import SynthConfig
from synth.nsa import CategorySpec, category_spec, foreground, synthesize

ATTEMPTS_PER_PROBE = 4  # a draw fails now and then (NSA: a patch too small; a warp over flat ground)
RADIUS = (0.08, 0.16)
"""A warp's disc radius, as a fraction of the image's shorter side."""
MIN_CHANGE = 0.3
"""Mean absolute change over the warped disc a warp must reach to count as a probe, as a share of
the disc's own contrast (its mean absolute deviation): a warp of flat ground changes nothing."""
MIN_CONTRAST = 2.0
"""Contrast (0-255) below which a disc counts as flat ground."""

Probe = Callable[[np.ndarray, Sequence[np.ndarray], CategorySpec, np.random.Generator], np.ndarray | None]
"""One probe of ``target`` (the others: references it may take material from), or None if it failed."""
Radial = Callable[[np.ndarray], tuple[np.ndarray | float, np.ndarray | float]]
"""Per pixel, from its weight (1 at a disc's centre, 0 at its rim): the angle to turn its offset
from the centre by, and the factor to scale it by."""


def _nsa(
    target: np.ndarray, others: Sequence[np.ndarray], spec: CategorySpec, rng: np.random.Generator
) -> np.ndarray | None:
    source = others[int(rng.integers(len(others)))]
    result = synthesize(target, source, spec, SynthConfig(), rng)
    return None if result is None else result.image


def _warped(
    target: np.ndarray, spec: CategorySpec, rng: np.random.Generator, radial: Radial
) -> np.ndarray | None:
    """``target`` resampled inside a disc (on the object, for objects) as ``radial`` says, the
    weight falling smoothly from the centre to the rim; None where the disc is flat ground or the
    warp changed too little of it."""
    h, w = target.shape[:2]
    radius = float(rng.uniform(*RADIUS)) * min(h, w)
    margin = int(radius) + 1
    object_pixels = foreground(target, spec.background)
    if object_pixels is not None:
        ys, xs = np.nonzero(object_pixels[margin : h - margin, margin : w - margin])
        if len(ys) == 0:
            return None
        pick = int(rng.integers(len(ys)))
        cy, cx = float(ys[pick] + margin), float(xs[pick] + margin)
    else:
        cy, cx = float(rng.uniform(margin, h - margin)), float(rng.uniform(margin, w - margin))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    inside = np.clip(1.0 - np.sqrt(dy * dy + dx * dx) / radius, 0.0, 1.0)
    weight = inside * inside * (3.0 - 2.0 * inside)  # smoothstep: no seam at the rim
    angle, scale = radial(weight)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    map_x = (cx + cos * dx - sin * dy).astype(np.float32)
    map_y = (cy + sin * dx + cos * dy).astype(np.float32)
    out = cv2.remap(target, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    before = target[inside > 0].astype(np.float32)
    contrast = float(np.abs(before - before.mean(axis=0)).mean())
    change = float(np.abs(out[inside > 0].astype(np.float32) - before).mean())
    return out if contrast >= MIN_CONTRAST and change >= MIN_CHANGE * contrast else None


def _swirl(
    target: np.ndarray, others: Sequence[np.ndarray], spec: CategorySpec, rng: np.random.Generator
) -> np.ndarray | None:
    turn = float(rng.uniform(1.5, 3.0)) * float(rng.choice([-1.0, 1.0]))
    return _warped(target, spec, rng, lambda weight: (turn * weight, 1.0))


def _bulge(
    target: np.ndarray, others: Sequence[np.ndarray], spec: CategorySpec, rng: np.random.Generator
) -> np.ndarray | None:
    shrink = 1.0 - 1.0 / float(rng.uniform(2.2, 3.2))  # the centre magnified 2.2-3.2 times
    return _warped(target, spec, rng, lambda weight: (0.0, 1.0 - shrink * weight))


PROBES: dict[str, Probe] = {"nsa": _nsa, "swirl": _swirl, "bulge": _bulge}
PROBE_KINDS = tuple(PROBES)


def probe_anomalies(
    references: Sequence[np.ndarray],
    category: str,
    count: int,
    kinds: Sequence[str] = ("nsa",),
    seed: int = 0,
) -> tuple[list[np.ndarray], list[int]]:
    """Up to ``count`` anomalous images (uint8 H x W x 3) made from ``references`` (two or more),
    the ``kinds`` taking turns, and for each the index of the reference it was made from (to hold
    out of the bank)."""
    if len(references) < 2:
        raise ValueError(f"probe anomalies need at least 2 references, got {len(references)}")
    unknown = [k for k in kinds if k not in PROBES]
    if unknown or not kinds:
        raise ValueError(f"unknown probe kinds {unknown or '(none given)'}; have {', '.join(PROBE_KINDS)}")
    rng = np.random.default_rng(seed)
    spec = category_spec(category)
    images: list[np.ndarray] = []
    owners: list[int] = []
    for k in range(count):
        target = k % len(references)
        make = PROBES[kinds[k % len(kinds)]]
        others = [r for i, r in enumerate(references) if i != target]
        for _ in range(ATTEMPTS_PER_PROBE):
            image = make(references[target], others, spec, rng)
            if image is not None:
                images.append(image)
                owners.append(target)
                break
    return images, owners
