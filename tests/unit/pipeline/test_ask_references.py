"""`ask` builds its map as evaluation does: from the category's normal images when they are at hand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.references import evenly_spaced, normal_images_beside


def test_an_image_in_an_mvtec_tree_finds_its_categorys_normal_training_images(sample_data_root):
    good = sorted((sample_data_root / "coin" / "train" / "good").glob("*.png"))
    test_image = sorted((sample_data_root / "coin" / "test" / "scratch").glob("*.png"))[0]
    assert normal_images_beside(str(test_image)) == [p.resolve() for p in good]
    # a training image is left out of its own bank: it would match itself perfectly
    assert normal_images_beside(str(good[0])) == [p.resolve() for p in good[1:]]


def test_an_image_outside_an_mvtec_tree_has_no_references(tmp_path):
    lone = tmp_path / "part.png"
    lone.write_bytes(b"")
    assert normal_images_beside(str(lone)) == []
    (tmp_path / "bottle" / "test" / "crack").mkdir(parents=True)  # a test folder without train/good
    assert normal_images_beside(str(tmp_path / "bottle" / "test" / "crack" / "000.png")) == []


def test_a_large_folder_gives_references_spread_over_it():
    names = [f"{i:03d}.png" for i in range(224)]
    chosen = evenly_spaced(names, 16)
    assert len(chosen) == 16 and chosen[0] == "000.png" and chosen[-1] == "223.png"
    assert chosen == sorted(set(chosen))  # distinct, in name order
    assert evenly_spaced(names[:6], 16) == names[:6]
    assert evenly_spaced(names, 1) == ["000.png"]
    with pytest.raises(ValueError, match="at least 1"):
        evenly_spaced(names, 0)


def test_ask_uses_the_bank_by_default_and_the_decoder_map_when_told(
    tiny_checkpoint, sample_data_root, tmp_path
):
    image = sorted((sample_data_root / "coin" / "test" / "scratch").glob("*.png"))[0]
    base = [sys.executable, "-m", "pipeline", "ask", "--model", str(tiny_checkpoint), "--image", str(image)]
    base += ["--question", "x", "--out", str(tmp_path)]
    with_bank = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert with_bank.returncode == 0, with_bank.stderr[-2000:]
    good = sample_data_root / "coin" / "train" / "good"
    assert f"memory bank: 6 of 6 normal images in {good.resolve()}" in with_bank.stderr
    alone = subprocess.run([*base, "--no-references"], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert "memory bank" not in alone.stderr
    score = [line for line in with_bank.stdout.splitlines() if line.startswith("anomaly score")]
    assert score and score != [line for line in alone.stdout.splitlines() if line.startswith("anomaly score")]
    two = subprocess.run([*base, "--max-references", "2"], capture_output=True, text=True, timeout=300)
    assert two.returncode == 0 and "memory bank: 2 of 6 normal images" in two.stderr
    zero = subprocess.run([*base, "--max-references", "0"], capture_output=True, text=True, timeout=300)
    assert zero.returncode == 2 and "--max-references must be at least 1" in zero.stderr
    both = subprocess.run(
        [*base, "--no-references", "--reference", str(image)], capture_output=True, text=True
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
