"""Normal images per category, from folders: the memory banks of ``serve --references-dir``,
``inspect`` and the feedback loop's confirmed normals.

Read once per category and folder content: a listing is compared at every call (a directory walk
and a stat per file), so an image that joins a folder (a confirmed false alarm) changes the bank
at the next request, in every replica, without a restart or a message between processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synth.datasets import apart_from, image_files

DEFAULT_CATEGORY = "object"
"""The category of an image whose path names none (the prompt's generic description)."""


def evenly_spaced(items: list, count: int) -> list:
    """``count`` of ``items`` spread over the whole list (first and last included), order kept."""
    if count <= 0:
        raise ValueError(f"count must be at least 1, got {count}")
    if len(items) <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def category_folder(image: str | Path) -> Path | None:
    """``<root>/<category>/(train|test)/<defect>/<file>`` -> ``<root>/<category>``; None elsewhere."""
    parts = Path(image).resolve().parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] in ("train", "test"):
            return Path(*parts[:i])
    return None


def guess_category(image: str | Path) -> str:
    """The category of an image in an MVTec-style tree; else ``object``."""
    folder = category_folder(image)
    return folder.name if folder is not None else DEFAULT_CATEGORY


def normal_images_beside(image: str | Path) -> list[Path]:
    """The normal training images of ``image``'s category in an MVTec-style tree
    (``<root>/<category>/train/good``), sorted, without ``image`` itself (it would match itself
    perfectly); [] elsewhere."""
    folder = category_folder(image)
    if folder is None:
        return []
    path = Path(image).resolve()
    return [p for p in image_files(folder / "train" / "good") if p.resolve() != path]


def category_images(root: Path, category: str) -> list[Path]:
    """``root/<category>/train/good/`` (the MVTec layout, so a dataset root works as is) or else
    ``root/<category>/`` with the images directly in it; sorted; [] when neither has images."""
    for folder in (root / category / "train" / "good", root / category):
        found = image_files(folder)
        if found:
            return found
    return []


NO_IMAGES_DIGEST = hashlib.sha256().hexdigest()[:16]
"""The digest of a category without references (the sha256 of no pixels)."""


class ReferenceFolders:
    """The normal images of each category in one or more roots.

    The first root is the user's references (at most ``max_count`` of them, evenly spaced in name
    order); later roots (a feedback folder's confirmed normals) are added whole, so a normal image a
    person confirmed is always in the bank. :meth:`split` tells the two apart: the references
    calibrate the bank, the confirmed normals are its cover (``Predictor.memory_bank``).
    """

    def __init__(self, roots: str | Path | Sequence[str | Path], max_count: int | None = None) -> None:
        if isinstance(roots, (str, Path)):
            roots = [roots]
        self.roots = [Path(r) for r in roots]
        if max_count is not None and max_count < 1:
            raise ValueError(f"max_count must be at least 1, got {max_count}")
        self.max_count = max_count
        self._images: dict[tuple[str, int], tuple[tuple, list[Any], str, int]] = {}
        """(category, size) -> (listing, images, digest, how many of them the first root's)."""

    def paths(self, category: str) -> list[Path]:
        """The category's normal images, the first root's first; none when no root has a folder for it."""
        return [path for found in self._paths_by_root(category) for path in found]

    def _paths_by_root(self, category: str) -> list[list[Path]]:
        """Per root its images; a confirmed normal the first root links in too (a dataset that
        ``retrain --feedback`` merged) is left to the later root, so it is cover, once."""
        by_root = [category_images(root, category) for root in self.roots]
        if by_root:
            by_root[0] = apart_from(by_root[0], [p for later in by_root[1:] for p in later])
            if self.max_count is not None:
                by_root[0] = evenly_spaced(by_root[0], self.max_count)
        return by_root

    def categories(self) -> list[str]:
        names = {p.name for root in self.roots if root.is_dir() for p in root.iterdir() if p.is_dir()}
        return sorted(name for name in names if self.paths(name))

    def images(self, category: str, size: int) -> list[Any]:
        """uint8 (size, size, 3) arrays of :meth:`paths`, read again only when the listing changed
        (a corrupt file is an InputError naming it)."""
        return self._read(category, size)[1]

    def split(self, category: str, size: int) -> tuple[list[Any], list[Any]]:
        """:meth:`images` as (the first root's references, the later roots' confirmed normals)."""
        _, images, _, own = self._read(category, size)
        return images[:own], images[own:]

    def digest(self, category: str, size: int) -> str:
        """16 hex of the sha256 of the images' pixels: which references a result was scored with."""
        return self._read(category, size)[2]

    def _read(self, category: str, size: int) -> tuple[tuple, list[Any], str, int]:
        """(listing, images, digest, how many of them the first root's), from one listing."""
        from pipeline.inference import read_image

        by_root = self._paths_by_root(category)
        paths = [path for found in by_root for path in found]
        if not paths:  # unknown to the folders (any name a client sends): nothing is kept for it
            self._images.pop((category, size), None)
            return (), [], NO_IMAGES_DIGEST, 0
        stats = [p.stat() for p in paths]  # listed at every request a pinned bank serves: one stat each
        listing = tuple((str(p), s.st_mtime_ns, s.st_size) for p, s in zip(paths, stats, strict=True))
        cached = self._images.get((category, size))
        if cached is None or cached[0] != listing:
            images = [read_image(path, size) for path in paths]
            digest = hashlib.sha256()
            for image in images:
                digest.update(image.tobytes())
            own = len(by_root[0])
            cached = self._images[(category, size)] = (listing, images, digest.hexdigest()[:16], own)
        return cached
