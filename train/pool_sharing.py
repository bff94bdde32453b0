"""The few-shot reference pool built once across the workers instead of once on every worker.

Every rank needs the whole pool (any micro-batch may draw a bank of any category), and the pool is
the same on every rank: the frozen encoder's maps of the same images and their calibrations. Built
on each rank, its cost (n^2 one-reference banks per category) is paid world times over for nothing.
Here each rank builds every world-th category and the ranks swap what they built. A category's
entry depends on its own images only, and each rank computes it with the same code and thread
count, so every rank ends with the bits it would have built alone.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from train.model.reference_pool import ReferencePool


def build_shared_pool(
    model: torch.nn.Module,
    images: dict[str, torch.Tensor],
    sources: dict[str, list[str]],
    rank: int,
    world: int,
) -> ReferencePool:
    """The pool of every category in ``images``, this rank building ``sorted(images)[rank::world]``
    and receiving the rest from the other ranks (all ranks must call this together)."""
    mine = sorted(images)[rank::world]
    built = ReferencePool.build(model, {c: images[c] for c in mine}, {c: sources[c] for c in mine})
    if world == 1:
        return built
    parts: list[dict | None] = [None] * world
    dist.all_gather_object(parts, built.categories, group=_object_group())
    merged = {category: entry for part in parts for category, entry in (part or {}).items()}
    missing = sorted(set(images) - set(merged))
    if missing:
        raise RuntimeError(f"reference pool: no rank built categories {missing}")
    return ReferencePool({category: merged[category] for category in images})


def _object_group():
    """A gloo group for pickled objects: NCCL would move them through the GPU (None: the default
    group, already gloo on CPUs)."""
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
