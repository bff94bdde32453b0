"""Pixel losses of the decoder maps against the binary mask (the reference's focal + dice)."""

from __future__ import annotations

import torch


def focal_loss(
    probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0, eps: float = 1e-5
) -> torch.Tensor:
    """Focal loss on 2-channel softmax probabilities (B, 2, H, W) vs a {0,1} mask (B, 1, H, W);
    alpha 1 for both classes, mean over pixels. Built on the probabilities' device."""
    target = torch.cat([1.0 - mask, mask], dim=1)
    p_t = (probs * target).sum(dim=1).clamp(eps, 1.0 - eps)
    return (-((1.0 - p_t) ** gamma) * p_t.log()).mean()


def dice_loss(anomaly_prob: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean over the batch of (2 sum(p g) + 1) / (sum p + sum g + 1), on the anomaly channel."""
    p = anomaly_prob.flatten(1)
    g = mask.flatten(1)
    dice = (2.0 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return 1.0 - dice.mean()
