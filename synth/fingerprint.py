"""The identity of a set of images: a hash over their relative paths and contents.

Synth owns it because the manifest's ``source_fingerprint`` is this hash of the normal training
images; the orchestrator computes the same over a dataset to decide what to rerun
(``pipeline.fingerprint.dataset_fingerprint``). Image hashes are cached by (size, mtime) in a JSON
file, so fingerprinting a large dataset again is a directory walk, not a full read; a cache miss
reads the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.core.files import atomic_write, file_sha256


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
        atomic_write(self.path, json.dumps(self.entries).encode())


def records_fingerprint(records: Iterable[Any], cache: HashCache | None = None, masks: bool = False) -> str:
    """sha256 over (relpath, content hash) of each record (``synth.datasets.ImageRecord``), in order.

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
