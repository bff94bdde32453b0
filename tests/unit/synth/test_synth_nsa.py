"""NSA-style synthesis on real sample images: masks, determinism, object placement, fallbacks."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from synth import nsa
from synth.config import SynthConfig
from synth.datasets import load_rgb, read_dataset
from synth.samples import SampleMaker, _Augmenter, sources_from_records

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
    sample = maker.make(1, 0, 1)
    assert sample.kind == "fallback"
    meta = dict(sample.files)["json"].decode()
    assert '"label": 0' in meta and "No, there is no anomaly" in meta
    mask = cv2.imdecode(np.frombuffer(dict(sample.files)["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 64) and mask.max() == 0
