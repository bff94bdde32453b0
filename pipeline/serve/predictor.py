"""Where the serving replicas get their model: one place, so the app never builds one itself."""

from __future__ import annotations

from pathlib import Path

from train.model.predictor import Predictor


def load_predictor(checkpoint: str | Path, device: str) -> Predictor:
    """The model of ``checkpoint`` on ``device`` (cpu, cuda or auto), loaded once per replica; its
    few-shot banks are cached per category and reference content."""
    return Predictor.from_checkpoint(checkpoint, device=device)
