"""The robustness suite is built offline, deterministically, in MVTec layout, with masks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from synth.datasets import read_dataset
from synth.robustness_suite import DEFECTS, dataset_names, suite_dataset, suite_spec, write_suite_dataset


def test_the_suite_has_validation_and_test_datasets_unlike_the_demo():
    spec = suite_spec()
    assert dataset_names("validation") and dataset_names("test")
    sources = {spec["sources"][c]["file"] for d in spec["datasets"].values() for c in d["categories"]}
    assert not any(name in f for f in sources for name in ("brick", "grass", "gravel", "coins"))
    assert {k for d in spec["datasets"].values() for k in d["kinds"]} <= set(DEFECTS)


def test_a_dataset_is_written_in_mvtec_layout_with_a_visible_defect_under_every_mask(tmp_path):
    spec = suite_spec()
    write_suite_dataset(tmp_path / "a", "grey")
    test = read_dataset(tmp_path / "a", "mvtec", split="test")
    train = read_dataset(tmp_path / "a", "mvtec", split="train")
    n_kinds = len(spec["datasets"]["grey"]["kinds"])
    assert len(train) == 3 * spec["n_train"]
    assert len(test) == 3 * (spec["n_test_good"] + spec["n_per_kind"] * n_kinds)
    for record in (r for r in test if r.label):
        mask = cv2.imread(str(record.mask_path), cv2.IMREAD_GRAYSCALE)
        assert mask is not None and (mask > 0).any(), record.path
    write_suite_dataset(tmp_path / "b", "grey")  # the same bytes again: built from shipped images only
    for a in sorted((tmp_path / "a").rglob("*.png"))[:20]:
        b = tmp_path / "b" / a.relative_to(tmp_path / "a")
        assert np.array_equal(cv2.imread(str(a)), cv2.imread(str(b)))


def test_an_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="unknown suite dataset 'nope'"):
        write_suite_dataset("unused", "nope")


def test_each_draw_has_its_own_folder_written_once(tmp_path):
    first = suite_dataset(tmp_path, "grey")
    other = suite_dataset(tmp_path, "grey", seed_offset=1)
    assert (first.name, other.name) == ("grey", "grey-draw1")
    a, b = (sorted(d.rglob("*.png"))[0] for d in (first, other))
    assert not np.array_equal(cv2.imread(str(a)), cv2.imread(str(b)))  # another seed, other crops
    stamp = a.stat().st_mtime_ns
    assert suite_dataset(tmp_path, "grey") == first and a.stat().st_mtime_ns == stamp  # reused, not rewritten
