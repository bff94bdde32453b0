"""The sample dataset: counts, determinism, train/test separation, and defects an inspector can see."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from synth.defects import DEFECTS, acceptable
from synth.demo_dataset import (
    _defective,
    _find_objects,
    _normals,
    _original,
    _split_objects,
    _texture_normals,
    sample_spec,
    write_sample_dataset,
)

SPEC = sample_spec()
CATEGORIES = list(SPEC["categories"])


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_cli_defaults_write_20_normal_and_20_defective_test_images_per_category(tmp_path):
    from pipeline.cli import main

    root = tmp_path / "data"
    assert main(["sample-data", "--out", str(root), "--categories", "coin", "grass", "--size", "64"]) == 0
    for category in ("coin", "grass"):
        base = root / category
        assert len(list((base / "train" / "good").glob("*.png"))) == 14
        assert len(list((base / "test" / "good").glob("*.png"))) == 20
        for defect in DEFECTS:
            images = sorted(p.stem for p in (base / "test" / defect).glob("*.png"))
            masks = sorted(p.stem for p in (base / "ground_truth" / defect).glob("*.png"))
            assert images == [f"{i:03d}" for i in range(5)]
            assert masks == [f"{i:03d}_mask" for i in range(5)]
    assert not (root / "brick").exists()


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    kwargs = {"size": 64, "n_train": 3, "n_test_good": 2, "n_per_defect": 1}
    one = _digests(write_sample_dataset(tmp_path / "a", seed=7, **kwargs))
    two = _digests(write_sample_dataset(tmp_path / "b", seed=7, **kwargs))
    other = _digests(write_sample_dataset(tmp_path / "c", seed=8, **kwargs))
    assert len(one) == 4 * (3 + 2 + 2 * len(DEFECTS)) + 1  # images, masks, README.txt
    assert one == two
    assert {k for k in one if one[k] != other.get(k) and k.endswith(".png")}


def test_a_category_and_its_test_set_do_not_depend_on_the_rest(tmp_path):
    full = _digests(write_sample_dataset(tmp_path / "a", size=64, n_train=4, n_test_good=2, n_per_defect=1))
    alone = _digests(
        write_sample_dataset(
            tmp_path / "b", size=64, n_train=2, n_test_good=2, n_per_defect=1, categories=["coin"]
        )
    )
    test_files = [k for k in alone if k.startswith("coin/test/") or k.startswith("coin/ground_truth/")]
    assert test_files and all(alone[k] == full[k] for k in test_files)


def test_all_24_coins_are_found_and_split_into_disjoint_train_and_test_coins():
    objects = _find_objects(_original(SPEC["categories"]["coin"]), SPEC["split"])
    assert len(objects) == 24
    train, test = _split_objects(len(objects), SPEC["split"]["object_train_share"], (0, 3))
    assert not set(train) & set(test)
    assert sorted(train + test) == list(range(24))
    assert len(train) == len(test) == 12


def test_texture_train_and_test_crops_come_from_disjoint_rows():
    """A half-black, half-white original: train crops must be all black, test crops all white."""
    image = np.zeros((512, 512, 3), np.uint8)
    image[round(SPEC["split"]["texture_train_rows"] * 512) :] = 255
    train, test = _normals(image, "texture", 14, 40, 64, SPEC["split"], (0, 0))
    assert len(train) == 14 and len(test) == 40
    assert max(int(n.image.max()) for n in train) == 0
    assert min(int(n.image.min()) for n in test) >= 255 * 0.93 - 1


def test_images_of_a_category_are_all_distinct(tmp_path):
    root = write_sample_dataset(tmp_path, size=64, categories=["brick", "coin"])
    for category in ("brick", "coin"):
        images = [p for p in (root / category).rglob("*.png") if "ground_truth" not in p.parts]
        digests = [hashlib.sha256(cv2.imread(str(p)).tobytes()).hexdigest() for p in images]
        assert len(digests) == 14 + 20 + 20
        assert len(set(digests)) == len(digests)


@pytest.mark.parametrize("category", CATEGORIES)
def test_defects_are_visible_realistically_sized_and_masked_exactly(category):
    spec = SPEC["categories"][category]
    ci = CATEGORIES.index(category)
    _, test = _normals(_original(spec), spec["kind"], 0, 24, 256, SPEC["split"], (0, ci))
    other = next(c for c in CATEGORIES if c != category and SPEC["categories"][c]["kind"] == "texture")
    for d, (defect, make) in enumerate(DEFECTS.items()):
        areas = []
        for i in range(6):
            base = test[4 * d + i % 4]
            rng = np.random.default_rng([1, ci, d, i])
            foreign = _texture_normals(
                _original(SPEC["categories"][other]), 1, 256, "test", SPEC["split"], rng
            )
            image, mask = _defective(base, defect, make, SPEC["defects"], rng, foreign[0].image)
            inside = mask > 0
            change = np.abs(image.astype(np.int16) - base.image.astype(np.int16)).max(axis=2)
            assert set(np.unique(mask)) == {0, 255}
            assert not change[~inside].any(), f"{defect}: pixels changed outside the mask"
            assert (change[inside] >= 10).mean() >= 0.9, f"{defect}: mask wider than the defect"
            assert not (inside & ~base.region).any(), f"{defect}: off the object"
            assert acceptable(base.image, image, mask, SPEC["defects"]["accept"]), defect
            areas.append(inside.mean())
        assert min(areas) >= 0.002 and max(areas) <= 0.08, (defect, areas)


def test_coin_holes_lie_inside_the_coin_and_are_much_darker_than_it():
    spec = SPEC["categories"]["coin"]
    _, test = _normals(_original(spec), "object", 0, 10, 256, SPEC["split"], (0, 3))
    for i, base in enumerate(test):
        image, mask = DEFECTS["hole"](
            base.image, base.region, np.random.default_rng(i), None, SPEC["defects"]["hole"]
        )
        inside = mask > 0
        assert inside.any() and base.region[inside].all()
        luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        coin = cv2.cvtColor(base.image, cv2.COLOR_RGB2GRAY)[base.region & ~inside].astype(np.float32)
        assert np.median(luma[inside]) < np.median(coin) - 60
