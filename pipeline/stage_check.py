"""Skip, resume or redo a stage by the orchestrator's stage record, and say why.

``stage.json`` (:mod:`pipeline.fingerprint`) holds a hash of a stage's inputs, its key: enough to
decide, not to tell anyone *what* changed. So a caller that reports reasons also keeps the same
inputs in readable form in ``inputs.json`` beside it (flattened config keys, data fingerprints, the
checkpoint digest, ...), written when the stage starts. The decision itself is the orchestrator's
rule (:func:`pipeline.fingerprint.stage_status`); the inputs only explain it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.core.files import write_json_atomic
from pipeline.fingerprint import read_stage, stage_status, write_stage

INPUTS_FILE = "inputs.json"
NOT_RUN = "not run yet"
MAX_LISTED = 6
"""Changed config keys named in a reason; the rest are counted."""


@dataclass(frozen=True)
class Check:
    """What to do with a stage and why, in words for the log."""

    status: Literal["complete", "resume", "fresh"]
    reason: str


def check_stage(folder: str | Path, key: str, inputs: Mapping[str, Any]) -> Check:
    """``complete`` (up to date), ``resume`` (interrupted, same key) or ``fresh`` with what changed."""
    folder = Path(folder)
    status = stage_status(folder, key)
    if status == "complete":
        return Check(status, "up to date")
    if status == "resume":
        return Check(status, "interrupted with the same inputs")
    if read_stage(folder) is None:
        made = folder.is_dir() and any(folder.iterdir())
        return Check(status, "no record of the inputs its outputs were made from" if made else NOT_RUN)
    return Check(status, explain(read_inputs(folder), inputs))


def explain(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What differs between two recorded inputs: "config changed: train.max_steps 2 -> 3; data changed
    (shards)". ``config`` and ``data`` hold flat mappings; any other entry is one value."""
    if old is None:
        return "inputs changed (none recorded)"
    old, new = _plain(old), _plain(new)
    parts = []
    config_old, config_new = old.get("config") or {}, new.get("config") or {}
    changed = [k for k in sorted(set(config_old) | set(config_new)) if config_old.get(k) != config_new.get(k)]
    if changed:
        listed = [f"{k} {_show(config_old, k)} -> {_show(config_new, k)}" for k in changed[:MAX_LISTED]]
        more = f" and {len(changed) - MAX_LISTED} more" if len(changed) > MAX_LISTED else ""
        parts.append("config changed: " + ", ".join(listed) + more)
    data_old, data_new = old.get("data") or {}, new.get("data") or {}
    data = [k for k in sorted(set(data_old) | set(data_new)) if data_old.get(k) != data_new.get(k)]
    if data:
        parts.append(f"data changed ({', '.join(data)})")
    for name in sorted((set(old) | set(new)) - {"config", "data"}):
        if old.get(name) != new.get(name):
            parts.append(f"{name} changed: {_short(old.get(name))} -> {_short(new.get(name))}")
    return "; ".join(parts) or "inputs changed"


def start_stage(folder: str | Path, key: str, inputs: Mapping[str, Any], check: Check) -> None:
    """Clear a fresh stage's old outputs (never mixed with new ones), then record key and inputs."""
    folder = Path(folder)
    if check.status == "fresh" and folder.exists():
        shutil.rmtree(folder)
    write_stage(folder, key, "running")
    write_json_atomic(folder / INPUTS_FILE, _plain(inputs))


def read_inputs(folder: str | Path) -> dict[str, Any] | None:
    """The inputs recorded by :func:`start_stage`, or None (never recorded, or a torn file)."""
    path = Path(folder) / INPUTS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON round trip, so fresh inputs compare equal to recorded ones (tuples, paths)."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def _show(config: Mapping[str, Any], key: str) -> str:
    return json.dumps(config[key], default=str) if key in config else "(unset)"


def _short(value: Any) -> str:
    text = "(none)" if value is None else str(value)
    return text[:12] if len(text) == 64 else text  # a sha256: its prefix is enough to tell them apart
