"""A small real dataset in MVTec-AD layout, made from images that scikit-image ships.

Normals are random crops (texture categories) or single coins (the object category) of the
scikit-image originals; test defects come from :mod:`synth.defects`, a generator unrelated to the
training synthesis. Nothing is downloaded. Sources and licences: synth/data/sample_sources.yaml.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml

from synth.defects import DEFECTS

log = logging.getLogger(__name__)

SOURCES_FILE = "sample_sources.yaml"


def sample_sources() -> dict[str, dict]:
    text = importlib.resources.files("synth.data").joinpath(SOURCES_FILE).read_text()
    return yaml.safe_load(text)


def write_sample_dataset(
    root: str | Path,
    seed: int = 0,
    size: int = 256,
    n_train: int = 14,
    n_test_good: int = 5,
    n_per_defect: int = 2,
    categories: Sequence[str] = (),
) -> Path:
    """Write ``root/<category>/{train/good,test/good,test/<defect>,ground_truth/<defect>}``; returns root.

    Defaults give 4 categories x (14 train + 5 test good + 8 defective) at 256 px, the demo's data.
    """
    root = Path(root)
    sources = sample_sources()
    names = list(categories) or list(sources)
    unknown = [c for c in names if c not in sources]
    if unknown:
        raise ValueError(f"unknown sample category {unknown[0]!r} (have: {', '.join(sources)})")
    originals = {name: _original(sources[name]) for name in sources}
    for ci, name in enumerate(names):
        rng = np.random.default_rng([seed, ci])
        n_total = n_train + n_test_good + n_per_defect * len(DEFECTS)
        if sources[name]["kind"] == "object":
            normals = _object_crops(originals[name], n_total, size, rng)
        else:
            normals = _texture_crops(originals[name], n_total, size, rng)
        base = root / name
        for i in range(n_train):
            _write(base / "train" / "good" / f"{i:03d}.png", normals[i])
        for i in range(n_test_good):
            _write(base / "test" / "good" / f"{i:03d}.png", normals[n_train + i])
        k = n_train + n_test_good
        others = [o for o in sources if o != name and sources[o]["kind"] == "texture"]
        for defect, make in DEFECTS.items():
            for i in range(n_per_defect):
                other = originals[others[int(rng.integers(len(others)))]]
                foreign = _texture_crops(other, 1, size, rng)[0]
                image, mask = make(normals[k], rng, foreign)
                k += 1
                _write(base / "test" / defect / f"{i:03d}.png", image)
                _write(base / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
        log.info("sample-data: %s: %d train, %d test", name, n_train, k - n_train)
    (root / "README.txt").write_text(_readme(sources, names))
    return root


def _original(spec: dict) -> np.ndarray:
    """The scikit-image original, tinted to RGB."""
    path = importlib.resources.files("skimage.data").joinpath(spec["file"])
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise FileNotFoundError(f"scikit-image sample image not found: {path}")
    rgb = gray.astype(np.float32)[:, :, None] * np.asarray(spec["tint"], np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = np.rot90(img, int(rng.integers(4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    gain = rng.uniform(0.93, 1.07)
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def _texture_crops(image: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = image.shape[:2]
    crops = []
    for _ in range(n):
        side = int(rng.uniform(0.4, 0.6) * min(h, w))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = _augment(image[y : y + side, x : x + side], rng)
        crops.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
    return crops


def _object_crops(image: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One coin per image, centred, at a random rotation, on its own background."""
    gray = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (5, 5), 0)
    _, fg = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    count, _, stats, centres = cv2.connectedComponentsWithStats(fg)
    objects = [i for i in range(1, count) if 600 < stats[i, cv2.CC_STAT_AREA] < 5000]
    padded = cv2.copyMakeBorder(image, 64, 64, 64, 64, cv2.BORDER_REFLECT)
    order = rng.permutation(np.resize(np.arange(len(objects)), n))
    crops = []
    for j in order:
        i = objects[int(j)]
        half = int(0.8 * max(stats[i, cv2.CC_STAT_WIDTH], stats[i, cv2.CC_STAT_HEIGHT]))
        cx, cy = (int(v) + 64 for v in centres[i])
        crop = padded[cy - half : cy + half, cx - half : cx + half]
        rot = cv2.getRotationMatrix2D((half, half), float(rng.uniform(0, 360)), 1.0)
        crop = cv2.warpAffine(crop, rot, (2 * half, 2 * half), borderMode=cv2.BORDER_REFLECT)
        crops.append(cv2.resize(_augment(crop, rng), (size, size), interpolation=cv2.INTER_CUBIC))
    return crops


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), data):
        raise OSError(f"could not write {path}")


def _readme(sources: dict[str, dict], names: Sequence[str]) -> str:
    lines = [
        "Sample dataset written by `python -m pipeline sample-data` (MVTec-AD layout).",
        "Normals are crops of images that ship with scikit-image; test defects are drawn by",
        "synth/defects.py (scratch, hole, stain, foreign patch), not by the training synthesis.",
        "",
    ]
    lines += [f"{n}: skimage/data/{sources[n]['file']}: {sources[n]['licence']}" for n in names]
    return "\n".join(lines) + "\n"
