"""Few-shot memory bank: normal reference patches of one category, scored by nearest neighbour."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def with_rotations(images: torch.Tensor) -> torch.Tensor:
    """The images and their 90/180/270-degree rotations (exact for square inputs)."""
    return torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])


@dataclass
class MemoryBank:
    """Per encoder layer, every patch of the k normal references as unit vectors (N_l, C_l).

    Raw encoder features, no decoder projection, no coreset subsampling, as the reference."""

    features: list[torch.Tensor]
    category: str | None = None
    shots: int = 0

    @classmethod
    def from_patch_maps(cls, patch_maps: list[torch.Tensor], category: str | None, shots: int) -> MemoryBank:
        feats = [
            F.normalize(m.flatten(2).transpose(1, 2).reshape(-1, m.shape[1]), dim=-1) for m in patch_maps
        ]
        return cls([f.detach() for f in feats], category, shots)

    def anomaly_map(
        self, patch_maps: list[torch.Tensor], size: tuple[int, int], chunk: int = 4096
    ) -> torch.Tensor:
        """1 - max cosine similarity to the bank, upsampled per layer and averaged: (B, 1, H, W)."""
        if len(patch_maps) != len(self.features):
            raise ValueError(f"memory bank has {len(self.features)} layers, query has {len(patch_maps)}")
        sims = []
        for fmap, bank in zip(patch_maps, self.features, strict=True):
            b, c, h, w = fmap.shape
            query = F.normalize(fmap.flatten(2).transpose(1, 2).reshape(-1, c), dim=-1)
            bank = bank.to(query.device, query.dtype)
            best = torch.cat([(q @ bank.T).amax(dim=1) for q in query.split(chunk)])
            sim = best.reshape(b, 1, h, w)
            sims.append(F.interpolate(sim, size=size, mode="bilinear", align_corners=True))
        return 1.0 - torch.stack(sims).mean(0)
