"""Per-rank batches: which samples a rank trains on at each micro-step, decoded and augmented.

Each stream (anomaly shards, instruction data) is an endless sequence of epochs, each a seeded
permutation of its samples. Anomaly micro-step ``j`` takes stream positions
``[j*micro*world, (j+1)*micro*world)``; rank ``r`` takes its ``micro``-long slice. Everything is a
function of (seed, step), so a resumed or restarted worker continues exactly, and the samples of
an optimizer step over all ranks do not depend on how many ranks share them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from train.config import AugmentConfig
from train.instruct import InstructionSample
from train.shards import ShardIndex, decode_png

if TYPE_CHECKING:
    import torch

    from train.model.batch import Batch

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
        with_references: bool = False,
    ) -> None:
        self.index, self.instructions = index, instructions
        self.size, self.micro, self.rank, self.world, self.seed = image_size, micro, rank, world, seed
        self.anomaly_stream = Stream(len(index), seed, 0)
        self.instruction_stream = Stream(max(1, len(instructions)), seed, 1)
        self.augment = Augmenter(augment)
        self.references = self._references() if with_references else None

    def anomaly(self, j: int) -> Batch:
        import torch

        from train.model.batch import Batch

        images, masks, categories, conversations = [], [], [], []
        for pos in rank_positions(j, self.micro, self.rank, self.world):
            i = self.anomaly_stream.item(pos)
            ref = self.index.samples[i]
            png, mask_png = self.index.read(i)
            images.append(self.augment(self._resize(decode_png(png, "RGB")), self._seed(0, pos)))
            masks.append(self._resize(decode_png(mask_png, "L"), nearest=True) > 127)
            categories.append(ref.category)
            conversations.append(ref.conversation)
        refs = None
        if self.references is not None:
            refs = torch.stack([self.references[c] for c in categories])
        mask_tensor = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
        return Batch(_to_tensor(images), mask_tensor, categories, conversations, references=refs)

    def instruction(self, j: int) -> Batch:
        from PIL import Image

        from train.model.batch import Batch

        images, conversations = [], []
        for pos in rank_positions(j, self.micro, self.rank, self.world):
            sample = self.instructions[self.instruction_stream.item(pos)]
            with Image.open(sample.image) as im:
                rgb = np.array(im.convert("RGB"))
            images.append(self.augment(self._resize(rgb), self._seed(1, pos)))
            conversations.append(sample.conversation)
        n = len(images)
        return Batch(_to_tensor(images), None, [INSTRUCTION_CATEGORY] * n, conversations)

    def _resize(self, array: np.ndarray, nearest: bool = False) -> np.ndarray:
        if array.shape[0] == self.size and array.shape[1] == self.size:
            return array
        from PIL import Image

        # Squash to a square as the reference's Resize((224, 224)) does; masks stay binary.
        method = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
        return np.array(Image.fromarray(array).resize((self.size, self.size), method))

    def _seed(self, stream: int, position: int) -> int:
        return int(np.random.default_rng([self.seed, stream, position]).integers(2**31))

    def _references(self) -> dict[str, torch.Tensor]:
        """One normal image per category, the reference's few-shot training reference."""
        refs = {}
        for category, i in self.index.first_normal().items():
            png, _ = self.index.read(i)
            refs[category] = _to_tensor([self._resize(decode_png(png, "RGB"))])[0]
        return refs


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) arrays -> float32 (B, 3, H, W) in [0, 1]."""
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
