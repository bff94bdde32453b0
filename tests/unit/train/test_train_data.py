"""Per-rank batches: the samples of a step do not depend on the worker count; reads repeat exactly."""

from __future__ import annotations

import pytest
import torch

from train.config import AugmentConfig
from train.data import INSTRUCTION_CATEGORY, BatchSource, Stream, rank_positions
from train.instruct import read_instruction_set
from train.shard_reader import index_shards


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
    # Global batch 4 with micro 2 (one pair): one worker accumulates micro-steps 2s and 2s+1, two
    # workers each run micro-step s once. Over an optimizer step they see the same 2 pairs.
    one = source(index, [], 0, 1)
    two = [source(index, [], r, 2) for r in range(2)]
    for step in range(14):  # past an epoch boundary (24 pairs / 2 per step = 12 steps)
        a = [one.anomaly(2 * step), one.anomaly(2 * step + 1)]
        b = [s.anomaly(step) for s in two]
        keys_a = sorted(_key(x, i) for x in a for i in range(2))
        keys_b = sorted(_key(x, i) for x in b for i in range(2))
        assert keys_a == keys_b
        # the per-micro-batch seed follows the samples, not the worker count
        assert sorted((x.seed, _key(x, 0)) for x in a) == sorted((x.seed, _key(x, 0)) for x in b)


def test_anomaly_micro_batches_are_normal_synthetic_pairs(tiny_shards):
    index = index_shards(tiny_shards)
    src = BatchSource(index, [], image_size=64, micro=4, rank=0, world=1, seed=0, augment=AugmentConfig())
    seen = []
    for j in range(len(index.pairs()) // 2):  # one epoch: 24 pairs, 2 per micro-batch
        batch = src.anomaly(j)
        assert len(batch.sources) == 4
        for n, s in ((0, 1), (2, 3)):
            # the normal first, then its own synthetic version: same image, same category
            assert batch.sources[n] == batch.sources[s] and batch.categories[n] == batch.categories[s]
            assert batch.masks[n].sum() == 0 and batch.conversations[n][1]["value"].startswith("No")
            answer = batch.conversations[s][1]["value"]
            assert (batch.masks[s].sum() > 0) == answer.startswith("Yes")
            seen.append(batch.sources[n])
    # every pair once per epoch; per_image 1, so every normal source once
    normals = [r.source for r in index.samples if r.is_normal]
    assert sorted(seen) == sorted(normals) and len(seen) == 24
    synthetic = sum(r.label for r in index.samples)
    assert synthetic >= 20  # the fallbacks (label 0) are rare: the micro-batches are half anomalous


def test_both_members_of_a_pair_get_the_same_augmentation(tiny_shards):
    index = index_shards(tiny_shards)
    src = BatchSource(index, [], image_size=64, micro=4, rank=1, world=2, seed=5, augment=AugmentConfig())
    seeds = []
    real = src.augment
    src.augment = lambda image, seed: (seeds.append(seed), real(image, seed))[1]
    for j in range(3):
        src.anomaly(j)
    assert len(seeds) == 12
    assert seeds[0::2] == seeds[1::2]  # normal and twin alike
    assert len(set(seeds[0::2])) == 6  # each pair its own


def test_odd_micro_batches_cannot_hold_pairs(tiny_shards):
    index = index_shards(tiny_shards)
    with pytest.raises(ValueError, match=r"micro_batch_size must be even for anomaly pairing.*got 3"):
        BatchSource(index, [], image_size=64, micro=3, rank=0, world=1, seed=0, augment=AugmentConfig())


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
    assert batch.seed == again.seed and batch.sources == again.sources
    assert len({src.anomaly(j).seed for j in range(6)}) == 6
    plain = source(index, [], 1, 2, augment=False)
    # augmentation changes pixels (each transform applies with p=0.5, so look at a few batches)
    assert any(not torch.equal(src.anomaly(j).images, plain.anomaly(j).images) for j in range(4))


def test_instruction_batches_have_no_masks(tiny_shards, instruct_set):
    index = index_shards(tiny_shards)
    instructions = read_instruction_set(instruct_set)
    src = source(index, instructions, 0, 1)
    batch = src.instruction(0)
    assert batch.masks is None and batch.categories == [INSTRUCTION_CATEGORY] * 2
    assert batch.sources is None
    assert batch.images.shape == (2, 3, 64, 64)
    assert batch.conversations[0] in [s.conversation for s in instructions]
    assert batch.seed == src.instruction(0).seed != src.instruction(1).seed


@pytest.mark.parametrize("size", [32, 96])
def test_images_are_resized_to_the_model_size(tiny_shards, size):
    index = index_shards(tiny_shards)
    src = BatchSource(index, [], image_size=size, micro=2, rank=0, world=1, seed=0, augment=AugmentConfig())
    batch = src.anomaly(0)
    assert batch.images.shape[-2:] == batch.masks.shape[-2:] == (size, size)
    assert set(batch.masks.unique().tolist()) <= {0.0, 1.0}
