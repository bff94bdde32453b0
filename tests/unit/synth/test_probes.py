"""The map guard's probes: synthetic anomalies of several kinds made from a category's references."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from synth.probes import PROBE_KINDS, probe_anomalies
from train.model.config import GUARD_PROBE_KINDS


def references(n: int = 4, side: int = 128) -> list[np.ndarray]:
    """Crops of a photograph that scikit-image ships (textured enough for every kind to show)."""
    image = data.astronaut()
    return [np.ascontiguousarray(image[40 * i : 40 * i + side, 60 * i : 60 * i + side]) for i in range(n)]


@pytest.mark.parametrize("kind", ["swirl", "bulge"])
def test_a_warp_moves_pixels_inside_one_disc_and_leaves_the_rest(kind):
    refs = references()
    made, owners = probe_anomalies(refs, "grass", 6, (kind,))
    assert len(made) >= 4 and set(owners) <= set(range(len(refs)))
    for image, owner in zip(made, owners, strict=True):
        changed = np.abs(image.astype(np.int16) - refs[owner]).max(axis=2) > 0
        ys, xs = np.nonzero(changed)
        assert changed.any() and changed.mean() < 0.2  # one region, not the whole image
        # the change is one disc at most 2 x 0.16 x 128 pixels across
        assert ys.max() - ys.min() <= 42 and xs.max() - xs.min() <= 42


def test_kinds_take_turns_and_equal_inputs_give_equal_probes():
    refs = references()
    first = probe_anomalies(refs, "grass", 9, PROBE_KINDS)
    again = probe_anomalies(refs, "grass", 9, PROBE_KINDS)
    assert first[1] == again[1] and all(np.array_equal(a, b) for a, b in zip(first[0], again[0], strict=True))
    nsa_only = probe_anomalies(refs, "grass", 9)
    assert len(first[0]) >= 6 and not all(  # the warps are other images than NSA's
        np.array_equal(a, b) for a, b in zip(first[0], nsa_only[0], strict=False)
    )


def test_the_config_knows_every_kind_the_probes_make():
    assert GUARD_PROBE_KINDS == PROBE_KINDS


def test_unknown_kinds_and_too_few_references_are_named():
    with pytest.raises(ValueError, match=r"unknown probe kinds \['ripple'\]; have nsa, swirl, bulge"):
        probe_anomalies(references(), "grass", 4, ("nsa", "ripple"))
    with pytest.raises(ValueError, match="at least 2 references"):
        probe_anomalies(references(1), "grass", 4, ("swirl",))
