"""What every frozen image encoder is: the interface the model and the memory bank rely on.

Its own module so that each encoder family (the CNNs in encoders.py, ImageBind in imagebind.py)
imports the interface, and encoders.py can pick a family without a circle of imports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderOutput:
    patch_maps: list[torch.Tensor]
    """One (B, C_l, h_l, w_l) map per chosen layer."""
    global_embed: torch.Tensor
    """(B, D) image embedding (the LLM's image token comes from it)."""


class ImageEncoder(nn.Module):
    """Base: frozen, always in eval mode, input RGB in [0, 1]."""

    channels: list[int]
    embed_dim: int

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> ImageEncoder:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> ImageEncoder:
        return super().train(False)  # BatchNorm statistics and dropout stay as pretrained

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std
