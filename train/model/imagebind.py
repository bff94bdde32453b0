"""ImageBind-Huge vision tower, written here, loading the official ``imagebind_huge.pth`` key layout.

Only the vision modality is built. Patch features are the raw residual stream after the chosen
blocks (no final LayerNorm), as AnomalyGPT's modified trunk returns them; the global embedding is
LayerNorm -> CLS -> Linear (no bias) -> L2 normalisation. The width, depth and output size are read
from the checkpoint, so a small-width checkpoint in the same layout loads with the same code.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from train.model.encoder_base import EncoderOutput, ImageEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PRE = "modality_preprocessors.vision."
TRUNK = "modality_trunks.vision."
HEAD = "modality_heads.vision."
# Official key -> our parameter name (block parameters keep their names under TRUNK).
KEY_MAP = {
    PRE + "rgbt_stem.proj.1.weight": "stem.weight",
    PRE + "cls_token": "cls_token",
    PRE + "pos_embedding_helper.pos_embed": "pos_embed",
    TRUNK + "pre_transformer_layer.0.weight": "pre_ln.weight",
    TRUNK + "pre_transformer_layer.0.bias": "pre_ln.bias",
    HEAD + "0.weight": "head_ln.weight",
    HEAD + "0.bias": "head_ln.bias",
    HEAD + "2.weight": "head_proj.weight",
}


class _Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block (names match ImageBind's BlockWithMasking)."""

    def __init__(self, width: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, bias=True, batch_first=True)
        self.norm_1 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _Mlp(width, mlp_hidden)
        self.norm_2 = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.norm_2(x))


class ImageBindVisionEncoder(ImageEncoder):
    """ViT with a (2, 14, 14) Conv3d patch stem over the image repeated into 2 frames."""

    default_layers = (7, 15, 23, 31)

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        out_dim: int,
        mlp_hidden: int,
        grid: int = 16,
        patch: int = 14,
    ) -> None:
        super().__init__(CLIP_MEAN, CLIP_STD)
        self.patch, self.grid = patch, grid
        self.stem = nn.Conv3d(3, width, kernel_size=(2, patch, patch), stride=(2, patch, patch), bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, width))
        self.pre_ln = nn.LayerNorm(width, eps=1e-6)
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_hidden) for _ in range(depth))
        self.head_ln = nn.LayerNorm(width, eps=1e-6)
        self.head_proj = nn.Linear(width, out_dim, bias=False)
        self.layers = list(self.default_layers)
        self.channels = [width] * len(self.layers)
        self.embed_dim = out_dim

    def set_layers(self, layers: list[int] | None) -> None:
        layers = list(layers if layers is not None else self.default_layers)
        if not layers or min(layers) < 0 or max(layers) >= len(self.blocks):
            raise ValueError(f"encoder.layers must be in [0, {len(self.blocks) - 1}], got {layers}")
        self.layers = layers
        self.channels = [self.cls_token.shape[-1]] * len(layers)

    def _positions(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid_pos.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        # Two identical frames through a Conv3d equal one Conv2d with the kernel summed over time.
        x = F.conv2d(self.normalise(images), self.stem.weight.sum(dim=2), stride=self.patch)
        b, c, h, w = x.shape
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        tokens = self.pre_ln(tokens + self._positions(h, w))
        maps = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.layers:
                maps.append(tokens[:, 1:].transpose(1, 2).reshape(b, c, h, w))
        embed = F.normalize(self.head_proj(self.head_ln(tokens)[:, 0]), dim=-1)
        return EncoderOutput(maps, embed)

    @classmethod
    def to_official(cls, name: str) -> str:
        """Our parameter name -> the key in imagebind_huge.pth."""
        inverse = {v: k for k, v in KEY_MAP.items()}
        return inverse.get(name) or TRUNK + name

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, torch.Tensor],
        heads: int = 16,
        layers: list[int] | None = None,
        source: str = "",
    ) -> ImageBindVisionEncoder:
        """Build from an official-layout state dict (other modalities are ignored)."""
        vision = {k: v for k, v in state.items() if k.startswith((PRE, TRUNK, HEAD))}
        if PRE + "rgbt_stem.proj.1.weight" not in vision:
            raise KeyError(f"{source}: no ImageBind vision weights ({PRE}rgbt_stem.proj.1.weight missing)")
        stem = vision[PRE + "rgbt_stem.proj.1.weight"]
        width, patch = stem.shape[0], stem.shape[-1]
        depth = 1 + max(
            int(k[len(TRUNK) + 7 :].split(".")[0]) for k in vision if k.startswith(TRUNK + "blocks.")
        )
        grid = round((vision[PRE + "pos_embedding_helper.pos_embed"].shape[1] - 1) ** 0.5)
        out_dim = vision[HEAD + "2.weight"].shape[0]
        mlp_hidden = vision[TRUNK + "blocks.0.mlp.fc1.weight"].shape[0]
        if width % heads:
            raise ValueError(f"{source}: width {width} is not divisible by encoder.heads={heads}")
        model = cls(width, depth, heads, out_dim, mlp_hidden, grid=grid, patch=patch)
        ours = {KEY_MAP.get(k, k[len(TRUNK) :] if k.startswith(TRUNK) else k): v for k, v in vision.items()}
        missing, unexpected = model.load_state_dict(ours, strict=False)
        if missing or unexpected:
            raise KeyError(
                f"{source}: ImageBind vision keys do not match; "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.set_layers(layers)
        return model.freeze()

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | None, layers: list[int] | None = None, heads: int = 16
    ) -> ImageBindVisionEncoder:
        """Load ``imagebind_huge.pth`` (tensors only, never arbitrary pickles) or a .safetensors copy."""
        state = read_checkpoint(path)
        return cls.from_state_dict(state, heads=heads, layers=layers, source=str(path))


def read_checkpoint(path: str | Path | None) -> dict[str, torch.Tensor]:
    """The tensors of ``imagebind_huge.pth`` (weights_only: never arbitrary pickles) or a .safetensors."""
    if path is None:
        raise ValueError(
            "model.encoder.checkpoint is required for imagebind_huge (path to imagebind_huge.pth)"
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.encoder.checkpoint: no file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)
