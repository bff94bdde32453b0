"""The answer is trained only where the map agrees with the label, and map peaks move towards 0.5."""

from __future__ import annotations

import torch

from train.model import build_model
from train.model.map_reading import agreeing_samples, boundary_gain


def maps_with_peaks(peaks: list[float]) -> torch.Tensor:
    maps = torch.full((len(peaks), 1, 16, 16), 0.05)
    for i, p in enumerate(peaks):
        maps[i, 0, 3, 5] = p
    return maps


def test_agreement_is_the_map_decision_against_the_label():
    maps = maps_with_peaks([0.9, 0.2, 0.6, 0.4])
    labels = torch.tensor([True, False, False, True])
    assert agreeing_samples(maps, labels).tolist() == [True, True, False, False]


def test_gain_keeps_each_peak_on_its_side_and_reaches_the_boundary():
    peaks = [0.97, 0.8, 0.55, 0.45, 0.2, 0.03] * 50
    maps = maps_with_peaks(peaks).requires_grad_(True)
    out = boundary_gain(maps, torch.Generator().manual_seed(0), probability=1.0)
    after = out.detach().flatten(1).amax(1)
    before = torch.tensor(peaks)
    assert torch.equal(after > 0.5, before > 0.5)
    assert bool((after - 0.5).abs().lt(0.05).any())  # some land close to the boundary
    assert bool((after - before).abs().gt(0.05).any())
    out.sum().backward()
    assert maps.grad is not None and maps.grad.abs().sum() > 0
    again = boundary_gain(maps.detach(), torch.Generator().manual_seed(0), probability=1.0)
    assert torch.equal(again, out.detach())
    untouched = boundary_gain(maps.detach(), torch.Generator().manual_seed(0), probability=0.0)
    assert torch.allclose(untouched, maps.detach(), atol=1e-4)


def test_cross_entropy_leaves_out_the_disagreeing_samples(make_cfg, tiny_batch):
    torch.manual_seed(0)
    model = build_model(make_cfg())
    enc = model.encode(tiny_batch.images)
    prefix = model._prefix(enc.global_embed, model._prompts(torch.rand(2, 1, 64, 64), enc.global_embed))
    convs = tiny_batch.conversations
    only_first = model._lm_loss(prefix[:1], convs[:1])
    kept = model._lm_loss(prefix, convs, torch.tensor([True, False]))
    assert torch.allclose(kept, only_first, atol=1e-5)
    none = model._lm_loss(prefix, convs, torch.tensor([False, False]))
    assert float(none.detach()) == 0.0 and none.requires_grad
