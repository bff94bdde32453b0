"""Collectives that check where their tensors live before torch.distributed sees them.

NCCL (GPU training) accepts only CUDA tensors on the rank's own device; gloo (CPU) only CPU
tensors. A tensor built on the wrong device fails deep inside the backend with a message that
names neither the tensor nor the fix, and only on the first real GPU run. Every collective of
the training loop goes through here, so a CPU test with the engine's device set to anything
else catches the mistake.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class CollectiveDeviceError(RuntimeError):
    """A tensor given to a collective lives on another device than the engine's."""


def check_device(tensor: torch.Tensor, device: torch.device | str, what: str) -> None:
    """Raise naming ``what`` unless ``tensor`` is on ``device`` (index included: NCCL needs the
    rank's own GPU)."""
    expected = torch.device(device)
    actual = tensor.device
    if actual.type != expected.type or (expected.index is not None and actual.index != expected.index):
        raise CollectiveDeviceError(
            f"{what} is on {actual} but the engine runs on {expected}: build it on the engine's device"
        )


def all_reduce_sum(tensor: torch.Tensor, device: torch.device | str, what: str) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (device checked first); returns it."""
    check_device(tensor, device, what)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_ranks_agree(flag: bool, device: torch.device | str) -> bool:
    """True only if ``flag`` is true on every rank (one small MIN all-reduce on ``device``)."""
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
