"""Evaluation actors on GPUs: fractions share a GPU; impossible settings are refused up front."""

from __future__ import annotations

import pytest

from evaluate.config import EvaluateConfig
from evaluate.job import actor_resources


def test_actors_take_a_share_of_a_gpu_only_on_gpus():
    assert actor_resources(EvaluateConfig(workers=2, threads_per_worker=1), 2.0) == {
        "num_cpus": 1.0,
        "num_gpus": 0,
    }
    shared = actor_resources(EvaluateConfig(workers=4, use_gpu=True, gpus_per_worker=0.25), 16.0)
    assert shared == {"num_cpus": 1.0, "num_gpus": 0.25}  # four actors on one GPU
    assert actor_resources(EvaluateConfig(workers=2, use_gpu=True), 16.0)["num_gpus"] == 1.0
    # Never more CPUs than the cluster's share per actor: the actors would wait forever.
    assert actor_resources(EvaluateConfig(workers=4, threads_per_worker=4), 2.0)["num_cpus"] == 0.5


@pytest.mark.parametrize("gpus", [0.0, -1.0, 1.5])
def test_gpus_per_worker_must_be_a_share_or_whole_gpus(gpus):
    with pytest.raises(ValueError, match="gpus_per_worker"):
        EvaluateConfig(gpus_per_worker=gpus)
    EvaluateConfig(gpus_per_worker=2.0)
