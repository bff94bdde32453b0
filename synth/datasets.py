"""Dataset readers (MVTec-AD, VisA, plain folders) yielding one typed record, and image loading.

Every reader returns the same :class:`ImageRecord`, so later stages never look at a layout again.
A file whose header cannot be read is skipped with a warning and appended to ``skipped`` (the synth
stage lists it in its manifest); a missing root, a root with no images in the given layout (the
error says which layout the folder looks like instead), a category with no readable images or a mask
whose size differs from its image is an error that names the path.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from pipeline.core.errors import InputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Split = Literal["train", "test", "all"]
LAYOUTS = {
    "mvtec": "<root>/<category>/train/good/*.png, test images in <root>/<category>/test/<defect>/",
    "visa": "<root>/split_csv/1cls.csv listing the images",
    "folder": "<root>/<category>/*.png",
}
"""What each ``--format`` reads, as error messages show it."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, whatever its layout."""

    path: Path
    relpath: str
    """Path relative to the dataset root, POSIX style (written into shards as ``source``)."""
    category: str
    split: str
    """``train`` or ``test``."""
    label: int
    """0 normal, 1 anomalous."""
    defect: str
    """``good`` for normal images, else the defect type (VisA: ``anomaly``)."""
    mask_path: Path | None = None


@dataclass(frozen=True)
class Skipped:
    """A file left out, and why (listed in the synth manifest)."""

    path: str
    reason: str


class DatasetError(InputError):
    """A dataset that cannot be read as the given layout (exit 2 from the CLI)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A missing dataset root or VisA split file (a FileNotFoundError too, for callers catching that)."""


def read_dataset(
    root: str | Path,
    fmt: Literal["mvtec", "visa", "folder"] = "mvtec",
    split: Split = "train",
    categories: Sequence[str] = (),
    skipped: list[Skipped] | None = None,
) -> list[ImageRecord]:
    """Records of ``split`` sorted by (category, relpath); unreadable files are added to ``skipped``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset root not found: {root}")
    readers = {"mvtec": _read_mvtec, "visa": _read_visa, "folder": _read_folder}
    if fmt not in readers:
        raise DatasetError(f"unknown dataset format {fmt!r} (use one of {sorted(readers)})")
    if fmt == "visa" and not (root / "split_csv" / "1cls.csv").is_file():
        raise _layout_error(root, fmt, split, DatasetNotFoundError)
    found = readers[fmt](root, split)
    if not found and fmt not in looks_like(root):
        raise _layout_error(root, fmt, split)
    available = sorted({r.category for r in found} | _category_dirs(root, fmt))
    wanted = list(categories) or available
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DatasetError(f"{root}: no category {missing[0]!r} (found: {', '.join(available) or 'none'})")
    sink = skipped if skipped is not None else []
    records = []
    for category in wanted:
        candidates = [r for r in found if r.category == category]
        bad: list[Skipped] = []
        good = [r for r in candidates if _check(r, root, bad)]
        sink.extend(bad)
        if not good:
            where = root / category if fmt != "visa" else root / "split_csv" / "1cls.csv"
            raise DatasetError(f"{where}: category {category!r} has no readable {split} images{_why(bad)}")
        records.extend(good)
    return sorted(records, key=lambda r: (r.category, r.relpath))


def looks_like(root: Path) -> list[str]:
    """The known layouts whose images ``root`` holds: for the hint when the given one finds nothing."""
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    kinds = []
    if any(image_files(p / "train" / "good") or _test_images(p) for p in subdirs):
        kinds.append("mvtec")
    if (root / "split_csv" / "1cls.csv").is_file():
        kinds.append("visa")
    if any(image_files(p) for p in subdirs):
        kinds.append("folder")
    return kinds


def _layout_error(root: Path, fmt: str, split: str, kind: type[DatasetError] = DatasetError) -> DatasetError:
    """Nothing found as ``fmt``: say what that layout is and which one the folder looks like instead."""
    others = [k for k in looks_like(root) if k != fmt]
    message = f"{root}: no {split} images in the {fmt} layout (--format {fmt} reads {LAYOUTS[fmt]})"
    if others:
        hint = "; ".join(f"it looks like the {k} layout ({LAYOUTS[k]}): pass --format {k}" for k in others)
    elif image_files(root):
        hint = (
            f"the images lie directly in {root}: put them in one folder per category "
            f"({LAYOUTS['folder']}) and pass --format folder"
        )
    else:
        known = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items() if k != fmt)
        hint = f"it matches none of the other layouts either ({known})"
    return kind(f"{message}; {hint}")


def _why(bad: list[Skipped]) -> str:
    """' (N unreadable files, e.g. ...)' for an error message, or '' when there were none."""
    if not bad:
        return " (no image files)"
    return f" ({len(bad)} unreadable file{'s' if len(bad) != 1 else ''}, e.g. {bad[0].path}: {bad[0].reason})"


def load_rgb(path: str | Path) -> np.ndarray:
    """Any image file as uint8 HxWx3 RGB (gray, RGBA, palette, 16-bit and float images included)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            # 16-bit: full range is 65535. "I"/"F" holding 8-bit values stay as they are; floats in
            # [0, 1] are scaled up. No per-image stretching, so dark images stay dark.
            if im.mode.startswith("I;16") or (im.mode == "I" and arr.max() > 255):
                arr = arr / 65535.0 * 255.0
            elif im.mode == "F" and arr.max() <= 1.0:
                arr = arr * 255.0
            gray = np.clip(np.round(arr), 0, 255).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")  # drop alpha by compositing on black, like most viewers' export
            rgba = np.asarray(im, dtype=np.float32)
            rgb = rgba[:, :, :3] * (rgba[:, :, 3:4] / 255.0)
            return np.round(rgb).astype(np.uint8)
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_mask(path: str | Path) -> np.ndarray:
    """A mask file as uint8 HxW in {0, 255}: 0/1 masks (VisA) and 0/255 masks (MVTec) both binarised."""
    with Image.open(path) as im:
        im.load()
        arr = np.asarray(im.convert("L") if im.mode not in ("L", "1", "P") else im)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    cut = 127 if arr.max() > 1 else 0
    return np.where(arr > cut, 255, 0).astype(np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only."""
    with Image.open(path) as im:
        return im.size


def _check(record: ImageRecord, root: Path, skipped: list[Skipped]) -> bool:
    """Header check of the image (and its mask size); unreadable images are skipped, bad masks are errors."""
    try:
        size = image_size(record.path)
    except Exception as exc:  # PIL raises many types for broken files
        reason = f"unreadable image: {type(exc).__name__}: {exc}"
        log.warning("skipping %s (%s)", record.path, reason)
        skipped.append(Skipped(record.relpath, reason))
        return False
    if record.mask_path is not None:
        try:
            mask_size = image_size(record.mask_path)
        except Exception as exc:
            raise DatasetError(f"{record.mask_path}: unreadable mask: {exc}") from exc
        if mask_size != size:
            raise DatasetError(
                f"{record.mask_path}: mask size {mask_size[0]}x{mask_size[1]} differs from image "
                f"{record.path} size {size[0]}x{size[1]}"
            )
    return True


def image_files(folder: Path) -> list[Path]:
    """The image files (IMAGE_EXTENSIONS, any case) directly in ``folder``, sorted; [] without it."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def apart_from(paths: Sequence[Path], others: Sequence[Path]) -> list[Path]:
    """``paths`` less those that are, once links are followed, one of ``others``: a folder that
    links another's images in (``retrain --feedback``'s merged data) holds them only once."""
    if not others:  # nothing to leave out: no path resolved (serve lists its folders per request)
        return list(paths)
    taken = {Path(p).resolve() for p in others}
    return [p for p in paths if Path(p).resolve() not in taken]


def _test_images(category_dir: Path) -> bool:
    test = category_dir / "test"
    return test.is_dir() and any(image_files(d) for d in test.iterdir() if d.is_dir())


def _category_dirs(root: Path, fmt: str) -> set[str]:
    if fmt == "mvtec":
        return {p.name for p in root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir()}
    if fmt == "folder":
        return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return set()


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_mvtec(root: Path, split: Split) -> list[ImageRecord]:
    records = []
    for category in sorted(_category_dirs(root, "mvtec")):
        base = root / category
        if split in ("train", "all"):
            for p in image_files(base / "train" / "good"):
                records.append(ImageRecord(p, _rel(p, root), category, "train", 0, "good"))
        if split in ("test", "all") and (base / "test").is_dir():
            for defect_dir in sorted(d for d in (base / "test").iterdir() if d.is_dir()):
                defect = defect_dir.name
                for p in image_files(defect_dir):
                    mask = None
                    if defect != "good":
                        candidate = base / "ground_truth" / defect / f"{p.stem}_mask.png"
                        mask = candidate if candidate.is_file() else None
                    label = 0 if defect == "good" else 1
                    records.append(ImageRecord(p, _rel(p, root), category, "test", label, defect, mask))
    return records


def _read_visa(root: Path, split: Split) -> list[ImageRecord]:
    table = root / "split_csv" / "1cls.csv"
    if not table.is_file():
        raise FileNotFoundError(f"VisA split file not found: {table}")
    records = []
    with table.open(newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"object", "split", "label", "image"}
        if not need <= set(reader.fieldnames or ()):
            raise DatasetError(f"{table}: needs columns {sorted(need)} (+ mask), got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if split != "all" and row["split"] != split:
                continue
            label = {"normal": 0, "anomaly": 1}.get(row["label"])
            if label is None:
                raise DatasetError(f"{table}:{line}: label must be normal or anomaly, got {row['label']!r}")
            path = root / row["image"]
            mask_rel = (row.get("mask") or "").strip()
            mask = root / mask_rel if mask_rel and label == 1 else None
            if mask is not None and not mask.is_file():
                raise DatasetError(f"{table}:{line}: mask file not found: {mask}")
            if not path.is_file():
                raise DatasetError(f"{table}:{line}: image file not found: {path}")
            defect = "good" if label == 0 else "anomaly"
            records.append(ImageRecord(path, row["image"], row["object"], row["split"], label, defect, mask))
    return records


def _read_folder(root: Path, split: Split) -> list[ImageRecord]:
    if split == "test":
        return []
    records = []
    for category in sorted(_category_dirs(root, "folder")):
        for p in image_files(root / category):
            records.append(ImageRecord(p, _rel(p, root), category, "train", 0, "good"))
    return records
