"""Per-rank batches: the samples of a step do not depend on the worker count; reads repeat exactly."""

from __future__ import annotations

import pytest
import torch

from train.config import AugmentConfig
from train.data import INSTRUCTION_CATEGORY, BatchSource, Stream, rank_positions
from train.instruct import read_instruction_set
from train.shards import index_shards


def test_stream_is_a_fresh_permutation_each_epoch():
    stream = Stream(10, seed=3, salt=0)
    first = [stream.item(p) for p in range(10)]
    second = [stream.item(p) for p in range(10, 20)]
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    assert [Stream(10, seed=3, salt=0).item(p) for p in range(10)] == first


def test_rank_slices_tile_the_global_positions():
    for world, micro in ((1, 4), (2, 2), (4, 1)):
        got = sorted(p for r in range(world) for p in rank_positions(5, micro, r, world))
        assert got == list(range(5 * micro * world, 6 * micro * world))


def source(index, instructions, rank, world, augment=False):
    return BatchSource(
        index,
        instructions,
        image_size=64,
        micro=2,
        rank=rank,
        world=world,
        seed=0,
        augment=AugmentConfig(enabled=augment),
    )


def _key(batch, i):
    return (batch.categories[i], batch.conversations[i][1]["value"], batch.images[i].sum().item())


def test_global_batch_is_the_same_with_one_or_two_workers(tiny_shards):
    index = index_shards(tiny_shards)
    # Global batch 4 with micro 2: one worker accumulates micro-steps 2s and 2s+1, two workers
    # each run micro-step s once. Over an optimizer step they see the same 4 samples.
    one = source(index, [], 0, 1)
    two = [source(index, [], r, 2) for r in range(2)]
    for step in range(14):  # past an epoch boundary (48 samples / 4 per step = 12 steps)
        a = [one.anomaly(2 * step), one.anomaly(2 * step + 1)]
        b = [s.anomaly(step) for s in two]
        keys_a = sorted(_key(x, i) for x in a for i in range(2))
        keys_b = sorted(_key(x, i) for x in b for i in range(2))
        assert keys_a == keys_b


def test_anomaly_batches_match_the_model_contract_and_repeat(tiny_shards):
    index = index_shards(tiny_shards)
    src = source(index, [], 1, 2, augment=True)
    batch = src.anomaly(3)
    assert batch.images.shape == (2, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.images.min() >= 0.0 and batch.images.max() <= 1.0
    assert batch.masks.shape == (2, 1, 64, 64)
    assert set(batch.masks.unique().tolist()) <= {0.0, 1.0}
    again = source(index, [], 1, 2, augment=True).anomaly(3)  # a restarted worker
    assert torch.equal(batch.images, again.images) and batch.conversations == again.conversations
    plain = source(index, [], 1, 2, augment=False)
    # augmentation changes pixels (each transform applies with p=0.5, so look at a few batches)
    assert any(not torch.equal(src.anomaly(j).images, plain.anomaly(j).images) for j in range(4))


def test_instruction_batches_have_no_masks(tiny_shards, instruct_set):
    index = index_shards(tiny_shards)
    instructions = read_instruction_set(instruct_set)
    batch = source(index, instructions, 0, 1).instruction(0)
    assert batch.masks is None and batch.categories == [INSTRUCTION_CATEGORY] * 2
    assert batch.images.shape == (2, 3, 64, 64)
    assert batch.conversations[0] in [s.conversation for s in instructions]


def test_few_shot_references_are_the_first_normal_of_each_category(tiny_shards):
    index = index_shards(tiny_shards)
    src = BatchSource(
        index,
        [],
        image_size=64,
        micro=2,
        rank=0,
        world=1,
        seed=0,
        augment=AugmentConfig(),
        with_references=True,
    )
    batch = src.anomaly(0)
    assert batch.references.shape == batch.images.shape
    for i, category in enumerate(batch.categories):
        assert torch.equal(batch.references[i], src.references[category])


@pytest.mark.parametrize("size", [32, 96])
def test_images_are_resized_to_the_model_size(tiny_shards, size):
    index = index_shards(tiny_shards)
    src = BatchSource(index, [], image_size=size, micro=2, rank=0, world=1, seed=0, augment=AugmentConfig())
    batch = src.anomaly(0)
    assert batch.images.shape[-2:] == batch.masks.shape[-2:] == (size, size)
    assert set(batch.masks.unique().tolist()) <= {0.0, 1.0}
