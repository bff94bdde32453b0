"""Per-rank batches: which samples a rank trains on at each micro-step, decoded and augmented.

Each stream is an endless sequence of epochs, each a seeded permutation of its items. The anomaly
stream's items are PAIRS (a normal image, then its own synthetic twin, as the reference batches
them), so every anomaly micro-batch is exactly half normal; the instruction stream's items are
samples. Micro-step ``j`` of a stream takes positions ``[j*n*world, (j+1)*n*world)`` with ``n``
items per rank (``micro / 2`` pairs, or ``micro`` instruction samples); rank ``r`` takes its
``n``-long slice. Everything is a function of (seed, step), so a resumed or restarted worker
continues exactly, and the samples of an optimizer step over all ranks do not depend on how many
ranks share them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from train.config import AugmentConfig
from train.instruct import InstructionSample
from train.model.batch import Batch
from train.shard_reader import DataError, ShardIndex, decode_png

if TYPE_CHECKING:
    import torch

INSTRUCTION_CATEGORY = "object"  # the reference matches instruction images against "object" prompts


class Stream:
    """Endless seeded shuffle of ``n`` items: position -> item index."""

    def __init__(self, n: int, seed: int, salt: int) -> None:
        self.n, self.seed, self.salt = n, seed, salt

    @functools.lru_cache(maxsize=2)  # noqa: B019 - two epochs in flight at most; one Stream per run
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.salt, epoch]).permutation(self.n)

    def item(self, position: int) -> int:
        return int(self._order(position // self.n)[position % self.n])


def rank_positions(micro_step: int, micro: int, rank: int, world: int) -> range:
    """Stream positions rank ``rank`` reads at its ``micro_step``-th micro-step of one stream."""
    start = micro_step * micro * world + rank * micro
    return range(start, start + micro)


class Augmenter:
    """Photometric albumentations, reseeded per sample position so results repeat on resume."""

    def __init__(self, cfg: AugmentConfig) -> None:
        import albumentations as A

        self.enabled = cfg.enabled
        self.pipeline = A.Compose(
            [
                A.ColorJitter(
                    brightness=cfg.brightness,
                    contrast=cfg.contrast,
                    saturation=cfg.saturation,
                    hue=0.0,
                    p=cfg.p,
                ),
                A.GaussNoise(std_range=(0.0, cfg.noise_std), p=cfg.p),
            ]
        )

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        if not self.enabled:
            return image
        self.pipeline.set_random_seed(seed)
        return self.pipeline(image=image)["image"]


ANOMALY, INSTRUCTION = 0, 1  # stream ids (seed salts)
BATCH_SALT = 7  # non-zero, last: keeps Batch.seed apart from the per-position augmentation seeds


class BatchSource:
    """The batches of one rank: ``anomaly(j)`` and ``instruction(j)`` for the j-th micro-step of each."""

    def __init__(
        self,
        index: ShardIndex,
        instructions: list[InstructionSample],
        *,
        image_size: int,
        micro: int,
        rank: int,
        world: int,
        seed: int,
        augment: AugmentConfig,
    ) -> None:
        if micro < 2 or micro % 2:
            raise ValueError(
                f"micro_batch_size must be even for anomaly pairing (each normal image with its "
                f"synthetic twin in the same micro-batch), got {micro}"
            )
        self.index, self.instructions = index, instructions
        self.size, self.micro, self.rank, self.world, self.seed = image_size, micro, rank, world, seed
        self.pairs = index.pairs()
        if not self.pairs:
            raise DataError(
                f"{index.root}: no synthetic samples to pair with the normals (synth.per_image is 0?)"
            )
        self.anomaly_stream = Stream(len(self.pairs), seed, ANOMALY)
        self.instruction_stream = Stream(max(1, len(instructions)), seed, INSTRUCTION)
        self.augment = Augmenter(augment)

    def anomaly(self, j: int) -> Batch:
        """``micro / 2`` pairs: each normal image followed by its synthetic twin, augmented alike."""
        import torch

        images, masks, categories, conversations, sources = [], [], [], [], []
        positions = rank_positions(j, self.micro // 2, self.rank, self.world)
        for pos in positions:
            aug_seed = self._seed(ANOMALY, pos)  # one seed per pair: the defect is the only difference
            for i in self.pairs[self.anomaly_stream.item(pos)]:
                ref = self.index.samples[i]
                png, mask_png = self.index.read(i)
                images.append(self.augment(self._resize(decode_png(png, "RGB")), aug_seed))
                masks.append(self._resize(decode_png(mask_png, "L"), nearest=True) > 127)
                categories.append(ref.category)
                conversations.append(ref.conversation)
                sources.append(ref.source)
        mask_tensor = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
        seed = self._batch_seed(ANOMALY, positions)
        return Batch(_to_tensor(images), mask_tensor, categories, conversations, sources=sources, seed=seed)

    def instruction(self, j: int) -> Batch:
        from PIL import Image

        images, conversations = [], []
        positions = rank_positions(j, self.micro, self.rank, self.world)
        for pos in positions:
            sample = self.instructions[self.instruction_stream.item(pos)]
            with Image.open(sample.image) as im:
                rgb = np.array(im.convert("RGB"))
            images.append(self.augment(self._resize(rgb), self._seed(INSTRUCTION, pos)))
            conversations.append(sample.conversation)
        n = len(images)
        seed = self._batch_seed(INSTRUCTION, positions)
        return Batch(_to_tensor(images), None, [INSTRUCTION_CATEGORY] * n, conversations, seed=seed)

    def reference_images(self, per_category: int) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
        """Up to ``per_category`` normal training images per category (the first in index order),
        unaugmented, and their sources: the pool few-shot training draws its memory banks from."""
        images: dict[str, torch.Tensor] = {}
        sources: dict[str, list[str]] = {}
        for category, indices in self.index.normals_by_category().items():
            chosen = indices[:per_category]
            arrays = [self._resize(decode_png(self.index.read(i)[0], "RGB")) for i in chosen]
            images[category] = _to_tensor(arrays)
            sources[category] = [self.index.samples[i].source for i in chosen]
        return images, sources

    def _resize(self, array: np.ndarray, nearest: bool = False) -> np.ndarray:
        if array.shape[0] == self.size and array.shape[1] == self.size:
            return array
        from PIL import Image

        # Squash to a square as the reference's Resize((224, 224)) does; masks stay binary.
        method = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
        return np.array(Image.fromarray(array).resize((self.size, self.size), method))

    def _seed(self, stream: int, position: int) -> int:
        return int(np.random.default_rng([self.seed, stream, position]).integers(2**31))

    def _batch_seed(self, stream: int, positions: range) -> int:
        """The micro-batch's seed (``Batch.seed``), from the run seed, the stream and the micro-batch's
        first stream position: that position is fixed by (micro-step, rank, world), and the same
        samples get the same seed whatever the worker count."""
        return int(np.random.default_rng([self.seed, stream, positions.start, BATCH_SALT]).integers(2**31))


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) arrays -> float32 (B, 3, H, W) in [0, 1]."""
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
