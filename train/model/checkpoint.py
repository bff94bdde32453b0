"""Trained weights as safetensors with the model config beside them; loading never unpickles."""

from __future__ import annotations

from pathlib import Path

from train.model.anomalygpt import AnomalyGPT
from train.model.config import ModelConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def save_checkpoint(model: AnomalyGPT, cfg: ModelConfig, directory: str | Path) -> Path:
    """Write ``model.safetensors`` (the trainable tensors) and ``config.yaml`` (the ModelConfig)."""
    from safetensors.torch import save_file

    from pipeline.config import dump_yaml

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": "anomalygpt-trainable"})
    dump_yaml(cfg, directory / CONFIG)
    return directory


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[AnomalyGPT, ModelConfig]:
    """Rebuild the model from ``config.yaml`` (frozen parts from their packages/paths), then load
    the trained tensors; every trainable tensor must be present and nothing else."""
    from safetensors.torch import load_file

    from pipeline.config import load_config
    from train.model.build import build_model
    from train.model.llm import copy_tensors

    directory = Path(directory)
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory}: {name} missing")
    cfg = load_config(ModelConfig, directory / CONFIG)
    model = build_model(cfg)
    state = load_file(str(directory / WEIGHTS), device=device)
    own = dict(model.named_parameters())
    expected = {n for n, p in own.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"checkpoint {directory}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    copy_tensors(own, state, f"checkpoint {directory}")
    return model.to(device), cfg
