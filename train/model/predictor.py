"""A trained checkpoint as a predictor: what ``ask``, the MLflow pyfunc, the evaluation actors, the
benchmarks and a serving app share, so they all turn images into the same bits.

It takes decoded images (uint8 H x W x 3 RGB of side ``image_size``); reading and resizing files
stays with the callers (``evaluate.data.load_image``, ``pipeline.inference.read_image``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.core.config import ConfigError
from synth.text import answer_phrasings
from train.model.batch import Prediction
from train.model.checkpoint import load_checkpoint
from train.model.config import ModelConfig
from train.model.memory_bank import MIN_IMAGES_FOR_FIT

if TYPE_CHECKING:
    from train.model.anomalygpt import AnomalyGPT
    from train.model.memory_bank import MemoryBank

DEVICES = ("auto", "cpu", "cuda")
BANK_CACHE_BYTES = 512 * 2**20
"""Bytes of memory banks built from references a caller sent (least recently used dropped first): an
all-shot bank of a large preset holds tens of MiB. Pinned banks (a server's own reference folders)
are kept apart and do not count."""


def resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else CPU. ``cuda`` without a GPU is an error naming why."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device cuda: torch sees no CUDA GPU here (check CUDA_VISIBLE_DEVICES); use cpu or auto"
        )
    return device


class Predictor:
    """A checkpoint loaded once, on one device, with its memory banks cached per category."""

    model: AnomalyGPT
    config: ModelConfig
    device: torch.device
    image_size: int
    """Side the images must have (``config.image_size``)."""

    def __init__(
        self,
        model: AnomalyGPT,
        config: ModelConfig,
        device: str | torch.device,
        bank_cache_bytes: int = BANK_CACHE_BYTES,
    ) -> None:
        """Wrap a model already on ``device`` (``from_checkpoint`` is the usual way in)."""
        if bank_cache_bytes < 1:
            raise ValueError(f"bank_cache_bytes must be >= 1, got {bank_cache_bytes}")
        self.model = model.eval()
        self.model.answer_phrasings = answer_phrasings()  # the answers' fixed words, proposed ahead
        self.config = config
        self.device = torch.device(device)
        self.image_size = int(config.image_size)
        self._banks: OrderedDict[tuple[str, str], MemoryBank] = OrderedDict()
        self._bank_cache_bytes = bank_cache_bytes
        self._pinned: dict[str, tuple[str, MemoryBank]] = {}
        """Per category, the content digest and bank of its pinned references (one bank each)."""
        self.bank_hits = self.bank_misses = 0
        """Banks served from the caches and banks built (a server's metrics read them)."""
        self._bank_lock = threading.Lock()  # a server may ask from several threads: build each bank once

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path, device: str = "auto", bank_budget: int | None = None
    ) -> Predictor:
        """Load ``checkpoint`` (``model.safetensors`` + ``config.yaml``) on ``device``: auto, cpu or
        cuda. A broken or mismatched checkpoint is a CheckpointError (exit 2). ``bank_budget``
        replaces the checkpoint's ``memory_bank.max_patches`` (patches per bank layer) for this
        predictor's banks: smaller builds faster and searches faster on large categories."""
        where = resolve_device(device)
        model, config = load_checkpoint(checkpoint, device=where)
        if bank_budget is not None:
            if bank_budget < 1:
                raise ConfigError(f"bank budget must be at least 1 patch per layer, got {bank_budget}")
            config.memory_bank = dataclasses.replace(config.memory_bank, max_patches=bank_budget)
            model.cfg.memory_bank = config.memory_bank
        return cls(model, config, where)

    def to_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """float32 (B, 3, H, W) in [0, 1] on ``self.device`` from uint8 H x W x 3 arrays (the model's
        ``Batch.images`` contract). Converted on the CPU, then moved: the same bits on every device."""
        return self.image_batch(images).float().div_(255.0).to(self.device)

    def image_batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The checked images as one uint8 (B, 3, H, W) tensor on the CPU: what a bank build takes, so
        that hundreds of references are converted to float a chunk at a time (``encode_all``)."""
        if len(images) == 0:
            raise ValueError("no images: pass at least one uint8 H x W x 3 array")
        want = (self.image_size, self.image_size, 3)
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray):
                raise ValueError(f"image {i} is a {type(image).__name__}, not a numpy array {want} uint8")
            if image.dtype != np.uint8:
                raise ValueError(f"image {i} has dtype {image.dtype}; the model takes uint8 RGB {want}")
            if image.shape != want:
                raise ValueError(
                    f"image {i} has shape {image.shape}; the model takes {want} (resize to "
                    f"{self.image_size} px as evaluate.data.load_image does)"
                )
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)

    def memory_bank(
        self,
        category: str,
        references: Sequence[np.ndarray],
        pinned: bool = False,
        cover: Sequence[np.ndarray] = (),
    ) -> MemoryBank:
        """The few-shot bank of ``references`` (normal images of ``category``), built once per
        category and reference content. ``pinned``: the caller's own references (a server's
        reference folder), one bank per category kept for good and replaced when they change;
        otherwise the bank joins a cache bounded in bytes (``bank_cache_bytes``, least recently
        used dropped first), so what clients send cannot grow the memory without bound.
        ``cover``: normals a person confirmed (the feedback loop's): in the bank, not in its
        calibration (``AnomalyGPT.build_memory_bank``'s ``calibrating``); with fewer than two
        references they calibrate too, as references."""
        digest = _content_digest([*references, *cover]) + f"/{len(references)}"
        with self._bank_lock:
            if pinned:
                held = self._pinned.get(category)
                if held is None or held[0] != digest:
                    self._pinned[category] = held = (digest, self._build_bank(category, references, cover))
                else:
                    self.bank_hits += 1
                return held[1]
            key = (category, digest)
            bank = self._banks.get(key)
            if bank is None:
                bank = self._banks[key] = self._build_bank(category, references, cover)
            else:
                self.bank_hits += 1
            self._banks.move_to_end(key)
            while len(self._banks) > 1 and self.cached_bank_bytes > self._bank_cache_bytes:
                self._banks.popitem(last=False)
            return bank

    @property
    def cached_bank_bytes(self) -> int:
        """Bytes held by the banks of references callers sent (pinned banks not counted)."""
        return sum(bank.nbytes for bank in self._banks.values())

    def _build_bank(
        self, category: str, references: Sequence[np.ndarray], cover: Sequence[np.ndarray]
    ) -> MemoryBank:
        self.bank_misses += 1
        if len(references) < 2:  # too few to calibrate on: the cover calibrates too
            references, cover = [*references, *cover], []
        with torch.no_grad():
            probes = self._guard_probes(category, references)  # owners index the calibrating ones
            images = self.image_batch([*references, *cover])
            return self.model.build_memory_bank(images, category, probes, len(references))

    def _guard_probes(
        self, category: str, references: Sequence[np.ndarray]
    ) -> tuple[torch.Tensor, list[int]] | None:
        """Synthetic anomalies of the references for the map guard (``memory_bank.fusion_guard``);
        None where the guard does not run (off, or too few references to hold one out)."""
        mb = self.config.memory_bank
        if not mb.fusion_guard or len(references) < MIN_IMAGES_FOR_FIT:
            return None
        from synth.probes import probe_anomalies  # cv2: only where a bank is guarded, not at start-up

        images, owners = probe_anomalies(references, category, mb.guard_probes, mb.guard_probe_kinds)
        return (self.image_batch(images), owners) if images else None

    def clear_banks(self) -> None:
        """Forget every cached bank (after the model's bank settings changed)."""
        with self._bank_lock:
            self._banks.clear()
            self._pinned.clear()

    def baseline_bank(self, category: str, references: Sequence[np.ndarray]) -> MemoryBank:
        """The plain nearest-neighbour memory of ``references`` (see
        :meth:`AnomalyGPT.build_baseline_bank`); not cached: evaluation builds one per category."""
        with torch.no_grad():
            return self.model.build_baseline_bank(self.image_batch(references), category)

    def predict(
        self,
        images: Sequence[np.ndarray],
        categories: Sequence[str],
        *,
        memory_bank: MemoryBank | None = None,
        questions: str | Sequence[str | None] | None = None,
        generate: bool = True,
        baseline_bank: MemoryBank | None = None,
    ) -> list[Prediction]:
        """Map, score and (with ``generate`` and an LLM) answer per image. ``questions``: one for all
        or one per image; None is the model's bare question, so pass the trained one
        (``synth.text.question_for(category)``). ``baseline_bank`` adds the plain baseline's map."""
        question = questions if questions is None or isinstance(questions, str) else list(questions)
        tensor = self.to_tensor(images)
        self.model.eval()
        with torch.no_grad():
            return self.model.predict(
                tensor,
                list(categories),
                memory_bank=memory_bank,
                question=question,
                generate=generate,
                baseline=baseline_bank,
            )


def _content_digest(images: Sequence[np.ndarray]) -> str:
    """sha256 over the images' shapes, dtypes and pixels: equal references give one bank."""
    digest = hashlib.sha256()
    for image in images:
        array = np.ascontiguousarray(image)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
