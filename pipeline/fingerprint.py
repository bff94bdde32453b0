"""Fingerprints of datasets and config, and the stage record that lets a stage be skipped.

A stage's *key* is a hash of everything its output depends on (input fingerprints, its config
section, the seed). ``<stage dir>/stage.json`` holds the key and a status: ``running`` is written
before the stage starts and ``complete`` (with the stage's summary) after its last output exists.
So a rerun skips a complete stage with the same key, resumes a ``running`` one with the same key,
and starts over when the key changed.

The image-set hash itself is synth's (``synth.fingerprint``: it is also the synth manifest's
``source_fingerprint``), cached by (size, mtime) so fingerprinting a large dataset again is a walk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pipeline.core.files import json_sha256, write_json_atomic
from synth.datasets import read_dataset
from synth.fingerprint import HashCache, records_fingerprint

STAGE_FILE = "stage.json"
Status = Literal["running", "complete"]


def dataset_fingerprint(
    root: str | Path,
    fmt: str,
    split: Literal["train", "test"],
    categories: Sequence[str] = (),
    cache: HashCache | None = None,
) -> str:
    """Fingerprint of the normal training images (``train``) or the evaluation set (``test``)."""
    records = read_dataset(root, fmt, split=split, categories=categories)  # type: ignore[arg-type]
    if split == "train":
        return records_fingerprint([r for r in records if r.label == 0], cache)
    return records_fingerprint(records, cache, masks=True)


def stage_key(**parts: Any) -> str:
    """The key of a stage run: a hash of the named inputs (fingerprints, config sections, seed)."""
    return json_sha256(parts)


def read_stage(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / STAGE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None  # a torn write counts as no record: the stage runs again
    return data if isinstance(data, dict) else None


def stage_status(directory: str | Path, key: str) -> Literal["complete", "resume", "fresh"]:
    """``complete``: skip; ``resume``: same inputs, interrupted; ``fresh``: new inputs or never run."""
    record = read_stage(directory)
    if record is None or record.get("key") != key:
        return "fresh"
    return "complete" if record.get("status") == "complete" else "resume"


def write_stage(
    directory: str | Path, key: str, status: Status, summary: Mapping[str, Any] | None = None
) -> None:
    """Record the stage state atomically (a crash never leaves a half-written record)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"key": key, "status": status, "time": time.time(), "summary": dict(summary or {})}
    write_json_atomic(directory / STAGE_FILE, record)
