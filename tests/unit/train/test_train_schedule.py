"""LR schedule, step counts and the anomaly/instruction alternation."""

from __future__ import annotations

import itertools
import math

import pytest

from train.config import OptimizerConfig, ScheduleConfig, TrainConfig
from train.schedule import (
    WarmupDecay,
    count_instruction_steps,
    is_instruction_step,
    micro_step_kind,
    parameter_groups,
    total_steps,
)


def test_warmup_then_cosine_to_floor():
    f = WarmupDecay(ScheduleConfig(warmup_ratio=0.1, decay="cosine", min_lr_ratio=0.1), total=100)
    assert f.warmup == 10
    assert f(0) == pytest.approx(0.1)  # first step trains at lr / warmup, not 0
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_linear_decay_matches_warmup_decay_lr():
    f = WarmupDecay(ScheduleConfig(warmup_ratio=0.2, decay="linear"), total=50)
    assert f(10) == pytest.approx(1.0)
    assert f(30) == pytest.approx(0.5)
    assert f(50) == pytest.approx(0.0)


def test_no_warmup_starts_at_peak():
    assert WarmupDecay(ScheduleConfig(warmup_ratio=0.0), total=10)(0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("fraction", "pattern"),
    [(0.5, "AIAIAIAI"), (0.25, "AAAIAAAI"), (0.0, "AAAAAAAA"), (1 / 3, "AAIAAIAA")],
)
def test_alternation_pattern(fraction, pattern):
    got = "".join("I" if is_instruction_step(m, fraction) else "A" for m in range(8))
    assert got == pattern
    for m in range(40):
        assert count_instruction_steps(m, fraction) == sum(is_instruction_step(k, fraction) for k in range(m))


def test_total_steps_from_epochs_counts_anomaly_samples_only():
    cfg = TrainConfig(epochs=2, global_batch_size=8, micro_batch_size=2, instruction_fraction=0.5)
    assert total_steps(cfg, 100) == math.ceil(2 * 100 / 4)  # 4 anomaly samples per step
    assert total_steps(TrainConfig(max_steps=7), 100) == 7


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 2 / 3])
def test_each_stream_reads_consecutive_batches(fraction):
    kinds = [micro_step_kind(m, fraction) for m in range(30)]
    for kind in (False, True):
        indices = [j for instruction, j in kinds if instruction == kind]
        assert indices == list(range(len(indices)))
    assert sum(instruction for instruction, _ in kinds) == count_instruction_steps(30, fraction)


def _adapted_model():
    torch = pytest.importorskip("torch")
    model = torch.nn.Module()
    model.head = torch.nn.Linear(2, 2)
    model.lora_A = torch.nn.Linear(2, 1, bias=False)
    model.frozen = torch.nn.Linear(2, 2)
    model.frozen.requires_grad_(False)
    return model


def test_lora_adapters_get_their_own_learning_rate():
    model = _adapted_model()
    groups = parameter_groups(model, OptimizerConfig(lr=1e-3, lora_lr=2e-4))
    assert [g["lr"] for g in groups] == [1e-3, 2e-4]
    assert [len(g["params"]) for g in groups] == [2, 1]  # head weight + bias; the frozen layer is out
    assert groups[1]["params"][0] is model.lora_A.weight


def test_one_group_without_lora_lr():
    groups = parameter_groups(_adapted_model(), OptimizerConfig(lr=1e-3))
    assert [(g["lr"], len(g["params"])) for g in groups] == [(1e-3, 3)]


def test_no_trainable_parameters_is_an_error():
    model = _adapted_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        parameter_groups(model, OptimizerConfig())
