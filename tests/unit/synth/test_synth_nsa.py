"""NSA-style synthesis on real sample images: masks, determinism, object placement, fallbacks."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from synth import nsa
from synth.config import SynthConfig
from synth.datasets import load_rgb, read_dataset
from synth.shard_samples import SampleMaker, _Augmenter, sources_from_records

SIZE = 96
SPEC = "width: [[0.03, 0.4], [0.03, 0.4]], resize: [0.5, 2], logistic: [1, 2]"


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def images(sample_data_root):
    out = {}
    for r in read_dataset(sample_data_root, "mvtec"):
        out.setdefault(r.category, []).append(cv2.resize(load_rgb(r.path), (SIZE, SIZE)))
    return out


def test_mask_is_binary_and_covers_the_change(images):
    cfg = SynthConfig(size=SIZE)
    spec = nsa.category_spec("brick")
    made, inside_total, total = 0, 0.0, 0.0
    for seed in range(30):
        target, source = images["brick"][0], images["brick"][seed % 5 + 1]
        result = nsa.synthesize(target, source, spec, cfg, np.random.default_rng(seed), _Augmenter())
        if result is None:
            continue
        made += 1
        assert result.mask.dtype == np.uint8 and set(np.unique(result.mask)) == {0, 255}
        assert 1 <= len(result.regions) <= 2
        change = np.abs(result.image.astype(int) - target.astype(int)).mean(axis=2)
        inside = result.mask > 0
        assert (change[inside] > 1).mean() > 0.5  # the mask marks pixels the blend changed
        # ...and holds most of the change (faint patches lose scattered 1-2 level changes to the
        # reference's median filter, so per image the bar is lower than over all images).
        assert change[inside].sum() >= 0.7 * change.sum()
        inside_total += change[inside].sum()
        total += change.sum()
    assert made >= 8 and inside_total >= 0.9 * total


def test_same_rng_same_result_and_logistic_is_a_subset(images):
    spec = nsa.category_spec("grass")
    target, source = images["grass"][0], images["grass"][1]
    binary = SynthConfig(size=SIZE)
    seed = next(
        s for s in range(50) if nsa.synthesize(target, source, spec, binary, np.random.default_rng(s))
    )
    a = nsa.synthesize(target, source, spec, binary, np.random.default_rng(seed))
    b = nsa.synthesize(target, source, spec, binary, np.random.default_rng(seed))
    assert a is not None and (a.image == b.image).all() and (a.mask == b.mask).all()
    soft = dataclasses.replace(binary, label_mode="logistic", soft_threshold=0.5)
    c = nsa.synthesize(target, source, spec, soft, np.random.default_rng(seed))
    assert c is not None and (c.image == a.image).all()
    assert ((c.mask > 0) <= (a.mask > 0)).all() and (c.mask > 0).sum() < (a.mask > 0).sum()


def test_object_category_patches_land_on_the_object(images):
    spec = nsa.category_spec("coin")
    assert spec.background is not None
    cfg = SynthConfig(size=SIZE)
    overlaps = []
    for seed in range(30):
        target = images["coin"][seed % 6]
        result = nsa.synthesize(
            target, images["coin"][(seed + 1) % 6], spec, cfg, np.random.default_rng(seed)
        )
        if result is None:
            continue
        fg = nsa.foreground(target, spec.background)
        overlaps += [fg[region].mean() for region in result.regions]
    # The object covers about 30 % of a coin image; patches placed at random would overlap it about
    # that much. Foreground-aware placement puts each patch on it.
    assert len(overlaps) >= 8 and min(overlaps) > 0 and np.mean(overlaps) > 0.6


def test_bounds_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "bounds.yaml"
    bad.write_text(f"default: {{{SPEC}, colour: 3}}\n")
    with pytest.raises(ValueError, match=r"bounds\.yaml: default: unknown key 'colour'"):
        nsa.load_category_specs(str(bad))
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        nsa.load_category_specs(str(tmp_path / "nope.yaml"))


def test_failed_synthesis_falls_back_to_a_counted_normal(sample_data_root, tmp_path):
    # A background rule that finds no object anywhere: every attempt fails.
    bounds = tmp_path / "bounds.yaml"
    bounds.write_text(f"default: {{{SPEC}, background: [0, 255]}}\n")
    cfg = SynthConfig(size=64, bounds_file=str(bounds), retries=2, placement_attempts=3)
    records = read_dataset(sample_data_root, "mvtec", categories=["brick"])
    maker = SampleMaker(sources_from_records(records), cfg, seed=0)
    sample = maker.make(1, 0, 1, 0)
    assert sample.kind == "fallback"
    meta = json.loads(dict(sample.files)["json"])
    assert meta["label"] == 0 and meta["answer"].startswith("No, there is no anomaly")
    # still paired with the normal sample of its image
    assert meta["pair"] == "00000000" and meta["source"] == records[0].relpath
    mask = cv2.imdecode(np.frombuffer(dict(sample.files)["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 64) and mask.max() == 0


def _gamma2_cdf(x: np.ndarray, scale: float) -> np.ndarray:
    """CDF of Gamma(shape 2, scale)."""
    z = np.maximum(x, 0.0) / scale
    return 1.0 - np.exp(-z) * (1.0 + z)


def _clipped_law(lo: float, hi: float) -> tuple[float, float]:
    """(median, mean) of clip(0.03 + Gamma(2, 0.05), lo, hi), from the Gamma law (not by sampling)."""
    offset, scale = nsa.GAMMA_OFFSET, nsa.GAMMA_SCALE
    grid = np.linspace(0.0, hi - offset, 200_001)
    median = offset + grid[np.searchsorted(_gamma2_cdf(grid, scale), 0.5)]
    density = grid / scale**2 * np.exp(-grid / scale)
    below = np.trapezoid(np.clip(offset + grid, lo, hi) * density, grid)
    mean = below + hi * (1.0 - _gamma2_cdf(np.array(hi - offset), scale))
    return float(np.clip(median, lo, hi)), float(mean)


def test_patch_size_draw_is_a_half_width_as_in_the_reference():
    spec = nsa.category_spec("carpet")  # a texture with the default 0.03-0.4 bounds
    rng = _rng(0)
    side = 224
    halves = np.array([nsa.draw_half_widths(spec, rng) for _ in range(4000)])
    assert halves.min() >= 0.03 and halves.max() <= 0.4
    median, mean = _clipped_law(0.03, 0.4)
    assert median == pytest.approx(0.1139, abs=1e-3) and mean == pytest.approx(0.13, abs=2e-3)
    # The patch spans centre +- the draw: its side is twice it. Check boxes away from the border,
    # which the image does not clip.
    sides = []
    for fh, fw in halves:
        y0, y1, x0, x1 = nsa.source_box((side, side), (fh, fw), spec, rng)
        assert y1 - y0 <= 2 * round(fh * side) and x1 - x0 <= 2 * round(fw * side)
        if y0 > 0 and y1 < side:
            sides.append((y1 - y0) / side)
    sides = np.array(sides)
    assert len(sides) > 1000
    # The old rule used the draw as the full side: half of these, far outside the tolerance.
    expected_median, expected_mean = 2 * median, 2 * mean
    assert np.median(halves) * 2 == pytest.approx(expected_median, rel=0.05)
    assert halves.mean() * 2 == pytest.approx(expected_mean, rel=0.05)
    assert np.median(halves) != pytest.approx(expected_median, rel=0.3)  # the old full-side rule
    # unclipped boxes are drawn from the same law, so they tell the same (a bit biased to small boxes)
    assert np.median(sides) == pytest.approx(expected_median, rel=0.1)
    assert np.median(sides) != pytest.approx(expected_median / 2, rel=0.3)


def test_rescale_keeps_aspect_and_clips_half_widths_to_the_bounds():
    bounds = (0.03, 0.2)
    assert nsa.rescaled_side(40, 1.0, bounds, 200) == 40
    assert nsa.rescaled_side(40, 1.5, bounds, 200) == 60
    assert nsa.rescaled_side(60, 2.0, bounds, 200) == 80  # half-width 60 > 0.2 * 200: clipped to 40
    assert nsa.rescaled_side(10, 0.5, bounds, 200) == 12  # half-width 2.5 < 0.03 * 200 = 6
    assert nsa.rescaled_side(180, 2.0, (0.03, 0.9), 200) == 198  # the image, with a 1 px margin


def test_rot90_augmenter_swaps_patch_and_mask_shapes():
    augment = _Augmenter()
    patch = np.random.default_rng(0).integers(0, 255, (10, 30, 3), dtype=np.uint8)
    fg = np.zeros((10, 30), bool)
    fg[:, :5] = True
    shapes = set()
    for seed in range(20):
        out, out_fg = augment(patch, fg, _rng(seed))
        assert out.shape[:2] == out_fg.shape and out_fg.sum() == fg.sum()
        shapes.add(out.shape[:2])
        again, _ = augment(patch, fg, _rng(seed))
        assert (again == out).all()  # seeded from the sample rng
    assert shapes == {(10, 30), (30, 10)}


def test_a_rotated_non_square_patch_is_pasted_upright(images):
    # Flat wide patches (half-height 0.08-0.09, half-width 0.3-0.35, no rescale), always turned 90°:
    # the pasted region must be tall and narrow (gravel on brick, so the blend shows).
    spec = nsa.CategorySpec(((0.08, 0.09), (0.3, 0.35)), (1.0, 1.0), None, (1.0, 2.0))
    cfg = SynthConfig(size=SIZE, max_patches=1)

    def turn(patch, fg, rng):
        return np.rot90(patch), None if fg is None else np.rot90(fg)

    made = 0
    for seed in range(10):
        result = nsa.synthesize(images["brick"][0], images["gravel"][0], spec, cfg, _rng(seed), turn)
        if result is None:
            continue
        made += 1
        rows, cols = np.nonzero(result.regions[0])
        assert np.ptp(rows) > 2 * np.ptp(cols)
    assert made >= 5
