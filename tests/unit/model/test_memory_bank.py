"""Memory bank pieces on known inputs: map smoothing and where normal ends (the calibration)."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.config import ConfigError, from_dict
from train.model.config import MemoryBankConfig
from train.model.memory_bank import Calibration, MemoryBank, gaussian_smooth


def _maps_with_peaks(peaks: list[float], size: int = 16) -> torch.Tensor:
    maps = torch.zeros(len(peaks), 1, size, size)
    for i, p in enumerate(peaks):
        maps[i, 0, 3, 5] = p
    return maps


def test_smoothing_removes_a_lone_spike_and_keeps_a_broad_region():
    spike = torch.zeros(1, 1, 64, 64)
    spike[0, 0, 30, 30] = 1.0
    assert float(gaussian_smooth(spike, 4.0).amax()) < 0.02
    blob = torch.zeros(1, 1, 64, 64)
    blob[0, 0, 16:48, 16:48] = 1.0
    assert float(gaussian_smooth(blob, 4.0).amax()) > 0.95
    flat = torch.full((2, 1, 20, 20), 0.3)
    assert torch.allclose(gaussian_smooth(flat, 4.0), flat)  # borders reflected, mass kept
    assert torch.equal(gaussian_smooth(spike, 0.0), spike)


def test_top_of_normal_follows_the_fitted_peak_law_not_the_single_highest_peak():
    torch.manual_seed(0)
    peaks = (0.5 + 0.1 * torch.randn(400)).tolist()
    fitted = Calibration.from_maps(_maps_with_peaks(peaks), false_alarm_rate=0.05)
    assert fitted.top == pytest.approx(0.5 + 1.645 * 0.1, abs=0.02)
    highest = Calibration.from_maps(_maps_with_peaks(peaks))
    assert highest.top == pytest.approx(max(peaks))
    assert highest.top > fitted.top + 0.05  # the highest of 400 peaks sits far out in the tail
    # One odd reference (a defect left in the "good" folder) moves the fitted top much less.
    odd = Calibration.from_maps(_maps_with_peaks([*peaks[:30], 3.0]), false_alarm_rate=0.05)
    assert odd.top < 3.0 * 0.6 and Calibration.from_maps(_maps_with_peaks([*peaks[:30], 3.0])).top == 3.0


def test_too_few_references_to_fit_use_their_highest_peak():
    two = Calibration.from_maps(_maps_with_peaks([0.4, 0.7]), false_alarm_rate=0.05)
    assert two.top == pytest.approx(0.7)
    assert two.level == pytest.approx((0.4 + 0.7) / (2 * 16 * 16))


def test_bank_maps_are_smoothed_alike_for_references_and_queries():
    torch.manual_seed(0)
    refs = [torch.randn(3, 8, 8, 8)]
    sharp = MemoryBank.from_patch_maps(refs, shots=3)
    smooth = MemoryBank.from_patch_maps(refs, shots=3, smoothing=2.0)
    query = [torch.randn(1, 8, 8, 8)]
    a, b = sharp.distance_map(query, (32, 32)), smooth.distance_map(query, (32, 32))
    assert torch.allclose(gaussian_smooth(a, 2.0), b, atol=1e-6)
    assert float(b.std()) < float(a.std())
    assert smooth.subsample(100).smoothing == 2.0


@pytest.mark.parametrize(("key", "value"), [("smoothing", -1.0), ("false_alarm_rate", 0.5)])
def test_bad_bank_settings_are_refused(key, value):
    with pytest.raises(ValueError, match=f"memory_bank.{key}"):
        MemoryBankConfig(**{key: value})


@pytest.mark.parametrize("pair", [[0.3, 0.1], [0.1, float("nan")]])
def test_a_measured_one_shot_calibration_must_rise(pair):
    with pytest.raises(ConfigError, match="one_shot"):
        from_dict(MemoryBankConfig, {"one_shot": {"grass": {"nn": [0.1, 0.3], "decoder": pair}}})
    with pytest.raises(ConfigError, match="one_shot"):
        from_dict(MemoryBankConfig, {"one_shot": {"grass": {"nn": pair}}})
    loaded = from_dict(MemoryBankConfig, {"one_shot": {"grass": {"nn": [0.1, 0.3]}}})
    assert loaded.one_shot["grass"].nn == (0.1, 0.3) and loaded.one_shot["grass"].decoder is None
