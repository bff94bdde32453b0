"""Collectives run on the engine's device: checked on CPU, where no GPU is needed to catch a
tensor that NCCL would refuse."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from train import collectives, loop
from train.collectives import CollectiveDeviceError, all_reduce_sum, check_device
from train.config import TrainJobConfig
from train.context import WorkerContext
from train.model.batch import Batch


def test_a_cpu_tensor_for_a_cuda_engine_is_refused_by_name():
    with pytest.raises(CollectiveDeviceError, match="the sums is on cpu but the engine runs on cuda:0"):
        check_device(torch.zeros(2), torch.device("cuda", 0), "the sums")
    with pytest.raises(CollectiveDeviceError):
        check_device(torch.zeros(2, device="meta"), "cpu", "x")
    check_device(torch.zeros(2), "cpu", "x")


def test_all_reduce_runs_on_a_real_gloo_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        summed = all_reduce_sum(torch.tensor([1.0, 2.0]), "cpu", "t")
        assert summed.tolist() == [1.0, 2.0]
        assert collectives.all_ranks_agree(True, "cpu") and not collectives.all_ranks_agree(False, "cpu")
    finally:
        dist.destroy_process_group()


class _Reduced(Exception):
    pass


class _Engine:
    """What ``_train_step`` needs of a DeepSpeed engine, on a device with no data (``meta``)."""

    device = torch.device("meta")

    def __call__(self, batch):
        return {name: torch.tensor(1.0) for name in loop.LOSS_TERMS}

    def backward(self, loss):
        pass

    def step(self):
        pass


class _Source:
    def anomaly(self, j):
        return Batch(torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8), ["a", "a"], [[], []])

    instruction = anomaly


def test_the_step_sums_are_built_and_reduced_on_the_engine_device(monkeypatch):
    """The loss sums of a step went through a CPU all-reduce whatever the engine's device: NCCL
    fails on the first GPU step. Here the engine runs on ``meta``; the sums must follow it."""
    seen: list[torch.device] = []

    def spy(tensor, op=None):
        seen.append(tensor.device)
        raise _Reduced

    monkeypatch.setattr(collectives.dist, "all_reduce", spy)
    ctx = WorkerContext(
        TrainJobConfig(), {}, None, [], fraction=0.5, total_steps=1, accumulation=2, offload_optimizer=False,
        precision="fp32", fingerprint="", mlflow_run_id="", mlflow_uri="",
    )  # fmt: skip
    with pytest.raises(_Reduced):
        loop._train_step(_Engine(), _Source(), 0, ctx, world=2, global_batch=8)
    assert seen == [torch.device("meta")]
