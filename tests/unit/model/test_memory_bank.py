"""Memory bank pieces on known inputs: map smoothing and where normal ends (the calibration)."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.config import ConfigError, from_dict
from train.model.config import EncoderConfig, MemoryBankConfig, OneShotCalibration
from train.model.memory_bank import (
    Calibration,
    MapGuard,
    MemoryBank,
    auroc_standard_error,
    combine_layers,
    gaussian_smooth,
    pairwise_auroc,
)


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


def test_layers_are_weighed_by_where_normal_ends_on_each():
    torch.manual_seed(0)
    normal = 0.2 + 0.02 * torch.rand(12, 2, 16, 16)  # two layers, alike on normal images
    query = normal[:2].clone()
    query[0, 0, 4:8, 4:8] += 0.1  # a defect the first layer sees
    equal = Calibration.from_layer_maps(normal, false_alarm_rate=0.05)
    assert equal.layer_weights == pytest.approx((0.5, 0.5), abs=0.05)
    # The second layer's distances ten times wider (a deeper layer): weighed, the normalised map is
    # what it was, so the first layer's defect still crosses where normal ends.
    wide = torch.tensor([1.0, 10.0]).view(1, 2, 1, 1)
    weighed = Calibration.from_layer_maps(normal * wide, false_alarm_rate=0.05)
    ratio = weighed.layer_weights[0] / weighed.layer_weights[1]
    assert ratio == pytest.approx(10 * equal.layer_weights[0] / equal.layer_weights[1], rel=1e-4)
    assert sum(weighed.layer_weights) == pytest.approx(1.0)
    before = equal.normalise(combine_layers(query, equal.layer_weights))
    after = weighed.normalise(combine_layers(query * wide, weighed.layer_weights))
    assert torch.allclose(before, after, atol=1e-4)
    assert float(after[0].amax()) > 1.0 > float(after[1].amax())  # the defect crosses where normal ends
    # Unweighed, how wide a layer's distances are changes the map.
    plain = Calibration.from_maps(combine_layers(normal, None), false_alarm_rate=0.05)
    unweighed = Calibration.from_maps(combine_layers(normal * wide, None), false_alarm_rate=0.05)
    plain_map = plain.normalise(combine_layers(query, None))
    assert not torch.allclose(plain_map, unweighed.normalise(combine_layers(query * wide, None)), atol=1e-2)
    with pytest.raises(ValueError, match="layer weights"):
        combine_layers(query, (1.0,))


def test_combined_layers_are_the_weighted_sum_bit_for_bit():
    # combine_layers adds the layers one by one (no product of all layers at once, the largest
    # tensor of a bank's build); a bank's calibration must not move by a bit for it.
    torch.manual_seed(0)
    maps = torch.rand(5, 4, 32, 32)
    weights = (0.37, 0.24, 0.21, 0.18)
    expected = (maps * torch.tensor(weights).view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
    assert torch.equal(combine_layers(maps, weights), expected)
    assert torch.equal(combine_layers(maps, None), maps.mean(dim=1, keepdim=True))


def test_a_bank_weighs_its_layers_as_its_calibration_says():
    torch.manual_seed(0)
    refs = [torch.randn(3, 8, 8, 8), torch.randn(3, 4, 4, 4)]
    bank = MemoryBank.from_patch_maps(refs, shots=3)
    query = [torch.randn(1, 8, 8, 8), torch.randn(1, 4, 4, 4)]
    layers = bank.layer_distance_maps(query, (16, 16))
    assert layers.shape == (1, 2, 16, 16)
    assert torch.allclose(bank.distance_map(query, (16, 16)), layers.mean(1, keepdim=True))
    bank.nn_calibration = Calibration(0.0, 1.0, (0.25, 0.75))
    assert torch.allclose(bank.distance_map(query, (16, 16)), 0.25 * layers[:, :1] + 0.75 * layers[:, 1:])


def test_sharp_layers_must_be_encoder_layers_of_a_cnn():
    with pytest.raises(ValueError, match="sharp_layers"):
        EncoderConfig(layers=[4, 7], sharp_layers=[2])
    with pytest.raises(ValueError, match="sharp_layers"):
        EncoderConfig(name="imagebind_huge", sharp_layers=[7])
    assert EncoderConfig(layers=[2, 4], sharp_layers=[2]).sharp_layers == [2]


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


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("smoothing", -1.0),
        ("false_alarm_rate", 0.5),
        ("guard_probe_kinds", []),
        ("guard_probe_kinds", ["ripple"]),
    ],
)
def test_bad_bank_settings_are_refused(key, value):
    with pytest.raises(ValueError, match=f"memory_bank.{key}"):
        MemoryBankConfig(**{key: value})


@pytest.mark.parametrize("pair", [[0.3, 0.1], [0.1, float("nan")]])
def test_a_measured_one_shot_calibration_must_rise(pair):
    with pytest.raises(ConfigError, match="one_shot"):
        from_dict(MemoryBankConfig, {"one_shot": {"grass": {"nn": [0.1, 0.3], "decoder": pair}}})
    with pytest.raises(ConfigError, match="one_shot"):
        from_dict(MemoryBankConfig, {"one_shot": {"grass": {"nn": pair}}})
    with pytest.raises(ConfigError, match="one_shot: fused"):
        from_dict(MemoryBankConfig, {"one_shot": {"grass": {"nn": [0.1, 0.3], "fused": pair}}})
    with pytest.raises(ConfigError, match="one_shot: unseen_fused"):
        from_dict(MemoryBankConfig, {"one_shot": {"grass": {"nn": [0.1, 0.3], "unseen_fused": pair}}})


def test_a_category_training_never_saw_takes_the_unseen_fusion():
    """Training's one-shot record names the categories it saw; without one, every category is alike."""
    seen = {"grass": {"nn": [0.1, 0.3]}}
    config = from_dict(MemoryBankConfig, {"one_shot": seen})
    assert (config.fusion_for("grass"), config.fusion_for("wood")) == ("calibrated", "amplified")
    assert MemoryBankConfig().fusion_for("wood") == "calibrated"  # nothing recorded: no category is new
    off = from_dict(MemoryBankConfig, {"one_shot": seen, "unseen_fusion": None})
    assert off.fusion_for("wood") == "calibrated"
    with pytest.raises(ConfigError, match="unseen_fusion"):
        from_dict(MemoryBankConfig, {"unseen_fusion": "average"})
    loaded = from_dict(MemoryBankConfig, {"one_shot": {"grass": {"nn": [0.1, 0.3]}}})
    assert loaded.one_shot["grass"].nn == (0.1, 0.3) and loaded.one_shot["grass"].decoder is None
    assert loaded.one_shot["grass"].layer_weights is None and loaded.one_shot["grass"].fused is None


@pytest.mark.parametrize("weights", [[0.5, 0.0], [0.5, float("nan")], []])
def test_measured_layer_weights_must_be_positive(weights):
    with pytest.raises(ConfigError, match="layer_weights"):
        from_dict(MemoryBankConfig, {"one_shot": {"grass": {"nn": [0.1, 0.3], "layer_weights": weights}}})


def test_an_unseen_category_takes_the_median_weights_summing_to_one():
    known = [OneShotCalibration((0.1, 0.3), None, w) for w in [(0.2, 0.8), (0.4, 0.6), (0.3, 0.9)]]
    median = OneShotCalibration.median(known)
    assert median.layer_weights == pytest.approx((0.3 / 1.1, 0.8 / 1.1))
    assert OneShotCalibration.median([*known, OneShotCalibration((0.1, 0.3))]).layer_weights is None


def test_the_plain_map_is_the_brute_force_nearest_neighbour_distance_averaged_over_layers():
    torch.manual_seed(0)
    refs = [torch.randn(2, 8, 5, 5), torch.randn(2, 6, 5, 5)]  # two layers, two references
    bank = MemoryBank.from_patch_maps(refs, shots=2, smoothing=0.0)
    query = [torch.randn(1, 8, 5, 5), torch.randn(1, 6, 5, 5)]
    query[0][0, :, 2, 3] = refs[0][1, :, 4, 0] * 3.0  # one patch equal (in direction) to a reference's
    expected = []
    for q, r in zip(query, refs, strict=True):
        qs = torch.nn.functional.normalize(q[0].flatten(1).T, dim=1)  # (25, C)
        rs = torch.nn.functional.normalize(r.permute(0, 2, 3, 1).reshape(-1, r.shape[1]), dim=1)
        expected.append((1.0 - (qs @ rs.T).max(dim=1).values).reshape(5, 5))
    want = torch.stack(expected).mean(0) / 2.0
    got = bank.plain_map(query, (5, 5))[0, 0]  # same size as the grid: no interpolation
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert float(got[2, 3]) < float(want.max())  # the equal patch is nearer than the rest


def test_the_plain_map_of_a_reference_itself_is_zero():
    torch.manual_seed(1)
    refs = [torch.randn(3, 4, 6, 6)]
    bank = MemoryBank.from_patch_maps(refs, shots=3, smoothing=0.0)
    assert float(bank.plain_map([refs[0][1:2]], (12, 12)).abs().max()) < 1e-5


def test_pairwise_auroc_is_sklearns_image_auroc_ties_included():
    from sklearn.metrics import roc_auc_score

    rng = torch.Generator().manual_seed(3)
    normal = torch.randint(0, 6, (9,), generator=rng).float()  # few values: many ties
    anomalous = torch.randint(2, 8, (7,), generator=rng).float()
    labels = [0] * 9 + [1] * 7
    want = roc_auc_score(labels, torch.cat([normal, anomalous]).tolist())
    assert pairwise_auroc(normal, anomalous) == pytest.approx(want, abs=1e-9)
    assert pairwise_auroc(torch.zeros(3), torch.ones(2)) == 1.0
    assert pairwise_auroc(torch.ones(3), torch.zeros(2)) == 0.0


def test_the_auroc_standard_error_shrinks_with_more_images_and_vanishes_at_perfect_ranking():
    # Hanley and McNeil's table: A = 0.8 on 50 + 50 images has a standard error of about 0.0447
    assert auroc_standard_error(0.8, 50, 50) == pytest.approx(0.0447, abs=5e-4)
    assert auroc_standard_error(0.8, 400, 64) < auroc_standard_error(0.8, 12, 16)
    assert auroc_standard_error(1.0, 12, 16) < 1e-3


def _clustered(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, 32, generator=g) * 3
    return centres[torch.randint(0, 40, (n,), generator=g)] + 0.5 * torch.randn(n, 32, generator=g)


def _covering_radius(x: torch.Tensor, chosen: torch.Tensor) -> float:
    """How far the farthest row lies from its nearest chosen row: what a coreset keeps small."""
    return float(torch.cdist(x, x[chosen]).min(dim=1).values.max())


@pytest.mark.parametrize("budget", [100, 300])
def test_the_cell_coreset_covers_the_rows_within_15_percent_of_exact_greedy(budget):
    from train.model.memory_bank import greedy_coreset

    x = _clustered(12_000)
    exact = greedy_coreset(x, budget)
    cells = greedy_coreset(x, budget, exact_cost=0, cell_rows=1000)
    assert len(cells) == budget == len(set(cells.tolist())) and bool((cells.diff() > 0).all())
    assert _covering_radius(x, cells) <= 1.15 * _covering_radius(x, exact)
    assert torch.equal(cells, greedy_coreset(x, budget, exact_cost=0, cell_rows=1000))  # seeded


def test_kd_cells_split_every_row_into_one_cell_of_neighbours():
    from train.model.memory_bank import _kd_cells

    x = torch.rand(4_000, 2, generator=torch.Generator().manual_seed(0))  # a uniform square
    cells = _kd_cells(x, 300)
    rows = torch.cat(cells)
    assert torch.equal(rows.sort().values, torch.arange(4_000))  # each row in exactly one cell
    assert all(150 < len(c) <= 300 for c in cells) and len(cells) < 2 * 4_000 / 300
    # neighbours: 16 cells tile the square, so a cell's rows lie far closer together than any rows
    spread = torch.stack([torch.cdist(x[c], x[c]).mean() for c in cells]).mean()
    assert spread < 0.4 * torch.cdist(x, x).mean()


def test_the_exact_coreset_is_greedy_k_centre_from_the_first_row():
    from train.model.memory_bank import PROJECTION_DIM, greedy_coreset

    x = _clustered(500, seed=1)
    g = torch.Generator().manual_seed(0)
    dim = min(PROJECTION_DIM, x.shape[1])
    points = x @ (torch.randn(x.shape[1], dim, generator=g) / dim**0.5)
    chosen = [0]
    for _ in range(29):  # the farthest row from everything chosen so far, each time
        chosen.append(int(torch.cdist(points, points[chosen]).min(dim=1).values.argmax()))
    assert greedy_coreset(x, 30).tolist() == sorted(chosen)


def test_the_map_guard_keeps_the_plain_map_unless_the_refinements_rank_as_well():
    def guard(plain: float, refined: float | None, fused: float | None) -> MapGuard:
        return MapGuard(plain, refined, fused, normals=12, anomalies=16)

    kept = guard(0.80, 0.80, None)
    assert not kept.refinements_dropped and kept.bank_auroc == 0.80  # a tie keeps them
    dropped = guard(0.80, 0.79, 0.85)
    assert dropped.refinements_dropped and dropped.bank_auroc == 0.80 and dropped.decoder_kept
    nothing_refined = guard(0.7, None, None)
    assert not nothing_refined.refinements_dropped and nothing_refined.bank_auroc == 0.7
    assert not nothing_refined.decoder_kept  # no decoder measured, none to keep
    # the decoder is judged against the map kept, within one standard error of its AUROC
    worse = guard(0.9, 0.8, 0.9 - 1.01 * guard(0.9, None, None).tolerance)
    assert worse.bank_auroc == 0.9 and not worse.decoder_kept
    assert worse.to_dict()["refinements_dropped"] is True and worse.to_dict()["decoder_kept"] is False
