"""The one predictor: its image conversion, its bank cache, and predictions equal to the model's own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.core.config import ConfigError
from synth.probes import probe_anomalies
from train.model import build_model, save_checkpoint
from train.model.predictor import Predictor, resolve_device


@pytest.fixture(scope="module")
def checkpoint(tiny_cfg, tmp_path_factory):
    return save_checkpoint(build_model(tiny_cfg), tiny_cfg, tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_checkpoint(checkpoint, device="cpu")


def images(n: int, seed: int = 0, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_loads_once_on_the_named_device_in_eval_mode(predictor, tiny_cfg):
    assert predictor.config == tiny_cfg and predictor.image_size == 64
    assert predictor.device == torch.device("cpu") and not predictor.model.training
    assert all(p.device.type == "cpu" for p in predictor.model.parameters())


def test_to_tensor_is_the_models_batch_contract(predictor):
    arrays = images(2)
    tensor = predictor.to_tensor(arrays)
    assert tensor.dtype == torch.float32 and tensor.shape == (2, 3, 64, 64)
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    assert float(tensor[1, 2, 5, 7]) == float(np.float32(arrays[1][5, 7, 2]) / np.float32(255))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((64, 64, 3), np.float32), "image 1 has dtype float32"),
        (np.zeros((32, 32, 3), np.uint8), r"image 1 has shape \(32, 32, 3\); the model takes \(64, 64, 3\)"),
        (np.zeros((64, 64), np.uint8), r"image 1 has shape \(64, 64\)"),
        (np.zeros((64, 64, 4), np.uint8), r"image 1 has shape \(64, 64, 4\)"),
        (torch.zeros(64, 64, 3, dtype=torch.uint8), "image 1 is a Tensor, not a numpy array"),
    ],
)
def test_to_tensor_refuses_what_the_model_cannot_take(predictor, bad, message):
    with pytest.raises(ValueError, match=message):
        predictor.to_tensor([images(1)[0], bad])
    with pytest.raises(ValueError, match="no images"):
        predictor.to_tensor([])


def test_predictions_are_the_models_own_bits(predictor):
    arrays = images(2, seed=1)
    tensor = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    bank = predictor.memory_bank("grass", images(3, seed=2))
    want = predictor.model.predict(tensor, ["grass", "grass"], memory_bank=bank, question="Any?")
    got = predictor.predict(arrays, ["grass", "grass"], memory_bank=bank, questions="Any?")
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.anomaly_map, b.anomaly_map) and a.score == b.score
        assert np.array_equal(a.decoder_map, b.decoder_map) and a.answer == b.answer
    quiet = predictor.predict(arrays[:1], ["grass"], questions=[None], generate=False)[0]
    assert quiet.answer is None and quiet.decoder_map is None


def test_predict_runs_without_gradients_in_eval_mode(predictor, monkeypatch):
    seen = {}
    model_predict = predictor.model.predict

    def spy(*args, **kwargs):
        seen.update(grad=torch.is_grad_enabled(), training=predictor.model.training)
        return model_predict(*args, **kwargs)

    monkeypatch.setattr(predictor.model, "predict", spy)
    predictor.model.train()
    predictor.predict(images(1), ["grass"], generate=False)
    assert seen == {"grad": False, "training": False}


def test_memory_banks_are_built_once_per_category_and_content(checkpoint, monkeypatch):
    loaded = Predictor.from_checkpoint(checkpoint, device="cpu")
    one_bank = loaded.memory_bank("grass", images(2, seed=3)).nbytes  # equal sizes: 2 references each
    predictor = Predictor(loaded.model, loaded.config, "cpu", bank_cache_bytes=int(2.5 * one_bank))
    built = []
    build = predictor.model.build_memory_bank

    def counting(refs, category=None, *rest):
        built.append(category)
        return build(refs, category, *rest)

    monkeypatch.setattr(predictor.model, "build_memory_bank", counting)
    refs = images(2, seed=3)
    first = predictor.memory_bank("grass", refs)
    assert predictor.memory_bank("grass", [r.copy() for r in refs]) is first  # same content: cached
    assert predictor.memory_bank("coin", refs) is not first  # another category
    assert predictor.memory_bank("grass", images(2, seed=4)) is not first  # other references
    assert built == ["grass", "coin", "grass"]
    assert predictor.cached_bank_bytes <= 2.5 * one_bank  # the bytes hold two banks, not three
    predictor.memory_bank("grass", refs)  # evicted: the cache holds the two most recent
    assert built == ["grass", "coin", "grass", "grass"]


def test_pinned_banks_stay_apart_from_the_cache_and_follow_their_references(checkpoint, monkeypatch):
    """A server's own reference folder: one bank per category, never evicted by what clients send,
    rebuilt when the folder's images change (a confirmed normal joined)."""
    loaded = Predictor.from_checkpoint(checkpoint, device="cpu")
    predictor = Predictor(loaded.model, loaded.config, "cpu", bank_cache_bytes=1)  # one unpinned bank
    folder = images(2, seed=8)
    pinned = predictor.memory_bank("grass", folder, pinned=True)
    for seed in range(3):  # clients' banks come and go
        predictor.memory_bank("grass", images(2, seed=20 + seed))
    assert len(predictor._banks) == 1 and predictor.memory_bank("grass", folder, pinned=True) is pinned
    assert predictor.cached_bank_bytes == predictor._banks[next(iter(predictor._banks))].nbytes
    grown = predictor.memory_bank("grass", [*folder, images(1, seed=9)[0]], pinned=True)
    assert grown is not pinned and grown.shots == 3
    assert predictor.memory_bank("grass", [*folder, images(1, seed=9)[0]], pinned=True) is grown


def test_devices_are_auto_cpu_or_a_visible_cuda():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda, got 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch sees no CUDA GPU") as info:
            resolve_device("cuda")
        assert info.value.exit_code == 2


def test_the_fusion_guard_measures_the_bank_with_and_without_the_decoder(predictor):
    predictor.clear_banks()
    refs = images(4, seed=5)
    made, owners = probe_anomalies(refs, "grass", predictor.config.memory_bank.guard_probes)
    assert 0 < len(made) <= predictor.config.memory_bank.guard_probes and set(owners) == {0, 1, 2, 3}
    guard = predictor.memory_bank("grass", refs).guard
    assert guard is not None and (guard.normals, guard.anomalies) == (4, len(made))
    assert 0.0 <= guard.bank_auroc <= 1.0 and 0.0 <= guard.fused_auroc <= 1.0
    bank = predictor.memory_bank("grass", refs)
    assert (bank.decoder_calibration is not None) == (guard.fused_auroc >= guard.bank_auroc)
    assert predictor.memory_bank("grass", images(2, seed=5)).guard is None  # two cannot be guarded


def test_a_decoder_that_lifts_normals_above_anomalies_is_left_out_of_the_map(checkpoint, monkeypatch):
    """A decoder made harmful (its map high on the held-out references, flat on the synthetic
    anomalies) and weighed 20x the bank would rank normals first: the guard drops it, and the map is
    then the bank's alone, bit for bit the map of the same bank built without fusion."""
    loaded = Predictor.from_checkpoint(checkpoint, device="cpu")
    model, shots = loaded.model, 4
    model.cfg.memory_bank = dataclasses.replace(model.cfg.memory_bank, decoder_weight=20.0)
    real_text_map = model.text_map

    def harmful(patch_maps, categories, size):
        logits, amap = real_text_map(patch_maps, categories, size)
        if len(categories) == shots:  # the references (the probes are guard_probes images)
            ramp = torch.linspace(1.0, 2.0, shots).view(-1, 1, 1, 1)
            return logits, torch.zeros_like(amap) + ramp
        return logits, torch.zeros_like(amap)

    monkeypatch.setattr(model, "text_map", harmful)
    refs, queries = images(shots, seed=6), images(3, seed=7)
    bank = loaded.memory_bank("grass", refs)
    assert bank.guard is not None and not bank.guard.decoder_kept
    assert bank.guard.fused_auroc < bank.guard.bank_auroc
    assert bank.decoder_calibration is None and bank.fused_calibration is None
    guarded = [
        p.anomaly_map for p in loaded.predict(queries, ["grass"] * 3, memory_bank=bank, generate=False)
    ]

    model.cfg.memory_bank = dataclasses.replace(model.cfg.memory_bank, fusion="replace")
    loaded.clear_banks()
    bank_alone = loaded.memory_bank("grass", refs)
    plain = [
        p.anomaly_map for p in loaded.predict(queries, ["grass"] * 3, memory_bank=bank_alone, generate=False)
    ]
    for a, b in zip(guarded, plain, strict=True):
        np.testing.assert_array_equal(a, b)


def test_refinements_that_rank_normals_first_leave_the_plain_map(checkpoint, monkeypatch):
    """Smoothing made harmful at bank build (the held-out references' refined maps lifted in a ramp,
    the probes' flattened) ranks the references above the probes: the guard drops the refinements,
    and the bank is then bit for bit the bank of the same references built with no smoothing and
    equal layers: the same calibrations and the same maps."""
    from train.model import anomalygpt

    loaded = Predictor.from_checkpoint(checkpoint, device="cpu")
    mb = loaded.model.cfg.memory_bank
    assert mb.smoothing > 0 and mb.layer_weighting == "normal_spread"
    shots, real_smooth = 4, anomalygpt.gaussian_smooth

    def harmful(maps: torch.Tensor, sigma: float) -> torch.Tensor:
        if maps.shape[0] == shots:  # the references (the probes are guard_probes images)
            return real_smooth(maps, sigma) + torch.linspace(1.0, 2.0, shots).view(-1, 1, 1, 1)
        return torch.zeros_like(maps)

    refs, queries = images(shots, seed=6), images(3, seed=7)
    monkeypatch.setattr(anomalygpt, "gaussian_smooth", harmful)
    guarded = loaded.memory_bank("grass", refs)
    monkeypatch.undo()
    guard = guarded.guard
    assert guard is not None and guard.refinements_dropped
    assert guard.refined_auroc == 0.0 and guard.bank_auroc == guard.plain_auroc > 0.0
    assert guarded.smoothing == 0.0 and guarded.nn_calibration.layer_weights is None

    loaded.model.cfg.memory_bank = dataclasses.replace(mb, smoothing=0.0, layer_weighting="equal")
    loaded.clear_banks()
    plain = loaded.memory_bank("grass", refs)
    assert plain.guard is not None and plain.guard.refined_auroc is None  # nothing to refine
    assert not plain.guard.refinements_dropped and plain.guard.plain_auroc == guard.plain_auroc
    assert (guarded.nn_calibration, guarded.decoder_calibration, guarded.fused_calibration) == (
        plain.nn_calibration,
        plain.decoder_calibration,
        plain.fused_calibration,
    )
    maps = [loaded.predict(queries, ["grass"] * 3, memory_bank=b, generate=False) for b in (guarded, plain)]
    for a, b in zip(*maps, strict=True):
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


def test_a_bank_budget_given_at_load_time_caps_every_bank_layer(checkpoint):
    budgeted = Predictor.from_checkpoint(checkpoint, device="cpu", bank_budget=7)
    assert budgeted.config.memory_bank.max_patches == 7
    bank = budgeted.memory_bank("grass", images(3, seed=11))
    assert max(bank.n_patches) == 7
    full = Predictor.from_checkpoint(checkpoint, device="cpu").memory_bank("grass", images(3, seed=11))
    assert min(full.n_patches) > 7  # the checkpoint's own budget keeps more
    with pytest.raises(ConfigError, match="bank budget"):
        Predictor.from_checkpoint(checkpoint, device="cpu", bank_budget=0)


@pytest.mark.parametrize("shots", [2, 40])  # with rotations (few shots); without, in two chunks
def test_banks_built_from_uint8_references_are_the_float_banks_bits(predictor, shots):
    """The predictor hands a bank build its references as uint8 (converted a chunk at a time, so
    hundreds of them never sit in memory as floats); the bank is what float references give."""
    refs = images(shots, seed=3)
    batch = predictor.image_batch(refs)
    assert batch.dtype == torch.uint8 and batch.shape == (shots, 3, 64, 64)
    with torch.no_grad():
        from_bytes = predictor.model.build_memory_bank(batch, "grass")
        from_floats = predictor.model.build_memory_bank(predictor.to_tensor(refs), "grass")
        encoded = predictor.model.encode_all(batch)
    assert all(torch.equal(a, b) for a, b in zip(from_bytes.features, from_floats.features, strict=True))
    assert from_bytes.nn_calibration == from_floats.nn_calibration
    assert from_bytes.decoder_calibration == from_floats.decoder_calibration
    assert all(m.dtype == torch.float32 for m in encoded)


def test_cover_joins_the_bank_but_not_its_calibration(predictor):
    """Confirmed normals unlike the references (flat images beside noise) are cover: an image like
    them matches them, while the calibration, and so the score of an image like the references,
    stays what the references alone give; taken as references instead, they are measured too."""
    refs = images(6, seed=6)  # more than rotation_max_shots: no rotations, with or without cover
    flat = [np.full((64, 64, 3), value, np.uint8) for value in (40, 200)]
    alone = predictor.memory_bank("grass", refs)
    covered = predictor.memory_bank("grass", refs, cover=flat)
    as_references = predictor.memory_bank("grass", refs + flat)
    assert covered is not as_references  # the cache tells cover from references
    assert sum(covered.n_patches) == sum(as_references.n_patches) > sum(alone.n_patches)
    for a, b in (
        (covered.nn_calibration, alone.nn_calibration),
        (covered.decoder_calibration, alone.decoder_calibration),
    ):
        assert (a.level, a.top) == pytest.approx((b.level, b.top), rel=1e-5)
    assert as_references.nn_calibration != covered.nn_calibration  # the flat ones' peaks measured too

    def score(query: np.ndarray, bank) -> float:
        return predictor.predict([query], ["grass"], memory_bank=bank, generate=False)[0].score

    assert score(flat[0], covered) < score(flat[0], alone)  # an image like the cover now matches it
    noise = images(1, seed=9)[0]  # an image like the references: its score does not move
    assert score(noise, covered) == pytest.approx(score(noise, alone), rel=1e-4)


def test_cover_needs_two_references_to_calibrate_on(predictor):
    refs, flat = images(1, seed=6), [np.full((64, 64, 3), 90, np.uint8)]
    with pytest.raises(ValueError, match="cover needs at least 2"):
        predictor.model.build_memory_bank(predictor.image_batch(refs + flat), "grass", None, calibrating=1)
    one = predictor.memory_bank("grass", refs, cover=flat)  # one reference: the cover calibrates too
    both = predictor.memory_bank("grass", refs + flat)
    assert (one.nn_calibration.level, one.nn_calibration.top) == (
        both.nn_calibration.level,
        both.nn_calibration.top,
    )
