"""Teaching the LLM to read the map: answers trained only where the map agrees with the label.

A calibrated map puts the top of normal at 0.5 (the decoder's softmax decides at 0.5 too). The LLM
should therefore answer "Yes" exactly when the map rises above 0.5. Two things stop it from
learning that rule from the synthetic pairs alone:

- a synthetic anomaly the map does not show (or a normal image with a spurious hot spot) asks the
  LLM to contradict the map, which teaches it to answer from priors instead;
- synthetic anomalies light the map far above 0.5, so nothing tells the LLM where between the
  normal and the synthetic peaks the boundary lies, and a real, fainter defect falls under it.

So the answer's cross-entropy keeps only the samples whose map decides like the label, and a
random monotone gain in logit space moves each kept map's peak anywhere between its own value and
the boundary, on the same side of 0.5: the LLM sees faint and strong evidence on both sides.
"""

from __future__ import annotations

import torch

from train.model.config import DECISION_POINT

EPS = 1e-4


def map_logits(prompt_map: torch.Tensor) -> torch.Tensor:
    """logit of a calibrated map, clamped so that 0 and 1 stay finite: 0 is the boundary, 0.5."""
    return torch.logit(prompt_map.clamp(EPS, 1 - EPS))


def agreeing_samples(prompt_map: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the map's own decision (peak above 0.5) equals the label."""
    peaks = prompt_map.detach().flatten(1).amax(dim=1)
    return (peaks > DECISION_POINT) == labels.bool()


def boundary_gain(
    prompt_map: torch.Tensor, generator: torch.Generator, probability: float = 0.5
) -> torch.Tensor:
    """Per sample, with ``probability``: logit(map) -> a * logit(map) + b, with a in [0.5, 2] and b
    drawn so that the peak keeps its side of 0.5 but may come close to it. Differentiable."""
    b_count = prompt_map.shape[0]
    logits = map_logits(prompt_map)
    peak = logits.detach().flatten(1).amax(dim=1)
    draws = torch.rand(b_count, 3, generator=generator).to(logits.device, logits.dtype)
    applied = draws[:, 0] < probability
    scale = 0.5 + 1.5 * draws[:, 1]
    # The peak moves from scale * peak towards 0, by up to 90 % of the way, never across it.
    shift = -0.9 * draws[:, 2] * scale * peak
    scale = torch.where(applied, scale, torch.ones_like(scale)).view(-1, 1, 1, 1)
    shift = torch.where(applied, shift, torch.zeros_like(shift)).view(-1, 1, 1, 1)
    return torch.sigmoid(scale * logits + shift)
