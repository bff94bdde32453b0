"""Turn planned (image, k) items into encoded WebDataset samples: the work of one shard task.

Randomness is seeded per source image and sample (seed, crc32(relpath), k), never per worker, so
every sample is the same whichever task, worker or machine makes it. Every sample's JSON names its
``pair``: the key of the normal sample of the same source image (the normal names itself), so
training can put each normal image and its synthetic twin in the same batch.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from synth import text
from synth.config import SynthConfig
from synth.datasets import ImageRecord, load_rgb
from synth.nsa import category_spec, synthesize

log = logging.getLogger(__name__)

CACHE_IMAGES = 128
QUESTION_STREAM = 1
"""Appended to a sample's seed for the draw of its question's form."""


@dataclass(frozen=True)
class Source:
    """A normal image as the worker needs it (picklable, no PIL/Path objects)."""

    path: str
    relpath: str
    category: str


@dataclass
class Encoded:
    key: str
    files: list[tuple[str, bytes]]
    """(extension, bytes) in tar order: png, mask.png, json."""
    category: str
    kind: str
    """``normal``, ``synthetic`` or ``fallback`` (synthesis failed after all retries)."""


@dataclass
class MakerStats:
    skipped: list[dict[str, str]] = field(default_factory=list)


class SampleMaker:
    """Makes the samples of one shard; decoded images are cached (sources repeat within a category)."""

    def __init__(self, sources: list[Source], cfg: SynthConfig, seed: int) -> None:
        self.sources = sources
        self.cfg = cfg
        self.seed = seed
        self.by_category: dict[str, list[int]] = {}
        for i, s in enumerate(sources):
            self.by_category.setdefault(s.category, []).append(i)
        self._cache: OrderedDict[int, np.ndarray | None] = OrderedDict()
        self._bad: dict[int, str] = {}
        self._augment = _Augmenter() if cfg.augment else None
        self.stats = MakerStats()

    def make(self, index: int, source_index: int, k: int, pair_index: int) -> Encoded | None:
        """Sample ``index`` (its key): normal if ``k == 0`` else the k-th anomaly; None if unreadable.

        ``pair_index`` is the index of the normal (k=0) sample of the same source image.
        """
        src = self.sources[source_index]
        target = self.image(source_index)
        if target is None:
            return None
        key, pair = sample_key(index), sample_key(pair_index)
        if k == 0:
            return self._encode(key, pair, src, k, target, None, [], "normal", None)
        rng = np.random.default_rng([self.seed, zlib.crc32(src.relpath.encode()), k])
        donor = self._pick_donor(source_index, rng)
        if donor is not None:
            spec = category_spec(src.category, self.cfg.bounds_file)
            donor_image = self.image(donor)
            for _ in range(self.cfg.retries):
                result = synthesize(target, donor_image, spec, self.cfg, rng, self._augment)
                if result is not None:
                    words = text.region_positions(result.regions)
                    donor_rel = self.sources[donor].relpath
                    return self._encode(
                        key, pair, src, k, result.image, result.mask, words, "synthetic", donor_rel
                    )
        return self._encode(key, pair, src, k, target, None, [], "fallback", None)

    def image(self, i: int) -> np.ndarray | None:
        """Decoded, resized RGB of source ``i``; None (recorded in stats) when the file cannot be decoded."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        try:
            rgb = load_rgb(self.sources[i].path)
            size = self.cfg.size
            if rgb.shape[:2] != (size, size):
                rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)
        except Exception as exc:  # a truncated/corrupt file: skip it, say why
            rgb = None
            if i not in self._bad:
                reason = f"undecodable image: {type(exc).__name__}: {exc}"
                self._bad[i] = reason
                log.warning("skipping %s (%s)", self.sources[i].path, reason)
                self.stats.skipped.append({"path": self.sources[i].relpath, "reason": reason})
        self._cache[i] = rgb
        if len(self._cache) > CACHE_IMAGES:
            self._cache.popitem(last=False)
        return rgb

    def _pick_donor(self, i: int, rng: np.random.Generator) -> int | None:
        """Another normal image (same category by default); undecodable ones are drawn around."""
        pool = self.by_category[self.sources[i].category] if self.cfg.source == "same_category" else None
        candidates = [j for j in (pool if pool is not None else range(len(self.sources))) if j != i]
        if not candidates:
            candidates = [i]  # a category with one image pastes from itself
        while candidates:
            j = candidates.pop(int(rng.integers(len(candidates))))
            if self.image(j) is not None:
                return j
        return None

    def _encode(
        self,
        key: str,
        pair: str,
        src: Source,
        k: int,
        image: np.ndarray,
        mask: np.ndarray | None,
        positions: list[str],
        kind: str,
        donor: str | None,
    ) -> Encoded:
        if mask is None:
            mask = np.zeros(image.shape[:2], np.uint8)
        level = [cv2.IMWRITE_PNG_COMPRESSION, self.cfg.png_compression]
        # Its own stream, so that the question never moves a synthesis draw.
        stream = [self.seed, zlib.crc32(src.relpath.encode()), k, QUESTION_STREAM]
        described = bool(np.random.default_rng(stream).random() >= self.cfg.bare_question_share)
        ok1, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), level)
        ok2, mask_png = cv2.imencode(".png", mask, level)
        if not (ok1 and ok2):
            raise RuntimeError(f"PNG encoding failed for {src.relpath}")
        meta = {
            "category": src.category,
            "label": 1 if kind == "synthetic" else 0,
            "question": text.question_for(src.category, described),
            "answer": text.answer(positions),
            "positions": positions,
            "source": src.relpath,
            "pair": pair,
            "conversation": text.conversation(src.category, positions, described),
            "kind": kind,
            "patch_source": donor,
        }
        body = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
        return Encoded(
            key,
            [("png", png.tobytes()), ("mask.png", mask_png.tobytes()), ("json", body)],
            src.category,
            kind,
        )


class _Augmenter:
    """rot90 and albumentations on the source patch, seeded from the sample's rng (reproducible)."""

    def __init__(self) -> None:
        import albumentations as A

        self.transform = A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.7),
                A.GaussianBlur(blur_limit=(3, 3), p=0.2),
            ],
            seed=0,
        )

    def __call__(
        self, patch: np.ndarray, fg: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(patch, fg) transformed together; a rot90 (k in 0..3) swaps height and width when k is odd."""
        turns = int(rng.integers(4))
        patch = np.rot90(patch, turns)
        fg = None if fg is None else np.rot90(fg, turns)
        self.transform.set_random_seed(int(rng.integers(2**31 - 1)))
        if fg is None:
            return self.transform(image=np.ascontiguousarray(patch))["image"], None
        out = self.transform(image=np.ascontiguousarray(patch), mask=fg.astype(np.uint8))
        return out["image"], out["mask"] > 0


def sample_key(index: int) -> str:
    """The WebDataset key of sample ``index`` (unique across all shards of a run)."""
    return f"{index:08d}"


def sources_from_records(records: list[ImageRecord]) -> list[Source]:
    return [Source(str(Path(r.path)), r.relpath, r.category) for r in records]
