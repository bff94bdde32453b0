"""What ``inspect --images`` names, as a list of (image path, category).

A folder (every image under it, recursively), a glob (``'/data/line3/*.png'``, ``**`` allowed), a
text file of paths (one per line, relative to the file's folder; blank lines and ``#`` comments
skipped), or an MVTec-style root (``<root>/<category>/test/<defect>/...``: every category's test
images). The category is ``--category`` when given, else read from an MVTec-style path
(``<category>/(train|test)/<defect>/<file>``), else ``object``.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import InputError
from pipeline.references import guess_category
from synth.datasets import IMAGE_EXTENSIONS

GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class Source:
    path: str
    """Absolute path of the image."""
    category: str


def list_sources(spec: str, category: str | None = None) -> list[Source]:
    """The images ``spec`` names, sorted by path, each with its category. Nothing found is an
    InputError that says what was looked for."""
    paths = _image_paths(spec)
    if not paths:
        raise InputError(
            f"--images {spec}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found; name a folder, a "
            "glob, a text file of paths or an MVTec-style root"
        )
    return [Source(str(p), category or guess_category(p)) for p in paths]


def _image_paths(spec: str) -> list[Path]:
    if any(c in spec for c in GLOB_CHARACTERS):
        return sorted({Path(p).resolve() for p in glob.glob(spec, recursive=True) if _is_image(Path(p))})
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder_images(path.resolve())
    if path.is_file():
        return [path.resolve()] if _is_image(path) else _listed(path)
    raise FileNotFoundError(f"--images {spec}: no such folder, file or matching glob")


def _folder_images(root: Path) -> list[Path]:
    """An MVTec-style root gives its categories' test images; any other folder every image in it."""
    tests = sorted(p for p in root.glob("*/test") if p.is_dir())
    top = tests or [root]
    return sorted({p for folder in top for p in folder.rglob("*") if _is_image(p)})


def _listed(listing: Path) -> list[Path]:
    """The paths a text file names (relative ones from the file's folder); a missing one is named."""
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"--images {listing}: neither an image nor a text file of paths") from exc
    paths = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(text).expanduser()
        path = (path if path.is_absolute() else listing.parent / path).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"--images {listing} line {number}: no such file {path}")
        paths.append(path)
    return sorted(set(paths))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
