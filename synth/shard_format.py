"""The shard format: WebDataset tars and their manifest; writing (reproducible bytes), loading, verifying.

A shard is a plain POSIX tar of ``<key>.png``, ``<key>.mask.png``, ``<key>.json`` members with
fixed mtime, owner and mode, so the same samples always give the same bytes. Files appear only
complete (``pipeline.core.files.atomic_write``: a temporary name, fsync, rename; a failed write
removes its temporary file). The manifest records each shard's ``bytes`` and ``sha256``, so a rerun
can find a truncated or damaged shard (``shard_problem``).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError
from pipeline.core.files import atomic_write, file_sha256

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "anomalygpt-synth-shards/2"
"""/2: every sample names its ``pair`` and shards never split a source image's samples."""
PAIRING_UNIT = "normal + synthetic of the same image"


class ShardError(InputError):
    """Shards that do not match their manifest (or no manifest at all); exit 2 from the CLI."""


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> tuple[str, int]:
    """Write ``members`` (name, bytes) as a reproducible tar at ``path``; returns (sha256, size)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest(), len(data)


def load_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a synth output folder; ShardError naming the path if missing or malformed."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ShardError(f"no {MANIFEST} in {directory} (is it a `python -m pipeline synth` output?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON: {exc}") from exc
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if isinstance(found, str) and found.startswith("anomalygpt-synth-shards/") and found != MANIFEST_FORMAT:
        raise ShardError(
            f"{path}: shards of format {found!r}, written by an older synth without normal/synthetic "
            f"pairing (this version needs {MANIFEST_FORMAT!r}); rerun `python -m pipeline synth` "
            "with --force to rewrite them"
        )
    if found != MANIFEST_FORMAT:
        raise ShardError(f"{path}: not a synth manifest (format must be {MANIFEST_FORMAT!r})")
    for key in ("shards", "samples", "categories", "seed", "config", "source_fingerprint", "pairing"):
        if key not in manifest:
            raise ShardError(f"{path}: missing key {key!r}")
    return manifest


def shard_problem(path: Path, entry: dict[str, Any], check_hash: bool) -> str | None:
    """Why the shard at ``path`` does not match its record (``bytes``, ``sha256``), or None if it does.

    Size is always compared (cheap: finds truncated shards); the sha256 only with ``check_hash``.
    A record without a field is not checked on it (see ``unchecked_fields``).
    """
    if not path.is_file():
        return f"shard listed in {path.parent / MANIFEST} is missing"
    size = path.stat().st_size
    if "bytes" in entry and size != entry["bytes"]:
        return f"size {size} != manifest {entry['bytes']}"
    if check_hash and "sha256" in entry and file_sha256(path) != entry["sha256"]:
        return "sha256 differs from the manifest (file changed or corrupt)"
    return None


def unchecked_fields(entry: dict[str, Any], check_hash: bool) -> list[str]:
    """The fields ``shard_problem`` would need but the record lacks (a manifest from an older synth)."""
    return [key for key in ("bytes", "sha256") if key not in entry and (key == "bytes" or check_hash)]


def verify_shards(directory: str | Path, check_hash: bool = True) -> dict[str, Any]:
    """Check each listed shard exists with its size, sha256 and sample count; returns the manifest."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    total = 0
    for entry in manifest["shards"]:
        path = directory / entry["name"]
        missing = unchecked_fields(entry, check_hash)
        if missing:
            raise ShardError(
                f"{directory / MANIFEST}: no {' or '.join(missing)} recorded for {entry['name']}, so it "
                "cannot be checked; rerun `python -m pipeline synth` with --force to rewrite the shards"
            )
        problem = shard_problem(path, entry, check_hash)
        if problem:
            raise ShardError(f"{path}: {problem}")
        count = count_samples(path)
        if count != entry["samples"]:
            raise ShardError(f"{path}: {count} samples, manifest says {entry['samples']}")
        total += count
    if total != manifest["samples"]:
        raise ShardError(
            f"{directory / MANIFEST}: shards hold {total} samples, manifest says {manifest['samples']}"
        )
    return manifest


def count_samples(path: Path) -> int:
    """Samples in a shard: keys that have all three members."""
    members: dict[str, set[str]] = {}
    try:
        with tarfile.open(path) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                members.setdefault(key, set()).add(ext)
    except tarfile.TarError as exc:
        raise ShardError(f"{path}: not a readable tar: {exc}") from exc
    return sum(1 for exts in members.values() if {"png", "mask.png", "json"} <= exts)


def shard_urls(directory: str | Path) -> list[str]:
    """Paths of a verified output's shards, in order (what ``webdataset.WebDataset`` takes)."""
    manifest = load_manifest(directory)
    return [str(Path(directory) / entry["name"]) for entry in manifest["shards"]]
