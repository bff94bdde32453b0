"""The few-shot reference pool built once across ranks: two real gloo ranks (processes) each
build part of it and swap, and each ends with the bits one process building all of it has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pool_sharing_worker as worker  # noqa: E402


def test_two_ranks_share_the_work_and_each_holds_the_whole_pool_bit_for_bit(tmp_path):
    from train.model.reference_pool import ReferencePool

    runs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "pool_sharing_worker.py"),
                str(rank),
                "2",
                str(tmp_path / "store"),
                str(tmp_path / f"rank{rank}.pt"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    for run in runs:
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output
    torch.set_num_threads(1)
    images, sources = worker.pool_inputs()
    with torch.no_grad():
        alone = worker.flat(ReferencePool.build(worker.tiny_model(), images, sources))
    assert alone["order"] == list(worker.CATEGORIES)  # the callers' order, not the ranks'
    for rank in range(2):
        shared = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert shared.keys() == alone.keys()
        for key, value in alone.items():
            got = shared[key]
            same = torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value
            assert same, f"rank {rank}: {key} differs from the pool built in one process"


def test_one_rank_builds_everything_without_a_process_group():
    from train.pool_sharing import build_shared_pool

    images, sources = worker.pool_inputs()
    with torch.no_grad():
        pool = build_shared_pool(worker.tiny_model(), images, sources, 0, 1)
    assert sorted(pool.categories) == sorted(worker.CATEGORIES)
