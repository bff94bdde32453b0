"""Trained weights as safetensors with the model config beside them; loading never unpickles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline.core.config import ConfigError, dump_yaml, load_config
from pipeline.core.errors import InputError
from train.model.config import ModelConfig

if TYPE_CHECKING:  # torch stays unimported until a model is built, so verify_checkpoint is cheap
    from train.model.anomalygpt import AnomalyGPT

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
KEYS_ADDED_LATER = {"prompt_cell_evidence": False, "prompt_map_summary": False}
"""Model keys newer than some checkpoints, with the value those checkpoints were trained with (a
config.yaml without the key predates it)."""
_FIX = "re-export the model (train writes it) or re-download it"
_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header
_LISTED = 3
"""Tensor names a mismatch message lists per kind; the rest are counted."""


class CheckpointError(InputError):
    """A checkpoint folder that cannot be loaded: missing, truncated or garbled files, or weights
    that do not fit the model its config builds (exit 2)."""


def verify_checkpoint(directory: str | Path) -> None:
    """Check the folder without building the model, so a broken download fails in a second, naming
    the file, instead of deep inside a model load (or a Ray actor)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory}: not a folder; {_FIX}")
    _verify_config(directory / CONFIG)
    _verify_weights(directory / WEIGHTS)


def _verify_config(path: Path) -> None:
    """config.yaml exists and is a valid ModelConfig."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; {_FIX}")
    try:
        load_config(ModelConfig, path)
    except (ConfigError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {path} does not parse ({exc}); {_FIX}") from exc


def _verify_weights(path: Path) -> None:
    """model.safetensors exists and its size is exactly what its header says (8-byte little-endian
    header length + JSON header + tensor data): truncated or garbage files are caught unread."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing; {_FIX}")
    size = path.stat().st_size
    with path.open("rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"checkpoint file {path} is truncated: {size} of at least 8 bytes; {_FIX}")
        n = int.from_bytes(prefix, "little")
        if n > _MAX_HEADER:
            raise CheckpointError(
                f"checkpoint file {path} is not a safetensors file (header length {n}); {_FIX}"
            )
        if 8 + n > size:
            raise CheckpointError(
                f"checkpoint file {path} is truncated: {size} of at least {8 + n} bytes; {_FIX}"
            )
        raw = fh.read(n)
    expected = 8 + n + _data_end(path, raw)
    if size < expected:
        raise CheckpointError(f"checkpoint file {path} is truncated: {size} of {expected} bytes; {_FIX}")
    if size > expected:
        raise CheckpointError(
            f"checkpoint file {path} is corrupt: {size} bytes where its header says {expected}; {_FIX}"
        )


def _data_end(path: Path, raw: bytes) -> int:
    """The largest ``data_offsets`` end in a safetensors JSON header (the data section's length)."""
    try:
        header = json.loads(raw)
        entries = [v for k, v in header.items() if k != "__metadata__"]
        return max((int(e["data_offsets"][1]) for e in entries), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(
            f"checkpoint file {path} is not a safetensors file (unreadable header: {exc}); {_FIX}"
        ) from exc


def save_checkpoint(model: AnomalyGPT, cfg: ModelConfig, directory: str | Path) -> Path:
    """Write ``model.safetensors`` (the trainable tensors) and ``config.yaml`` (the ModelConfig)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": "anomalygpt-trainable"})
    dump_yaml(cfg, directory / CONFIG)
    return directory


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[AnomalyGPT, ModelConfig]:
    """Check the folder (:func:`verify_checkpoint`), rebuild the model from ``config.yaml`` (frozen
    parts from their packages/paths), then load the trained tensors; every trainable tensor must be
    present and nothing else."""
    from safetensors.torch import load_file

    from train.model.build import build_model  # torch and transformers: only when a model is built
    from train.model.llm import copy_tensors

    directory = Path(directory)
    verify_checkpoint(directory)
    cfg = _config_of(directory)
    model = build_model(cfg)
    state = load_file(str(directory / WEIGHTS), device=device)
    own = dict(model.named_parameters())
    _check_matches(directory, {n: tuple(p.shape) for n, p in own.items() if p.requires_grad}, state)
    copy_tensors(own, state, f"checkpoint {directory}")
    return model.to(device), cfg


def checkpoint_config(directory: str | Path) -> ModelConfig:
    """The ModelConfig a checkpoint was trained with, without loading a weight (or torch)."""
    return _config_of(Path(directory))


def _config_of(directory: Path) -> ModelConfig:
    """The checkpoint's ModelConfig; keys it predates take the value it was trained with."""
    cfg = load_config(ModelConfig, directory / CONFIG)
    written = yaml.safe_load((directory / CONFIG).read_text()) or {}
    for key, old_value in KEYS_ADDED_LATER.items():
        if key not in written:
            setattr(cfg, key, old_value)
    return cfg


def _check_matches(directory: Path, expected: dict[str, tuple[int, ...]], state: dict) -> None:
    """The file holds exactly the tensors, of exactly the shapes, that its config's model trains;
    else a CheckpointError naming the first few that differ and the likely cause."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = {n: (tuple(state[n].shape), expected[n]) for n in sorted(set(state) & set(expected))}
    misshaped = [f"{n} (file {got}, model {want})" for n, (got, want) in shapes.items() if got != want]
    problems = [
        f"{label} {len(names)}: {', '.join(names[:_LISTED])}" + (", ..." if len(names) > _LISTED else "")
        for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if names
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint file {directory / WEIGHTS} does not fit the model its {CONFIG} builds "
            f"({'; '.join(problems)}). Likely the weights come from another preset or {CONFIG} was "
            f"edited after training: put back the {CONFIG} saved with these weights, or retrain"
        )
