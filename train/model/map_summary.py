"""Prompt tokens that say, in the LLM's own words, what the map decides and where.

The map's prompt tokens hold everything the map shows, but to answer from them the LLM must find
the map's peak among nine tokens, compare it with the boundary (0.5) and copy the hot cell's name:
a max, a threshold and an arg-max that LoRA has to learn from a few hundred answers, and that
small LLMs learn differently from seed to seed. The summary does those steps in closed form and
hands the LLM their result as embeddings it can read like words:

- the verdict token moves from the LLM's word for "no" to its word for "yes" as the map's peak
  crosses 0.5 (a sigmoid of the peak's logit, with a learnt gain);
- the where tokens are the soft arg-max of the cells' peaks over the cells' position names
  ("top left" ... "bottom right"), one token per word of the name: one token holding the mean
  of "top" and "left" reads like either word, and the LLM then named a corner by one of its edges.
  A one-word name fills both slots ("center", "center"). The soft arg-max is for training, where
  the gradient must flow; at inference the where tokens are the hottest cell's words exactly: a
  blend of two nearly tied cells (a defect on a cell border, a faint one in textured normal
  background) made the LLM name a third cell or the other one.

All are differentiable in the map and their words are trained, so the LLM still learns how to
use them; it no longer has to learn to compute them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.model.config import WHERE_WORDS
from train.model.map_reading import map_logits
from train.model.prompt_learner import rms_scale

INITIAL_GAIN = 4.0
"""Verdict gain on the peak's logit: a peak of 0.7 reads 97 % "yes", 0.4 reads 17 %."""
INITIAL_FOCUS = 4.0
"""Arg-max sharpness on the cells' peak logits: a cell at 0.8 outweighs one at 0.5 by e^5.5."""


def name_slots(names: list[str]) -> list[list[str]]:
    """Each position name as WHERE_WORDS words: "top left" -> [top, left], "top" -> [top, top]."""
    slots = []
    for name in names:
        words = name.split()
        if not 1 <= len(words) <= WHERE_WORDS:
            raise ValueError(f"position name {name!r} must have 1 to {WHERE_WORDS} words")
        slots.append(words + [words[-1]] * (WHERE_WORDS - len(words)))
    return slots


class MapSummary(nn.Module):
    """(B, 1, H, W) map in [0, 1] -> (B, 1 + WHERE_WORDS, hidden): the verdict token, then the
    where tokens, each at root-mean-square ``embed_rms`` (the LLM's word-embedding scale).

    ``verdict_words``: (2, hidden), normal then anomalous; ``cell_words``: (cells, WHERE_WORDS,
    hidden), the words of each 3x3 cell's name (``name_slots``), cells row-major."""

    def __init__(self, verdict_words: torch.Tensor, cell_words: torch.Tensor, embed_rms: float) -> None:
        super().__init__()
        if verdict_words.shape[0] != 2:
            raise ValueError(f"verdict words must be 2 (normal, anomalous), got {verdict_words.shape[0]}")
        cells, slots, width = cell_words.shape if cell_words.dim() == 3 else (0, 0, 0)
        side = round(cells**0.5)
        if not cells or side * side != cells or slots != WHERE_WORDS or width != verdict_words.shape[1]:
            shape = tuple(cell_words.shape)
            raise ValueError(f"cell words must be (square grid, {WHERE_WORDS}, verdict width), got {shape}")
        self.side, self.embed_rms = side, embed_rms
        self.verdict_words = nn.Parameter(verdict_words.detach().clone().float())
        self.cell_words = nn.Parameter(cell_words.detach().clone().float())
        # shape (1,), not 0-d: DeepSpeed's broadcast of the weights cannot view a 0-d tensor as bytes
        self.gain = nn.Parameter(torch.tensor([INITIAL_GAIN]))
        self.focus = nn.Parameter(torch.tensor([INITIAL_FOCUS]))

    def forward(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        cell_peaks = F.adaptive_max_pool2d(anomaly_map.float(), self.side).flatten(1)  # (B, n), row-major
        cell_logits = map_logits(cell_peaks).to(self.cell_words.dtype)
        yes = torch.sigmoid(self.gain * cell_logits.amax(dim=1, keepdim=True))  # (B, 1)
        verdict = (1 - yes) * self.verdict_words[0] + yes * self.verdict_words[1]
        if self.training:  # a soft arg-max: the gradient must reach the map
            weights = torch.softmax(self.focus * cell_logits, dim=1)
        else:  # inference: the hottest cell's words, no blend
            weights = F.one_hot(cell_logits.argmax(dim=1), cell_logits.shape[1]).to(cell_logits.dtype)
        where = torch.einsum("bn,nsh->bsh", weights, self.cell_words)
        return rms_scale(torch.cat([verdict.unsqueeze(1), where], dim=1), self.embed_rms)
