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
    sources: list[str] | None = None
    """Per image, the normal training image it was made from (the synth sample's ``source``);
    few-shot training leaves that image out of the memory bank it scores against. None for
    instruction data."""
    seed: int = 0
    """Deterministic per micro-batch (a function of the run seed and the stream position): the
    model's random choices for this batch (few-shot or not, how many shots) come from it, so they do
    not depend on the worker count or on a resume."""

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"Batch.images must be (B, 3, H, W), got {tuple(self.images.shape)}")
        if self.masks is not None and tuple(self.masks.shape) != (n, 1, *self.images.shape[2:]):
            raise ValueError(
                f"Batch.masks must be {(n, 1, *self.images.shape[2:])}, got {tuple(self.masks.shape)}"
            )
        if self.sources is not None and len(self.sources) != n:
            raise ValueError(f"Batch has {n} images but {len(self.sources)} sources")
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
    decoder_map: np.ndarray | None = None
    """With a memory bank: the decoder's own map (H, W) beside the fused one, for reporting the
    decoder alone; None otherwise (then ``anomaly_map`` is the decoder's map, if any)."""

    baseline_map: np.ndarray | None = None
    """With a plain baseline bank (:meth:`AnomalyGPT.build_baseline_bank`): its map (H, W), the
    floor the reported map must clear; None otherwise."""

    @property
    def decoder_score(self) -> float | None:
        return None if self.decoder_map is None else float(self.decoder_map.max())

    @property
    def baseline_score(self) -> float | None:
        return None if self.baseline_map is None else float(self.baseline_map.max())
