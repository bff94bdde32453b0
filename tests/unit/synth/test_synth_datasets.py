"""Readers on generated MVTec-AD / VisA / folder trees, image-mode conversion, and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synth.datasets import DatasetError, Skipped, load_mask, load_rgb, read_dataset


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def _rgb(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _mvtec(root: Path) -> Path:
    for cat in ("bottle", "wood"):
        for i in range(3):
            _png(root / cat / "train" / "good" / f"{i:03d}.png", _rgb(i))
        _png(root / cat / "test" / "good" / "000.png", _rgb(10))
        _png(root / cat / "test" / "crack" / "000.png", _rgb(11))
        mask = np.zeros((16, 16), np.uint8)
        mask[4:8, 4:8] = 255
        _png(root / cat / "ground_truth" / "crack" / "000_mask.png", mask)
    return root


def test_mvtec_train_and_test_records(tmp_path):
    root = _mvtec(tmp_path / "mvtec")
    train = read_dataset(root, "mvtec", split="train")
    assert [(r.category, r.relpath) for r in train][:3] == [
        ("bottle", "bottle/train/good/000.png"),
        ("bottle", "bottle/train/good/001.png"),
        ("bottle", "bottle/train/good/002.png"),
    ]
    assert {r.label for r in train} == {0} and len(train) == 6
    test = read_dataset(root, "mvtec", split="test", categories=["wood"])
    assert [(r.defect, r.label, r.mask_path is not None) for r in test] == [
        ("crack", 1, True),
        ("good", 0, False),
    ]
    assert load_mask(test[0].mask_path).sum() == 16 * 255


def test_corrupt_image_is_skipped_and_reported(tmp_path, caplog):
    root = _mvtec(tmp_path / "mvtec")
    bad = root / "bottle" / "train" / "good" / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    skipped: list[Skipped] = []
    records = read_dataset(root, "mvtec", categories=["bottle"], skipped=skipped)
    assert len(records) == 3
    assert [s.path for s in skipped] == ["bottle/train/good/bad.png"]
    assert "unreadable image" in skipped[0].reason
    assert "bad.png" in caplog.text


def test_mask_size_mismatch_names_the_mask(tmp_path):
    root = _mvtec(tmp_path / "mvtec")
    _png(root / "wood" / "ground_truth" / "crack" / "000_mask.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"wood/ground_truth/crack/000_mask.png.*differs"):
        read_dataset(root, "mvtec", split="test")


def test_missing_root_empty_category_unknown_category(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_dataset(tmp_path / "nowhere", "mvtec")
    root = _mvtec(tmp_path / "mvtec")
    (root / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"empty.*no readable train images"):
        read_dataset(root, "mvtec")
    with pytest.raises(DatasetError, match="no category 'cable'"):
        read_dataset(root, "mvtec", categories=["cable"])


def test_visa_split_csv_and_binarised_masks(tmp_path):
    root = tmp_path / "visa"
    rows = []
    for i in range(3):
        rows.append(["candle", "train", "normal", f"candle/Data/Images/Normal/{i}.JPG", ""])
        Image.fromarray(_rgb(i)).save(_mkparent(root / rows[-1][3]), format="JPEG")
    rows.append(
        ["candle", "test", "anomaly", "candle/Data/Images/Anomaly/0.JPG", "candle/Data/Masks/Anomaly/0.png"]
    )
    Image.fromarray(_rgb(9)).save(_mkparent(root / rows[-1][3]), format="JPEG")
    visa_mask = np.zeros((16, 16), np.uint8)
    visa_mask[2:6, 2:10] = 1  # VisA masks hold 0/1
    _png(root / rows[-1][4], visa_mask)
    _mkparent(root / "split_csv" / "1cls.csv")
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["object", "split", "label", "image", "mask"], *rows])
    train = read_dataset(root, "visa", split="train")
    assert len(train) == 3 and all(r.label == 0 and r.split == "train" for r in train)
    (anomaly,) = read_dataset(root, "visa", split="test")
    mask = load_mask(anomaly.mask_path)
    assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 32
    assert load_rgb(anomaly.path).shape == (16, 16, 3)


def test_folder_layout(tmp_path):
    root = tmp_path / "folder"
    for i in range(2):
        _png(root / "widget" / f"{i}.png", _rgb(i))
    (root / "widget" / "notes.txt").write_text("not an image")
    records = read_dataset(root, "folder")
    assert [r.relpath for r in records] == ["widget/0.png", "widget/1.png"]
    assert all(r.category == "widget" and r.label == 0 for r in records)


def test_load_rgb_converts_every_mode(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = load_rgb(_png(tmp_path / "gray.png", gray))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and (out[:, :, 1] == gray).all()

    sixteen = (gray.astype(np.uint16) * 257).astype(np.uint16)
    _png(tmp_path / "g16.png", sixteen)
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert (load_rgb(tmp_path / "g16.png")[:, :, 0] == gray).all()
    _png(tmp_path / "dark16.png", (sixteen // 64).astype(np.uint16))  # a dark 16-bit image stays dark
    assert load_rgb(tmp_path / "dark16.png").max() == 4

    rgba = np.dstack([_rgb(1), np.full((16, 16), 255, np.uint8)])
    rgba[0, 0, 3] = 0
    out = load_rgb(_png(tmp_path / "rgba.png", rgba))
    assert (out[1:, 1:] == rgba[1:, 1:, :3]).all() and (out[0, 0] == 0).all()

    pal = Image.fromarray(_rgb(2)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "pal.png")
    assert (load_rgb(tmp_path / "pal.png") == np.asarray(pal.convert("RGB"))).all()


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
