"""The typed contract between data loading, training and the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

Turn = dict[str, str]
"""One conversation turn: {"from": "human" | "gpt", "value": text}."""


@dataclass
class Batch:
    """One training batch (anomaly shards or instruction data)."""

    images: torch.Tensor
    """float32 (B, 3, H, W), RGB in [0, 1]; the encoder normalises."""
    masks: torch.Tensor | None
    """float32 (B, 1, H, W) in {0, 1}; None for instruction data (no pixel losses)."""
    categories: list[str]
    """Class name per image; "object" for instruction data."""
    conversations: list[list[Turn]]
    """Per image, the turns; the first is human, assistant turns are the targets."""
    references: torch.Tensor | None = None
    """Optional float32 (B, 3, H, W) normal reference per image for few-shot training."""

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"Batch.images must be (B, 3, H, W), got {tuple(self.images.shape)}")
        if self.masks is not None and tuple(self.masks.shape) != (n, 1, *self.images.shape[2:]):
            raise ValueError(
                f"Batch.masks must be {(n, 1, *self.images.shape[2:])}, got {tuple(self.masks.shape)}"
            )
        if len(self.categories) != n or len(self.conversations) != n:
            raise ValueError(
                f"Batch has {n} images but {len(self.categories)} categories and "
                f"{len(self.conversations)} conversations"
            )


@dataclass
class Prediction:
    """What the model says about one image."""

    category: str
    anomaly_map: np.ndarray | None
    """float32 (H, W) in [0, 1] at the input size; None when the decoder is off and no memory bank."""
    score: float | None
    """Image-level anomaly score: the max of the map (None without a map)."""
    answer: str | None
    """The LLM's answer text; None when generation is off or the LLM is disabled."""
