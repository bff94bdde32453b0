"""Prompt learner: anomaly map (and optionally the global image feature) -> LLM prompt tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CELL_STATS = 2  # per grid cell: the map's peak and mean


def rms_scale(tokens: torch.Tensor, target: float) -> torch.Tensor:
    """Each token vector rescaled to root-mean-square ``target`` (the LLM's word-embedding RMS)."""
    rms = tokens.float().pow(2).mean(dim=-1, keepdim=True).add(1e-12).sqrt()
    return tokens * (target / rms).to(tokens.dtype)


class PromptLearner(nn.Module):
    """Conv stages (conv3x3 + ReLU + maxpool2, channels as the reference 4/16/64/256/1024), an
    adaptive pool to (s+4, s+4) and a 5x5 conv to s*s tokens of the LLM's hidden size, after
    ``n`` learnable base prompts. At 224 px with five stages the pool is the identity and the
    shapes equal the reference's 7x7 -> 3x3; any other input size works too.

    With ``embed_rms`` the map tokens are scaled to the LLM's word-embedding RMS and each grid cell
    adds a learnt cell embedding: the convolution is shared by all cells, so without it a hot spot
    top left and one bottom right would give the same token, and only the token's place in the
    sequence would tell the LLM where the defect is.

    With ``cell_evidence`` each map token also gets a learnt projection of its own grid cell's peak
    and mean map value, pooled over exact thirds of the map. The conv tokens see overlapping 5x5
    windows of a 7x7 grid (most of the image each), so alone they cannot say which third holds a hot
    spot; the cell statistics give the LLM the map's evidence where the answer's position words are.

    With ``summary`` (a ``train.model.map_summary.MapSummary``) its tokens, the map's verdict
    and its hottest cell in the LLM's words, follow the map tokens."""

    def __init__(
        self,
        hidden: int,
        n_tokens: int = 9,
        channels: list[int] | None = None,
        global_dim: int | None = None,
        use_map: bool = True,
        init_std: float = 1.0,
        embed_rms: float | None = None,
        cell_evidence: bool = False,
        summary: nn.Module | None = None,
    ) -> None:
        super().__init__()
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise ValueError(f"n_tokens must be a square number, got {n_tokens}")
        self.n_tokens, self.hidden = n_tokens, hidden
        channels = list(channels or [4, 16, 64, 256, 1024])
        self.convs = None
        if use_map:
            layers: list[nn.Module] = []
            c_in = 1
            for c_out in channels:
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
                c_in = c_out
            layers += [nn.AdaptiveAvgPool2d(side + 4), nn.Conv2d(c_in, hidden, 5)]
            self.convs = nn.Sequential(*layers)
        self.global_proj = nn.Linear(global_dim, n_tokens * hidden) if global_dim else None
        if self.convs is None and self.global_proj is None:
            raise ValueError("the prompt learner needs the map, the global feature, or both")
        # The reference draws the base prompts from randn for a 4096-d LLaMA; scaling to the LLM's
        # embedding std keeps them on the scale of real token embeddings for any LLM.
        self.base_prompts = nn.Parameter(torch.randn(n_tokens, hidden) * init_std)
        self.embed_rms = embed_rms
        self.cell_embed = nn.Parameter(torch.randn(n_tokens, hidden) * init_std) if embed_rms else None
        self.side = side
        self.cell_evidence = None
        if cell_evidence:
            if not use_map:
                raise ValueError("cell_evidence needs the map")
            self.cell_evidence = nn.Linear(CELL_STATS, hidden)
            nn.init.normal_(self.cell_evidence.weight, std=init_std)
            nn.init.zeros_(self.cell_evidence.bias)
        if summary is not None and not use_map:
            raise ValueError("the map summary needs the map")
        self.summary = summary

    def forward(self, anomaly_map: torch.Tensor | None, global_embed: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, H, W) map and/or (B, D) feature -> (B, 2n (+ summary), hidden): base prompts, map
        tokens (then the map summary's verdict and where tokens)."""
        tokens = None
        if self.convs is not None:
            if anomaly_map is None:
                raise ValueError("prompt learner built for a map but got none")
            tokens = self.convs(anomaly_map).flatten(2).transpose(1, 2)  # (B, n, hidden)
        if self.global_proj is not None:
            if global_embed is None:
                raise ValueError("prompt learner built for the global feature but got none")
            extra = self.global_proj(global_embed).view(-1, self.n_tokens, self.hidden)
            tokens = extra if tokens is None else tokens + extra
        if self.embed_rms is not None:
            tokens = rms_scale(tokens, self.embed_rms) + self.cell_embed
        if self.cell_evidence is not None:
            tokens = tokens + self.cell_evidence(self.cell_stats(anomaly_map))
        base = self.base_prompts.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        parts = [base, tokens]
        if self.summary is not None:
            parts.append(self.summary(anomaly_map).to(tokens.dtype))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def name_cells(self, word_embeddings: torch.Tensor) -> None:
        """Start each cell's embedding at the LLM's own embedding of that cell's position word
        ((n, hidden), row-major), on the word-embedding scale: the hot cell's token then already
        reads like "top left" to the LLM, which only has to copy it into the answer."""
        if self.cell_embed is None or word_embeddings.shape != self.cell_embed.shape:
            raise ValueError(f"cell names need cell embeddings of shape {tuple(word_embeddings.shape)}")
        self.cell_embed.copy_(rms_scale(word_embeddings.float(), self.embed_rms).to(self.cell_embed.dtype))

    def cell_stats(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, n, 2): peak and mean of the map in each cell of the side x side grid,
        cells in row-major order like the tokens (cuts at exact thirds for a 3x3 grid)."""
        peak = F.adaptive_max_pool2d(anomaly_map, self.side)
        mean = F.adaptive_avg_pool2d(anomaly_map, self.side)
        return torch.cat([peak, mean], dim=1).flatten(2).transpose(1, 2).to(anomaly_map.dtype)
