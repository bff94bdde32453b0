"""The AnomalyGPT model as pure nn.Modules (no Ray, DeepSpeed or MLflow here).

Heavy names (torch, transformers) load lazily, so ``from train.model import ModelConfig`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from train.model.batch import Batch, Prediction
from train.model.config import EncoderConfig, LLMConfig, LoRAConfig, LossConfig, ModelConfig
from train.model.conversation import ParsedAnswer, parse_answer

if TYPE_CHECKING:
    from train.model.anomalygpt import AnomalyGPT
    from train.model.build import build_model
    from train.model.checkpoint import load_checkpoint, save_checkpoint
    from train.model.memory_bank import MemoryBank

_LAZY = {
    "AnomalyGPT": "train.model.anomalygpt",
    "MemoryBank": "train.model.memory_bank",
    "build_model": "train.model.build",
    "save_checkpoint": "train.model.checkpoint",
    "load_checkpoint": "train.model.checkpoint",
}

__all__ = [
    "AnomalyGPT",
    "Batch",
    "EncoderConfig",
    "LLMConfig",
    "LoRAConfig",
    "LossConfig",
    "MemoryBank",
    "ModelConfig",
    "ParsedAnswer",
    "Prediction",
    "build_model",
    "load_checkpoint",
    "parse_answer",
    "save_checkpoint",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'train.model' has no attribute {name!r}")
