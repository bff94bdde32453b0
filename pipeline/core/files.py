"""Content hashes and crash-safe writes: the one implementation every stage and the top layer share.

Fingerprints of finished runs are stored (stage records, manifests, checkpoint states), so the bytes
hashed here must never change: canonical JSON is ``json.dumps(..., sort_keys=True, default=str)`` of
the plain data (dataclasses and paths turned into dicts and text first).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.config import to_dict

_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content, read in 1 MiB blocks (shards and checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys; dataclasses as dicts, other values as text),
    so equal settings give equal hashes whatever the key order."""
    return hashlib.sha256(json.dumps(to_dict(obj), sort_keys=True, default=str).encode()).hexdigest()


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename: readers never see half a file.

    Any failure removes the temporary file, so a failed write leaves nothing behind. An OS error
    without a file name (a full disk on write or fsync) is raised again naming ``path``, same errno,
    so the CLI's "cannot write <file>" (exit 4) says which output failed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON (records people read and diff), written atomically."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
