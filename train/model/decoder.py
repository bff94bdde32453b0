"""Text-patch matching decoder: patch features -> per-layer anomaly probabilities -> one map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AnomalyDecoder(nn.Module):
    """Per layer: Linear into the text space, cosine similarity with [normal; abnormal] scaled by
    ``logit_scale``, bilinear upsampling of the logits to the image size, softmax. The anomaly map
    is the mean over layers of the abnormal probability. Works at any input size."""

    def __init__(self, in_channels: list[int], text_dim: int, logit_scale: float = 100.0) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(c, text_dim) for c in in_channels)
        self.logit_scale = logit_scale

    def forward(
        self, patch_maps: list[torch.Tensor], text: torch.Tensor, size: tuple[int, int]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``text`` (B, 2, D). Returns per-layer probabilities (B, 2, H, W) and the map (B, 1, H, W)."""
        if len(patch_maps) != len(self.proj):
            raise ValueError(f"decoder expects {len(self.proj)} feature maps, got {len(patch_maps)}")
        layer_probs = []
        for proj, fmap in zip(self.proj, patch_maps, strict=True):
            b, _, h, w = fmap.shape
            tokens = F.normalize(proj(fmap.flatten(2).transpose(1, 2)), dim=-1)  # (B, hw, D)
            logits = self.logit_scale * tokens @ text.to(tokens.dtype).transpose(1, 2)  # (B, hw, 2)
            logits = logits.transpose(1, 2).reshape(b, 2, h, w)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
            layer_probs.append(logits.softmax(dim=1))
        anomaly = torch.stack([p[:, 1:2] for p in layer_probs]).mean(0)
        return layer_probs, anomaly
