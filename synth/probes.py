"""Synthetic anomalies made from a category's references, to check a memory bank's map on them.

The fusion guard (``memory_bank.fusion_guard``) compares the bank's ranking with and without the
decoder on the references held out and on these: each probe is one reference with a patch of
another reference cut, rescaled and Poisson-blended in (the training synthesis, NSA), so the bank
scores it with its own reference held out. Deterministic for equal references.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synth.config import SynthConfig
from synth.nsa import category_spec, synthesize

ATTEMPTS_PER_PROBE = 4  # NSA gives up on a draw now and then (a patch too small, off the object)


def probe_anomalies(
    references: Sequence[np.ndarray], category: str, count: int, seed: int = 0
) -> tuple[list[np.ndarray], list[int]]:
    """Up to ``count`` anomalous images (uint8 H x W x 3) made from ``references`` (two or more), and
    for each the index of the reference it was made from (to hold out of the bank)."""
    if len(references) < 2:
        raise ValueError(f"probe anomalies need at least 2 references, got {len(references)}")
    rng = np.random.default_rng(seed)
    spec, cfg = category_spec(category), SynthConfig()
    images: list[np.ndarray] = []
    owners: list[int] = []
    for k in range(count):
        target = k % len(references)
        for _ in range(ATTEMPTS_PER_PROBE):
            source = int(rng.choice([i for i in range(len(references)) if i != target]))
            result = synthesize(references[target], references[source], spec, cfg, rng)
            if result is not None:
                images.append(result.image)
                owners.append(target)
                break
    return images, owners
