"""``--references-dir``: normal images per category that give a request the few-shot map without
uploading references. Read once per replica and category, then kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synth.datasets import image_files


class ReferenceFolders:
    """``root/<category>/train/good/`` (the MVTec layout, so a dataset root works as is) or else
    ``root/<category>/`` with the images directly in it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._images: dict[tuple[str, int], list[Any]] = {}

    def paths(self, category: str) -> list[Path]:
        """The category's normal images, sorted; none when it has no folder."""
        for folder in (self.root / category / "train" / "good", self.root / category):
            found = image_files(folder)
            if found:
                return found
        return []

    def categories(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.paths(p.name))

    def images(self, category: str, size: int) -> list[Any]:
        """uint8 (size, size, 3) arrays of :meth:`paths` (a corrupt file is an InputError naming it)."""
        from pipeline.inference import read_image

        key = (category, size)
        if key not in self._images:
            self._images[key] = [read_image(path, size) for path in self.paths(category)]
        return self._images[key]
