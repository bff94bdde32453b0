"""The demo's dataset: a small real one in MVTec-AD layout, made from images that scikit-image ships.

Normals are crops (texture categories) or single coins (the object category) of the scikit-image
originals. Train and test never share pixels: texture train crops come from the top rows of the
original and test crops from the rows below; coins are split into train coins and test coins.
Test defects come from :mod:`synth.defects`, a generator unrelated to the training synthesis.
Nothing is downloaded. Sources, split and defect sizes: synth/data/sample_sources.yaml.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from scipy import ndimage

from synth.defects import DEFECTS, DefectFn, acceptable

log = logging.getLogger(__name__)

SPEC_FILE = "sample_sources.yaml"


@dataclass(frozen=True)
class Normal:
    """A normal image and where on it a test defect may be drawn (the coin, or all of a texture)."""

    image: np.ndarray
    region: np.ndarray


@dataclass(frozen=True)
class _Object:
    """One object of the original: its bounding-box centre, crop half-side and filled outline."""

    centre: tuple[int, int]
    half: int
    mask: np.ndarray


def sample_spec() -> dict[str, Any]:
    """The whole spec: ``categories``, ``split`` and ``defects``."""
    return yaml.safe_load(importlib.resources.files("synth.data").joinpath(SPEC_FILE).read_text())


def sample_sources() -> dict[str, dict]:
    """Category name -> source spec (file, kind, tint, licence), in the dataset's order."""
    return sample_spec()["categories"]


def write_sample_dataset(
    root: str | Path,
    seed: int = 0,
    size: int = 256,
    n_train: int = 14,
    n_test_good: int = 20,
    n_per_defect: int = 5,
    categories: Sequence[str] = (),
) -> Path:
    """Write ``root/<category>/{train/good,test/good,test/<defect>,ground_truth/<defect>}``; returns root.

    Defaults give 4 categories x (14 train + 20 test good + 20 defective, 5 of each of the 4 kinds)
    at 256 px, the demo's data. Each category and each split draws from its own random stream, so
    a category's images do not depend on which other categories are written, and its test images
    do not depend on ``n_train``.
    """
    root = Path(root)
    spec = sample_spec()
    sources = spec["categories"]
    names = list(categories) or list(sources)
    unknown = [c for c in names if c not in sources]
    if unknown:
        raise ValueError(f"unknown sample category {unknown[0]!r} (have: {', '.join(sources)})")
    originals = {name: _original(sources[name]) for name in sources}
    for name in names:
        stream = list(sources).index(name)
        n_test = n_test_good + n_per_defect * len(DEFECTS)
        train, test = _normals(
            originals[name], sources[name]["kind"], n_train, n_test, size, spec["split"], (seed, stream)
        )
        base = root / name
        for i, normal in enumerate(train):
            _write(base / "train" / "good" / f"{i:03d}.png", normal.image)
        for i, normal in enumerate(test[:n_test_good]):
            _write(base / "test" / "good" / f"{i:03d}.png", normal.image)
        foreigners = [originals[o] for o in sources if o != name and sources[o]["kind"] == "texture"]
        bases = iter(test[n_test_good:])
        for d, (defect, make) in enumerate(DEFECTS.items()):
            for i in range(n_per_defect):
                rng = np.random.default_rng([seed, stream, 2, d, i])
                other = foreigners[int(rng.integers(len(foreigners)))]
                foreign = _texture_normals(other, 1, size, "test", spec["split"], rng)[0].image
                image, mask = _defective(next(bases), defect, make, spec["defects"], rng, foreign)
                _write(base / "test" / defect / f"{i:03d}.png", image)
                _write(base / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
        log.info("sample-data: %s: %d train, %d test", name, len(train), n_test)
    (root / "README.txt").write_text(_readme(sources, names))
    return root


def _normals(
    image: np.ndarray,
    kind: str,
    n_train: int,
    n_test: int,
    size: int,
    split: dict[str, Any],
    key: tuple[int, int],
) -> tuple[list[Normal], list[Normal]]:
    """Train and test normals of one category, from disjoint parts of its original."""
    train_rng, test_rng = (np.random.default_rng([*key, part]) for part in (0, 1))
    if kind == "object":
        objects = _find_objects(image, split)
        train_ids, test_ids = _split_objects(len(objects), split["object_train_share"], key)
        return (
            _object_normals(image, [objects[i] for i in train_ids], n_train, size, split, train_rng),
            _object_normals(image, [objects[i] for i in test_ids], n_test, size, split, test_rng),
        )
    return (
        _texture_normals(image, n_train, size, "train", split, train_rng),
        _texture_normals(image, n_test, size, "test", split, test_rng),
    )


def _split_objects(n: int, train_share: float, key: tuple[int, int]) -> tuple[list[int], list[int]]:
    """Disjoint train and test object indices (a seeded shuffle), so no object is in both splits."""
    order = [int(i) for i in np.random.default_rng([*key, 3]).permutation(n)]
    k = min(max(round(train_share * n), 1), n - 1)
    return order[:k], order[k:]


def _defective(
    normal: Normal,
    defect: str,
    make: DefectFn,
    params: dict[str, Any],
    rng: np.random.Generator,
    foreign: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a defect until it is big and visible enough (``accept`` limits); warn if none was."""
    limits = params["accept"]
    for _ in range(limits["attempts"]):
        image, mask = make(normal.image, normal.region, rng, foreign, params[defect])
        if acceptable(normal.image, image, mask, limits):
            return image, mask
    log.warning("sample-data: no %s met the size/contrast limits in %d tries", defect, limits["attempts"])
    return image, mask


def _original(spec: dict) -> np.ndarray:
    """The scikit-image original, tinted to RGB."""
    path = importlib.resources.files("skimage.data").joinpath(spec["file"])
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise FileNotFoundError(f"scikit-image sample image not found: {path}")
    rgb = gray.astype(np.float32)[:, :, None] * np.asarray(spec["tint"], np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _texture_normals(
    image: np.ndarray, n: int, size: int, part: str, split: dict[str, Any], rng: np.random.Generator
) -> list[Normal]:
    """``n`` crops from the train (top) or test (bottom) rows of a texture, spread over them."""
    h, w = image.shape[:2]
    cut = round(split["texture_train_rows"] * h)
    rows = (0, cut) if part == "train" else (cut, h)
    normals = []
    for (y, x, side), turn in _spread_crops(n, rows, w, split, rng):
        (crop,) = _orient([image[y : y + side, x : x + side]], turn)
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        normals.append(Normal(_gain(crop, rng), np.ones((size, size), bool)))
    return normals


def _spread_crops(
    n: int, rows: tuple[int, int], width: int, split: dict[str, Any], rng: np.random.Generator
) -> list[tuple[tuple[int, int, int], int]]:
    """Square boxes (y, x, side) inside the rows with an orientation (0-7) each.

    Each box is the least overlapping of a few candidates, and takes the orientation that the
    boxes it overlaps use least, so overlapping crops of a small original still look different.
    """
    top, bottom = rows
    crops: list[tuple[tuple[int, int, int], int]] = []
    for _ in range(n):
        candidates = []
        for _ in range(split["candidates"]):
            side = min(int(rng.uniform(*split["crop_side"]) * width), bottom - top, width)
            y, x = int(rng.integers(top, bottom - side + 1)), int(rng.integers(0, width - side + 1))
            candidates.append((y, x, side))
        box = min(candidates, key=lambda b: max((_iou(b, o) for o, _ in crops), default=0.0))
        used = np.zeros(8)
        for other, turn in crops:
            used[turn] += _iou(box, other)
        least = np.flatnonzero(used <= used.min() + 1e-9)
        crops.append((box, int(rng.choice(least))))
    return crops


def _iou(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    dy = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    dx = max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    inter = dy * dx
    return inter / (a[2] ** 2 + b[2] ** 2 - inter)


def _find_objects(image: np.ndarray, split: dict[str, Any]) -> list[_Object]:
    """The coins: top-hat (uneven lighting), Otsu, filled and convex-hulled components, in image order."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    background = cv2.morphologyEx(
        gray, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (91, 91))
    )
    lifted = cv2.GaussianBlur(cv2.subtract(gray, background), (5, 5), 0)
    _, fg = cv2.threshold(lifted, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    fg = ndimage.binary_fill_holes(fg > 0).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg)
    lo, hi = split["object_area_px"]
    objects = []
    for i in range(1, count):
        if not lo < stats[i, cv2.CC_STAT_AREA] < hi:
            continue
        contours, _ = cv2.findContours(
            (labels == i).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        hull = cv2.convexHull(np.vstack(contours))
        mask = np.zeros(gray.shape, np.uint8)
        cv2.fillPoly(mask, [hull], 1)
        x, y, w, h = cv2.boundingRect(hull)
        objects.append(_Object((x + w // 2, y + h // 2), int(split["object_crop"] * max(w, h)), mask))
    if not objects:
        raise ValueError("no objects found in the object category's original")
    return objects


def _object_normals(
    image: np.ndarray,
    objects: list[_Object],
    n: int,
    size: int,
    split: dict[str, Any],
    rng: np.random.Generator,
) -> list[Normal]:
    """``n`` views of the objects, each centred; an object shown again is turned a fresh way."""
    uses = -(-n // len(objects))
    bases = rng.uniform(0, 360, len(objects))
    views = []
    for j in range(n):
        i, turn = j % len(objects), j // len(objects)
        angle = bases[i] + 360.0 * turn / uses + rng.uniform(-15, 15)
        views.append(_object_view(image, objects[i], angle, size, split["object_inset"], rng))
    return [views[int(i)] for i in rng.permutation(n)]


def _object_view(
    image: np.ndarray, obj: _Object, angle: float, size: int, inset: float, rng: np.random.Generator
) -> Normal:
    """One object centred in a square crop, rotated; its outline, inset a little, is the defect region."""
    pad, half = obj.half + 1, obj.half
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    outline = cv2.copyMakeBorder(obj.mask, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    cx, cy = obj.centre[0] + pad, obj.centre[1] + pad
    window = (slice(cy - half, cy + half), slice(cx - half, cx + half))
    rot = cv2.getRotationMatrix2D((half, half), float(angle), 1.0)
    crop = cv2.warpAffine(padded[window], rot, (2 * half, 2 * half), borderMode=cv2.BORDER_REFLECT)
    region = cv2.warpAffine(outline[window], rot, (2 * half, 2 * half), flags=cv2.INTER_NEAREST)
    crop, region = _orient([crop, region], int(rng.integers(8)))
    crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
    region = cv2.resize(region.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR) > 0.5
    inset = max(1, round(inset * size))
    region = cv2.erode(region.astype(np.uint8), np.ones((2 * inset + 1,) * 2, np.uint8)) > 0
    return Normal(_gain(crop, rng), region)


def _orient(arrays: list[np.ndarray], turn: int) -> list[np.ndarray]:
    """The same one of the 8 rot90 / flip orientations applied to every array (an image, its region)."""
    out = [np.rot90(a, turn % 4) for a in arrays]
    return [np.ascontiguousarray(a[:, ::-1] if turn >= 4 else a) for a in out]


def _gain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(image.astype(np.float32) * rng.uniform(0.93, 1.07), 0, 255).astype(np.uint8)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), data):
        raise OSError(f"could not write {path}")


def _readme(sources: dict[str, dict], names: Sequence[str]) -> str:
    lines = [
        "Sample dataset written by `python -m pipeline sample-data` (MVTec-AD layout).",
        "Normals are crops of images that ship with scikit-image (train and test from disjoint parts);",
        "test defects are drawn by synth/defects.py (scratch, hole, stain, foreign patch), not by the",
        "training synthesis.",
        "",
    ]
    lines += [f"{n}: skimage/data/{sources[n]['file']}: {sources[n]['licence']}" for n in names]
    return "\n".join(lines) + "\n"
