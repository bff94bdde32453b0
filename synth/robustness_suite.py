"""The robustness suite: datasets unlike the demo, on which quality choices are made and checked.

Each dataset is written in MVTec-AD layout (train/good, test/good, test/<kind>, ground_truth/<kind>)
from images that installed packages ship, so it is built offline and bit-identically anywhere.
Sources, crop scales, how much the normals vary, and the defect generators are in
synth/data/robustness_suite.yaml; the generators here are of other kinds than both the training
synthesis and the demo's test defects (blurred, shifted, cracked, misplaced and speckled regions).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

SPEC_FILE = "robustness_suite.yaml"
MIN_VISIBLE_CHANGE = 12.0
"""Mean absolute change (0-255, over the mask) a drawn defect must reach to be kept."""
ATTEMPTS = 20

Defect = Callable[[np.ndarray, np.random.Generator, dict[str, Any], float], tuple[np.ndarray, np.ndarray]]


def suite_spec() -> dict[str, Any]:
    """The whole suite spec (see the YAML file's comments)."""
    return yaml.safe_load(importlib.resources.files("synth.data").joinpath(SPEC_FILE).read_text())


def dataset_names(role: str | None = None) -> list[str]:
    """The suite's datasets in file order; ``role`` (validation or test) keeps those of that role."""
    datasets = suite_spec()["datasets"]
    return [name for name, d in datasets.items() if role is None or d["role"] == role]


def write_suite_dataset(root: str | Path, name: str, seed_offset: int = 0) -> Path:
    """Write dataset ``name`` under ``root`` (``root/<category>/...``); returns root.
    ``seed_offset`` gives another draw of the same dataset (another seed)."""
    spec = suite_spec()
    if name not in spec["datasets"]:
        raise ValueError(f"unknown suite dataset {name!r} (have: {', '.join(spec['datasets'])})")
    data = spec["datasets"][name]
    root = Path(root)
    size = spec["size"]
    for stream, category in enumerate(data["categories"]):
        source = spec["sources"][category]
        original = _original(source["file"])
        part = _box(original, source["box"])
        key = (data["seed"] + seed_offset, stream)
        train = _crops(part, "train", spec["n_train"], size, data, np.random.default_rng([*key, 0]))
        n_test = spec["n_test_good"] + spec["n_per_kind"] * len(data["kinds"])
        test = _crops(part, "test", n_test, size, data, np.random.default_rng([*key, 1]))
        base = root / category
        for i, image in enumerate(train):
            _write(base / "train" / "good" / f"{i:03d}.png", image)
        for i, image in enumerate(test[: spec["n_test_good"]]):
            _write(base / "test" / "good" / f"{i:03d}.png", image)
        bases = iter(test[spec["n_test_good"] :])
        for d, kind in enumerate(data["kinds"]):
            for i in range(spec["n_per_kind"]):
                rng = np.random.default_rng([*key, 2, d, i])
                image, mask = _defective(next(bases), kind, spec["defects"][kind], data["defect_scale"], rng)
                _write(base / "test" / kind / f"{i:03d}.png", image)
                _write(base / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    (root / "README.txt").write_text(
        f"Robustness suite dataset {name!r} ({data['role']}), seed {data['seed'] + seed_offset}: "
        f"made by synth/robustness_suite.py from images that scikit-image and scikit-learn ship.\n"
    )
    return root


def suite_dataset(root: str | Path, name: str, seed_offset: int = 0) -> Path:
    """The folder of dataset ``name``'s draw ``seed_offset`` under ``root``, written on first use:
    ``root/<name>`` for draw 0, ``root/<name>-draw<k>`` for draw k, so draws never share a folder."""
    folder = Path(root) / (name if seed_offset == 0 else f"{name}-draw{seed_offset}")
    if not folder.is_dir():
        write_suite_dataset(folder, name, seed_offset)
    return folder


# --- normals -------------------------------------------------------------------------------
def _original(file: str) -> np.ndarray:
    """``package:file`` as RGB uint8 (grey sources become three equal channels)."""
    package, name = file.split(":", 1)
    path = importlib.resources.files(package).joinpath(name)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"suite source image not found: {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _box(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    return image[round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)]


def _crops(
    part: np.ndarray, split: str, n: int, size: int, data: dict[str, Any], rng: np.random.Generator
) -> list[np.ndarray]:
    """``n`` square crops from the top (train) or bottom (test) half of ``part``, each turned one of
    the 8 square symmetries and, with ``jitter``, given its own brightness and contrast."""
    h, w = part.shape[:2]
    rows = (0, h // 2) if split == "train" else (h // 2, h)
    out = []
    for _ in range(n):
        side = min(max(8, int(rng.uniform(*data["crop_side"]) * w)), rows[1] - rows[0], w)
        y = int(rng.integers(rows[0], rows[1] - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = np.rot90(part[y : y + side, x : x + side], int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)
        if data["jitter"] > 0:
            gain = 1.0 + rng.uniform(-data["jitter"], data["jitter"])
            offset = 255.0 * rng.uniform(-data["jitter"], data["jitter"]) / 2
            crop = np.clip(crop.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
        out.append(crop)
    return out


# --- defects -------------------------------------------------------------------------------
def _defective(
    image: np.ndarray, kind: str, params: dict[str, Any], scale: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a ``kind`` defect until it changes the image visibly (the last try otherwise)."""
    make = DEFECTS[kind]
    for _ in range(ATTEMPTS):
        out, mask = make(image, rng, params, scale)
        inside = mask > 0
        if (
            inside.any()
            and float(np.abs(out.astype(np.float32) - image)[inside].mean()) >= MIN_VISIBLE_CHANGE
        ):
            break
    return out, mask


def _ellipse(shape: tuple[int, ...], rng: np.random.Generator, radius: float) -> np.ndarray:
    """A filled random ellipse (0/255) of about ``radius`` pixels, fully inside the image."""
    h, w = shape[:2]
    axes = (max(2, round(radius * rng.uniform(0.7, 1.3))), max(2, round(radius * rng.uniform(0.5, 1.0))))
    margin = max(axes) + 1
    centre = (int(rng.integers(margin, w - margin)), int(rng.integers(margin, h - margin)))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    return mask


def _radius(image: np.ndarray, params: dict[str, Any], scale: float, rng: np.random.Generator) -> float:
    return float(rng.uniform(*params["radius"])) * scale * min(image.shape[:2])


def blur(image, rng, params, scale):
    """The texture inside an ellipse washed out by a strong blur."""
    mask = _ellipse(image.shape, rng, _radius(image, params, scale, rng))
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=6.0)
    return np.where(mask[..., None] > 0, blurred, image), mask


def shift(image, rng, params, scale):
    """An ellipse made brighter or darker, or (half the time) recoloured towards one channel."""
    mask = _ellipse(image.shape, rng, _radius(image, params, scale, rng))
    amount = float(rng.uniform(*params["amount"])) * rng.choice([-1.0, 1.0])
    delta = np.full(3, amount, np.float32)
    if rng.random() < 0.5:
        delta = np.zeros(3, np.float32)
        delta[int(rng.integers(3))] = abs(amount)
    out = image.astype(np.float32) + np.where(mask[..., None] > 0, delta, 0.0)
    return np.clip(out, 0, 255).astype(np.uint8), mask


def crack(image, rng, params, scale):
    """A jagged dark line: a random walk with sharp turns."""
    h, w = image.shape[:2]
    length = float(rng.uniform(*params["length"])) * scale * min(h, w)
    steps = 12
    point = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
    heading = rng.uniform(0, 2 * np.pi)
    mask = np.zeros((h, w), np.uint8)
    width = int(rng.integers(params["width"][0], params["width"][1] + 1))
    for _ in range(steps):
        heading += rng.normal(0, 0.6)
        nxt = np.clip(
            point + length / steps * np.array([np.cos(heading), np.sin(heading)]), 0, [w - 1, h - 1]
        )
        cv2.line(mask, tuple(int(v) for v in point), tuple(int(v) for v in nxt), 255, width)
        point = nxt
    out = np.where(mask[..., None] > 0, (image.astype(np.float32) * 0.25).astype(np.uint8), image)
    return out, mask


def misplaced(image, rng, params, scale):
    """A disc of the same material from elsewhere in the image, turned a quarter: right material,
    wrong structure (no colour or brightness change a pixel statistic would see)."""
    h, w = image.shape[:2]
    mask = _ellipse(image.shape, rng, _radius(image, params, scale, rng))
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0)
    sy, sx = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    patch = np.rot90(image[sy : sy + side, sx : sx + side], int(rng.integers(1, 4)))
    source = image.copy()
    source[y0:y1, x0:x1] = patch[: y1 - y0, : x1 - x0]
    out = np.where(mask[..., None] > 0, source, image)
    changed = (np.abs(out.astype(np.int16) - image).max(axis=2) > 0) & (mask > 0)
    return out, (changed * 255).astype(np.uint8)


def specks(image, rng, params, scale):
    """A cluster of small dots, each dark or bright against the surface."""
    h, w = image.shape[:2]
    side = min(h, w)
    centre = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
    mask = np.zeros((h, w), np.uint8)
    out = image.copy()
    bright = float(image.mean()) < 128
    for _ in range(int(rng.integers(params["count"][0], params["count"][1] + 1))):
        at = centre + rng.normal(0, params["spread"] * side, 2)
        at = (int(np.clip(at[0], 0, w - 1)), int(np.clip(at[1], 0, h - 1)))
        r = max(1, round(float(rng.uniform(*params["radius"])) * scale * side))
        cv2.circle(mask, at, r, 255, -1)
    out[mask > 0] = 235 if bright else 20
    return out, mask


DEFECTS: dict[str, Defect] = {
    "blur": blur,
    "shift": shift,
    "crack": crack,
    "misplaced": misplaced,
    "specks": specks,
}


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")
