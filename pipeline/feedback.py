"""What a person says about a result, kept as a dataset in the project's own (MVTec) layout.

::

    FEEDBACK/<category>/train/good/<sha256[:16]>.<ext>     confirmed normals (false alarms)
    FEEDBACK/<category>/test/defect/<sha256[:16]>.<ext>    confirmed defects (image-level label)
    FEEDBACK/entries.jsonl                                 every decision: who, when, model version, note
    FEEDBACK/fingerprint.json                              the content's fingerprint and counts

A confirmed normal joins the category's normal images: ``serve`` and ``inspect`` take this folder's
normals into their memory banks at once (``pipeline.references``), and ``retrain --feedback`` folds
both kinds into the next training (normals) and evaluation (defects, image-level metrics), through
:func:`merged_dataset`. The image's content names its file, so marking it again replaces its label.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError
from pipeline.core.files import atomic_write, write_json_atomic

LABELS = ("normal", "defect")
ENTRIES = "entries.jsonl"
FINGERPRINT = "fingerprint.json"
DEFECT_FOLDER = "defect"
MAX_NOTE = 2000
FORMAT_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


@dataclass(frozen=True)
class FeedbackEntry:
    sha256: str
    category: str
    label: str
    """``normal`` (the model was wrong to flag it, or right to pass it) or ``defect``."""
    file: str
    """Where the image is kept, relative to the feedback folder."""
    note: str = ""
    who: str = ""
    when: str = ""
    model_version: str = ""
    source: str = ""
    """The path or upload it came from."""


class FeedbackStore:
    """One feedback folder; safe to write from several processes at once (a file lock)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def add(
        self,
        data: bytes,
        category: str,
        label: str,
        note: str = "",
        who: str | None = None,
        model_version: str = "",
        source: str = "",
    ) -> FeedbackEntry:
        """Keep the image ``data`` under ``label`` (replacing another label it had) and record the
        decision. Bad values and non-images are InputErrors that say what to send."""
        from filelock import FileLock

        if label not in LABELS:
            raise InputError(f"feedback label must be one of {', '.join(LABELS)}, got {label!r}")
        if len(note) > MAX_NOTE:
            raise InputError(f"feedback note is {len(note)} characters; at most {MAX_NOTE}")
        _check_category(category)
        sha = hashlib.sha256(data).hexdigest()
        name = sha[:16] + _extension(data, source or sha[:16])
        folder = ("train", "good") if label == "normal" else ("test", DEFECT_FOLDER)
        relative = Path(category, *folder, name)
        entry = FeedbackEntry(
            sha256=sha,
            category=category,
            label=label,
            file=str(relative),
            note=note,
            who=who or _user(),
            when=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            model_version=model_version,
            source=source,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".lock")):
            for other in LABELS:  # one label per image: the latest decision wins
                other_folder = ("train", "good") if other == "normal" else ("test", DEFECT_FOLDER)
                stale = self.root / category / Path(*other_folder) / name
                if other != label:
                    stale.unlink(missing_ok=True)
            target = self.root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_file():
                atomic_write(target, data)
            with (self.root / ENTRIES).open("a", encoding="utf-8") as log:
                log.write(json.dumps(asdict(entry), sort_keys=True) + "\n")
                log.flush()
                os.fsync(log.fileno())
            self._write_fingerprint()
        return entry

    def counts(self) -> dict[str, dict[str, int]]:
        """category -> {"normal": n, "defect": n} of the images kept now."""
        out: dict[str, dict[str, int]] = {}
        for category, label, _ in self._files():
            out.setdefault(category, dict.fromkeys(LABELS, 0))[label] += 1
        return out

    def fingerprint(self) -> str:
        """sha256 over (category, label, content) of every image kept: what a retrain depends on."""
        digest = hashlib.sha256()
        for category, label, path in self._files():
            digest.update(f"{category}\0{label}\0{path.name}\n".encode())
        return digest.hexdigest()

    def _files(self) -> list[tuple[str, str, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for category in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for label, folder in (
                ("normal", category / "train" / "good"),
                ("defect", category / "test" / DEFECT_FOLDER),
            ):
                if folder.is_dir():
                    found += [(category.name, label, p) for p in sorted(folder.iterdir()) if p.is_file()]
        return found

    def _write_fingerprint(self) -> None:
        write_json_atomic(
            self.root / FINGERPRINT, {"fingerprint": self.fingerprint(), "counts": self.counts()}
        )


def merged_dataset(data: Path, feedback: Path, out: Path) -> Path:
    """An MVTec-layout view of ``data`` with the feedback folded in, as symbolic links under ``out``:
    each category's train/good holds its normals and the confirmed ones, its test/ the test images
    and test/defect the confirmed defects (no masks: image-level metrics for them). Built in a new
    folder, then renamed into place, so a reader never sees half of it."""
    from synth.datasets import image_files

    if not (data.is_dir() and any((c / "train" / "good").is_dir() for c in data.iterdir())):
        raise InputError(
            f"--feedback needs a dataset in the MVTec layout (<root>/<category>/train/good), not {data}"
        )
    staging = out.with_name(out.name + f".{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    store = FeedbackStore(feedback)
    categories = sorted(c.name for c in data.iterdir() if (c / "train" / "good").is_dir())
    for category in categories:
        source, target = data / category, staging / category
        good = target / "train" / "good"
        good.mkdir(parents=True)
        for image in image_files(source / "train" / "good"):
            (good / image.name).symlink_to(image.resolve())
        for folder in ("test", "ground_truth"):
            if (source / folder).is_dir():
                target_folder = target / folder
                target_folder.mkdir()
                for child in sorted((source / folder).iterdir()):
                    (target_folder / child.name).symlink_to(child.resolve())
        for label, kept in (("normal", ("train", "good")), ("defect", ("test", DEFECT_FOLDER))):
            folder = store.root / category / Path(*kept)
            if not folder.is_dir():
                continue
            destination = target / Path(*kept[:1]) / ("good" if label == "normal" else "feedback_defect")
            destination.mkdir(parents=True, exist_ok=True)
            for image in image_files(folder):
                link = destination / (f"feedback_{image.name}" if label == "normal" else image.name)
                link.symlink_to(image)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def feedback_tags(feedback: Path) -> dict[str, str]:
    """What a model trained with ``feedback`` saw, as MLflow tags: counts per kind and category."""
    store = FeedbackStore(feedback)
    counts = store.counts()
    tags = {
        "feedback.fingerprint": store.fingerprint(),
        "feedback.normal": str(sum(c["normal"] for c in counts.values())),
        "feedback.defect": str(sum(c["defect"] for c in counts.values())),
    }
    for category, kinds in counts.items():
        for label, n in kinds.items():
            tags[f"feedback.{category}.{label}"] = str(n)
    return tags


def read_marked(results: Path) -> list[dict[str, Any]]:
    """The rows of an ``inspect`` results file (parquet, jsonl or csv) whose ``feedback`` column a
    person filled in, each checked: a label other than normal/defect is an InputError naming the row."""
    rows = _rows(results)
    marked = []
    for number, row in enumerate(rows, 1):
        label = (row.get("feedback") or "").strip().lower() if isinstance(row.get("feedback"), str) else ""
        if not label:
            continue
        if label not in LABELS:
            raise InputError(
                f"{results} row {number}: feedback must be normal or defect, got {row['feedback']!r}"
            )
        for key in ("path", "sha256", "category"):
            if not row.get(key):
                raise InputError(f"{results} row {number}: no {key!r}; use the results `inspect` wrote")
        note = row.get("feedback_note")
        marked.append({**row, "feedback": label, "feedback_note": note if isinstance(note, str) else ""})
    return marked


def _rows(results: Path) -> list[dict[str, Any]]:
    if not results.is_file():
        raise FileNotFoundError(f"--results {results}: no such file")
    suffix = results.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(results).to_pylist()
    if suffix == ".jsonl":
        return [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix == ".csv":
        import csv

        with results.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    raise InputError(f"--results {results}: expected a .parquet, .jsonl or .csv file written by `inspect`")


def _check_category(category: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_ -]{0,63}", category or ""):
        raise InputError(f"category {category[:80]!r}: use up to 64 letters, digits, '_', '-' or spaces")


def _extension(data: bytes, label: str) -> str:
    """The file extension of an image's own format; a non-image is an InputError."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            kind = image.format or ""
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"feedback image {label} is not a readable image ({exc})") from exc
    return FORMAT_EXTENSIONS.get(kind, ".png") if kind in FORMAT_EXTENSIONS else _unsupported(kind, label)


def _unsupported(kind: str, label: str) -> str:
    raise InputError(
        f"feedback image {label}: format {kind or 'unknown'} is not kept; send PNG, JPEG, BMP, TIFF or WebP"
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
