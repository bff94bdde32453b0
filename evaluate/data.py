"""What gets evaluated: per category, the test images, their masks and the k-shot references.

Everything that can be wrong with the input is found here, on the driver, before any actor starts:
an anomalous image without its mask (an error naming it, unless allowed), files that cannot be read
(listed and counted), a model and data with no category in common.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from evaluate.config import EvaluateConfig
from pipeline.core.errors import InputError
from synth.datasets import Skipped, apart_from, image_files, load_mask, load_rgb, read_dataset
from synth.text import position_word, region_positions

log = logging.getLogger(__name__)


class EvaluationDataError(InputError):
    """Evaluation data that cannot be scored as asked."""


@dataclass(frozen=True)
class EvalItem:
    """One test image as the actors see it (plain strings: it travels through Ray)."""

    relpath: str
    path: str
    category: str
    label: int
    defect: str
    mask_path: str | None
    """None for normal images, and for anomalous ones left out of the pixel metrics."""
    in_pixel_metrics: bool
    """Normal images and anomalous ones with a mask, in a category that has masks."""


@dataclass
class CategoryTestSet:
    """One category's test images and the normal train images of its memory bank: what the actors score."""

    category: str
    items: list[EvalItem]
    references: list[str] = field(default_factory=list)
    """Relative paths of the k-shot references (train split), in bank order."""
    reference_paths: list[str] = field(default_factory=list)
    cover_paths: list[str] = field(default_factory=list)
    """The feedback folder's confirmed normals of the category (``EvaluateConfig.feedback``): in the
    bank, not in its calibration."""
    pixel_metrics: bool = True
    """False when the category has no masks at all (image metrics only)."""
    missing_masks: list[str] = field(default_factory=list)
    """Anomalous images left out of the pixel metrics (allow_missing_masks)."""
    seen_in_training: bool | None = None
    n_unreadable: int = 0
    """Test files of this category the reader could not open (listed in EvaluationSet.unreadable)."""


@dataclass
class EvaluationSet:
    """Every category to evaluate, read and checked on the driver, and the files that could not be read."""

    categories: list[CategoryTestSet]
    unreadable: list[dict[str, str]]
    """Files the readers could not open: {"path", "split", "reason"}; never silently dropped."""


def trained_categories(checkpoint: Path) -> list[str] | None:
    """Categories the model was trained on, from ``train_summary.json`` beside the weights when it
    records them; None when unknown (then no overlap check is possible)."""
    summary = checkpoint / "train_summary.json"
    if not summary.is_file():
        return None
    names = json.loads(summary.read_text()).get("categories")
    return sorted(names) if isinstance(names, list) else None


def read_evaluation_set(
    root: str | Path, cfg: EvaluateConfig, known: list[str] | None = None
) -> EvaluationSet:
    """Read the test split (and train split for references) and check it against ``cfg``."""
    skipped: list[Skipped] = []
    records = read_dataset(root, cfg.format, split="test", categories=cfg.categories, skipped=skipped)
    unreadable = [{"path": s.path, "split": "test", "reason": s.reason} for s in skipped]
    categories = sorted({r.category for r in records})
    if known is not None and not cfg.uses_bank and not set(known) & set(categories):
        raise EvaluationDataError(
            f"the model was trained on {known} and {root} has {categories}: no category in common "
            "(evaluate k-shot with --shots K for categories the model has not seen)"
        )
    test_sets = []
    for category in categories:
        test_sets.append(_category_test_set(category, [r for r in records if r.category == category], cfg))
        test_sets[-1].seen_in_training = None if known is None else category in known
        test_sets[-1].n_unreadable = sum(u["path"].startswith(f"{category}/") for u in unreadable)
    if cfg.feedback is not None and not Path(cfg.feedback).is_dir():
        raise EvaluationDataError(f"feedback folder {cfg.feedback} does not exist")
    if cfg.uses_bank:
        skipped = []
        train = _train_normals(root, cfg, categories, skipped)
        unreadable += [{"path": s.path, "split": "train", "reason": s.reason} for s in skipped]
        for test_set in test_sets:
            normals = [r for r in train if r.category == test_set.category and r.label == 0]
            if cfg.feedback is not None:  # the feedback folder's layout: <category>/train/good/
                confirmed = image_files(Path(cfg.feedback) / test_set.category / "train" / "good")
                test_set.cover_paths = [str(p) for p in confirmed]
                # a confirmed normal the train folder links in too (retrain --feedback) is cover only
                kept = set(apart_from([r.path for r in normals], confirmed))
                normals = [r for r in normals if r.path in kept]
            if cfg.shots == "all":
                if not normals:
                    log.info("evaluate: %s has no normal train images; decoder map only", test_set.category)
                test_set.references = [r.relpath for r in normals]
                test_set.reference_paths = [str(r.path) for r in normals]
                continue
            chosen = normals[cfg.reference_start : cfg.reference_start + cfg.shots]
            if len(chosen) < cfg.shots:
                raise EvaluationDataError(
                    f"{root}: category {test_set.category!r} has {len(normals)} readable normal "
                    f"train images; {cfg.shots}-shot from position {cfg.reference_start} needs "
                    f"{cfg.reference_start + cfg.shots}"
                )
            test_set.references = [r.relpath for r in chosen]
            test_set.reference_paths = [str(r.path) for r in chosen]
    return EvaluationSet(test_sets, unreadable)


def _train_normals(root, cfg: EvaluateConfig, categories: list[str], skipped: list) -> list:
    """The train split's records; none (not an error) for all-shot on data without a train split."""
    try:
        return read_dataset(root, cfg.format, split="train", categories=categories, skipped=skipped)
    except (FileNotFoundError, ValueError):
        if cfg.shots == "all":
            return []
        raise


def _category_test_set(category: str, records: list, cfg: EvaluateConfig) -> CategoryTestSet:
    anomalous = [r for r in records if r.label == 1]
    without = [r for r in anomalous if r.mask_path is None]
    pixel_metrics = not anomalous or len(without) < len(anomalous)
    if not pixel_metrics:
        log.info("evaluate: %s has no ground-truth masks; image metrics only", category)
        without = []
    elif without and not cfg.allow_missing_masks:
        raise EvaluationDataError(
            f"anomalous test image without its mask: {without[0].path} ({len(without)} in {category!r}); "
            "add the mask or pass --allow-missing-masks to leave such images out of the pixel metrics"
        )
    missing = {r.relpath for r in without}
    items = []
    for r in records:
        mask = str(r.mask_path) if r.mask_path and pixel_metrics and r.relpath not in missing else None
        pixel = pixel_metrics and (r.label == 0 or mask is not None)
        items.append(EvalItem(r.relpath, str(r.path), category, int(r.label), r.defect, mask, pixel))
    return CategoryTestSet(category, items, pixel_metrics=pixel_metrics, missing_masks=sorted(missing))


def load_image(path: str | Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3) RGB: squashed to a square with bicubic resampling, as training does."""
    from PIL import Image

    rgb = load_rgb(path)
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
    return rgb


def image_size(source: str | Path | BinaryIO) -> tuple[int, int]:
    """(width, height) of an image file as stored, from its header alone (nothing is decoded): the
    pixels region boxes are reported in, while the model sees the image squashed to a square."""
    from PIL import Image

    with Image.open(source) as header:
        return header.size


def load_ground_truth(path: str | Path | None, size: int, threshold: float) -> np.ndarray:
    """bool (size, size): the 0/255 mask resized bilinearly to [0, 1] and cut at ``threshold``
    (the reference: Resize((224, 224)) then > 0.1). No mask (a normal image): all False."""
    if path is None:
        return np.zeros((size, size), bool)
    from PIL import Image

    mask = load_mask(path)
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.BILINEAR))
    return mask.astype(np.float32) / 255.0 > threshold


MIN_REGION_PIXELS = 4
"""Ground-truth components smaller than this (at the evaluation size) are resize specks, not regions."""


def map_position(anomaly_map: np.ndarray) -> str:
    """Grid-cell word of the map's hottest pixel (the one that gives the image score), by the
    training text's rule: the cell an answer that followed the map would name."""
    row, col = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
    return position_word(row + 0.5, col + 0.5, *anomaly_map.shape)


def gt_positions(gt: np.ndarray) -> list[str]:
    """Grid-cell word of each ground-truth region: the 8-connected components of the mask at the
    evaluation size, named by their centroids with the training text's rule (synth.text), so the
    answers are checked against the words the model was taught. Specks under MIN_REGION_PIXELS are
    left out unless nothing else is there (then the largest component stands for the defect)."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(gt.astype(np.uint8), connectivity=8)
    areas = stats[1:n, cv2.CC_STAT_AREA]
    if not areas.size:
        return []
    keep = np.flatnonzero(areas >= MIN_REGION_PIXELS) + 1
    if not keep.size:
        keep = np.array([int(np.argmax(areas)) + 1])
    return region_positions([labels == k for k in keep])
