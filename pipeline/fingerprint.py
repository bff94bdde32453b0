"""Fingerprints of data and config, and the stage record that lets a stage be skipped.

A stage's *key* is a hash of everything its output depends on (input fingerprints, its config
section, the seed). ``<stage dir>/stage.json`` holds the key and a status: ``running`` is written
before the stage starts and ``complete`` (with the stage's summary) after its last output exists.
So a rerun skips a complete stage with the same key, resumes a ``running`` one with the same key,
and starts over when the key changed.

Image hashes are cached by (size, mtime) in a JSON file, so fingerprinting a large dataset again is
a directory walk, not a full read; a cache miss reads the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

STAGE_FILE = "stage.json"
Status = Literal["running", "complete"]


def hash_json(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys; paths and dataclasses as text)."""
    from pipeline.config import to_dict

    return hashlib.sha256(json.dumps(to_dict(obj), sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """File content hashes keyed by absolute path, trusted while size and mtime are unchanged."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, list] = {}
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}  # a corrupt cache is only a slower fingerprint
        self.hits = self.misses = 0

    def sha256(self, path: str | Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        entry = self.entries.get(str(path))
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            self.hits += 1
            return entry[2]
        self.misses += 1
        sha = file_sha256(path)
        self.entries[str(path)] = [st.st_size, st.st_mtime_ns, sha]
        return sha

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries))
        os.replace(tmp, self.path)


def records_fingerprint(records: Iterable[Any], cache: HashCache | None = None, masks: bool = False) -> str:
    """sha256 over (relpath, content hash) of each record, in order.

    Without ``masks`` this is the formula of the synth manifest's ``source_fingerprint``, so the two
    can be compared. With ``masks`` the label and mask content are included (evaluation data).
    """
    cache = cache or HashCache()
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.relpath}\0{cache.sha256(r.path)}\n".encode())
        if masks:
            mask = cache.sha256(r.mask_path) if r.mask_path else "-"
            digest.update(f"{r.label}\0{mask}\n".encode())
    return digest.hexdigest()


def dataset_fingerprint(
    root: str | Path,
    fmt: str,
    split: Literal["train", "test"],
    categories: Sequence[str] = (),
    cache: HashCache | None = None,
) -> str:
    """Fingerprint of the normal training images (``train``) or the evaluation set (``test``)."""
    from synth.datasets import read_dataset

    records = read_dataset(root, fmt, split=split, categories=categories)  # type: ignore[arg-type]
    if split == "train":
        return records_fingerprint([r for r in records if r.label == 0], cache)
    return records_fingerprint(records, cache, masks=True)


def stage_key(**parts: Any) -> str:
    """The key of a stage run: a hash of the named inputs (fingerprints, config sections, seed)."""
    return hash_json(parts)


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
    tmp = directory / f".{STAGE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, directory / STAGE_FILE)
