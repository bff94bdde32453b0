"""Small helpers shared by test modules (importable as ``support``: pytest puts this folder, the
home of the root conftest.py, on sys.path)."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fake_checkpoint(root: Path, seed: int) -> Path:
    """A checkpoint folder in the on-disk layout (weights + config) whose content differs per seed:
    enough for the registry, which hashes and moves it but never loads it."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    save_file({"decoder.weight": torch.randn(4, 3, generator=gen)}, str(root / "model.safetensors"))
    (root / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    return root
