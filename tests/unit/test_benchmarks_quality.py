"""The quality benchmarks' own logic: the nearest-neighbour baseline, the map-swap figures and the
deterministic bank inputs, on small hand-made tensors; plus one pass of each script's per-category
step on an untrained tiny model (seconds), so the scripts keep up with the model API."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    """A benchmarks/ script as a module (benchmarks/ is not a package)."""
    module_name = f"bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


baseline = _script("baseline")
follow = _script("answers_follow_map")
bank_bench = _script("memory_bank")
region_bench = _script("region_boxes")


# --- baseline --------------------------------------------------------------------------------
def _brute_force(query_maps, normal_maps, size):
    """1 - max cosine similarity, patch by patch with plain loops, per layer, then averaged."""
    out = []
    for q, n in zip(query_maps, normal_maps, strict=True):
        c = q.shape[1]
        bank = n.permute(0, 2, 3, 1).reshape(-1, c)
        b, _, h, w = q.shape
        dist = torch.empty(b, 1, h, w)
        for i in range(b):
            for y in range(h):
                for x in range(w):
                    v = q[i, :, y, x]
                    sims = torch.nn.functional.cosine_similarity(bank, v[None], dim=1)
                    dist[i, 0, y, x] = 1 - sims.max()
        out.append(torch.nn.functional.interpolate(dist, size=size, mode="bilinear", align_corners=False))
    return torch.stack(out).mean(0)[:, 0]


def test_baseline_matches_brute_force_nearest_neighbour():
    g = torch.Generator().manual_seed(0)
    normal = [torch.randn(3, 8, 4, 4, generator=g), torch.randn(3, 16, 2, 2, generator=g)]
    query = [torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 16, 2, 2, generator=g)]
    memory = baseline.memory_from_maps(normal)
    assert [m.shape for m in memory] == [(48, 8), (12, 16)]
    assert torch.allclose(memory[0].norm(dim=1), torch.ones(48))
    got = baseline.distance_maps(query, memory, (8, 8))
    assert got.shape == (2, 8, 8)
    assert torch.allclose(got, _brute_force(query, normal, (8, 8)), atol=1e-5)


def test_baseline_chunks_the_memory_without_changing_the_result():
    g = torch.Generator().manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(10, 6, generator=g), dim=1)
    memory = torch.nn.functional.normalize(torch.randn(37, 6, generator=g), dim=1)
    whole = baseline.max_similarity(queries, memory, chunk=1000)
    assert torch.allclose(baseline.max_similarity(queries, memory, chunk=5), whole)
    assert torch.allclose(whole, (queries @ memory.T).amax(1))


def test_baseline_scores_a_seen_patch_zero_and_an_unseen_one_high():
    normal = torch.zeros(1, 2, 2, 2)
    normal[:, 0] = 1.0  # every normal patch points along channel 0
    query = normal.clone()
    query[0, :, 1, 1] = torch.tensor([0.0, 1.0])  # one patch orthogonal to all normal ones
    maps = baseline.distance_maps([query], baseline.memory_from_maps([normal]), (2, 2))
    assert maps[0, 0, 0] == pytest.approx(0.0, abs=1e-6)
    assert maps[0, 1, 1] == pytest.approx(1.0, abs=1e-6)
    assert baseline.image_scores(maps)[0] == pytest.approx(1.0, abs=1e-6)


def test_baseline_layers_references_and_shots():
    assert baseline.select_layers(["a", "b", "c", "d"], [0, 2]) == ["a", "c"]
    assert baseline.select_layers(["a", "b"], None) == ["a", "b"]
    assert baseline.references(["n0", "n1", "n2"], 1) == ["n0"]
    assert baseline.references(["n0", "n1", "n2"], "all") == ["n0", "n1", "n2"]
    with pytest.raises(ValueError, match="4-shot"):
        baseline.references(["n0"], 4)
    with pytest.raises(ValueError):
        baseline.references([], "all")
    assert baseline.parse_shots("1, all,4") == [1, "all", 4]
    with pytest.raises(Exception, match="0"):
        baseline.parse_shots("0")


def test_baseline_aurocs_image_and_pixel():
    maps = [np.zeros((2, 2)), np.array([[0.0, 0.9], [0.1, 0.2]]), np.ones((2, 2))]
    gts = [np.zeros((2, 2), bool), np.array([[False, True], [False, False]]), None]  # 3rd: no mask
    image, pixel = baseline.aurocs([0, 1, 1], np.array([0.0, 0.9, 1.0]), maps, gts)
    assert image == 1.0
    # 8 pixels of images 1-2: the one anomalous pixel (0.9) is above all 7 normal ones.
    assert pixel == 1.0
    image, pixel = baseline.aurocs([0, 0], np.array([0.1, 0.2]), [maps[0], maps[0]], [gts[0], gts[0]])
    assert image is None and pixel is None


def test_baseline_mean_and_verdict():
    per = {"a": {"image_auroc": 0.8}, "b": {"image_auroc": 0.6}, "c": {"image_auroc": None}}
    assert baseline.mean_of(per, "image_auroc") == pytest.approx(0.7)
    assert baseline.beats(0.7, 0.7) is True
    assert baseline.beats(0.69, 0.7) is False
    assert baseline.beats(None, 0.7) is None


# --- answers follow the map --------------------------------------------------------------------
def test_pairs_zip_normals_with_anomalous_in_order():
    labels = [0, 1, 1, 0, 1, 0, 0]
    assert follow.partner_pairs(labels) == [(0, 1), (3, 2), (5, 4)]
    assert follow.partners([(0, 1), (3, 2)]) == {0: 1, 1: 0, 3: 2, 2: 3}
    assert follow.partner_pairs([1, 1]) == []


def test_follow_stats_when_answers_follow_the_map():
    labels = [0, 1, 0, 1]
    pairs = follow.partner_pairs(labels)  # (0, 1), (2, 3)
    own = [False, True, False, True]
    swapped = {0: True, 1: False, 2: True, 3: False}
    stats = follow.follow_stats(labels, own, swapped, pairs)
    assert stats["own_accuracy"] == 1.0
    assert stats["pairs"] == 2 and stats["pairs_own_differ"] == 2
    assert stats["swap_flip_rate"] == 1.0
    assert stats["swap_follows_map"] == 1.0


def test_follow_stats_when_answers_ignore_the_map():
    labels = [0, 1, 0, 1, 1]  # image 4 has no partner
    pairs = follow.partner_pairs(labels)
    own = [True, True, False, None, True]  # always "yes" except one "no" and one unparsed
    swapped = {0: True, 1: True, 2: False, 3: None}  # same as own: the map changes nothing
    stats = follow.follow_stats(labels, own, swapped, pairs)
    assert stats["own_accuracy"] == pytest.approx(3 / 5)  # images 1, 2, 4
    assert stats["own_unparsed"] == 1
    assert stats["pairs_own_differ"] == 0  # pair (0, 1): 0 says yes; pair (2, 3): 3 unparsed
    assert stats["swapped_images"] == 4
    assert stats["swap_flip_rate"] == 0.0
    # partner labels: 0<-1 (yes: follows), 1<-0 (yes: not), 2<-3 (no: not), 3<-2 (None: not)
    assert stats["swap_follows_map"] == pytest.approx(1 / 4)
    assert stats["swap_unparsed"] == 1


def test_follow_stats_checks_its_inputs():
    with pytest.raises(ValueError, match="paired images"):
        follow.follow_stats([0, 1], [False, True], {0: True}, [(0, 1)])
    with pytest.raises(ValueError, match="own verdicts"):
        follow.follow_stats([0, 1], [False], {0: True, 1: False}, [(0, 1)])
    empty = follow.follow_stats([1, 1], [True, True], {}, [])
    assert empty["swap_flip_rate"] is None and empty["own_accuracy"] == 1.0


def test_pooled_stats_count_images_not_categories():
    a = ([0, 1], [False, True], {0: True, 1: False}, [(0, 1)])  # follows the map
    b = ([0, 1, 0, 1], [False, True, False, True], {0: False, 1: True, 2: False, 3: True}, [(0, 1), (2, 3)])
    stats = follow.pooled([a, b])
    assert stats["images"] == 6 and stats["pairs"] == 3 and stats["pairs_own_differ"] == 3
    assert stats["swap_flip_rate"] == pytest.approx(2 / 6)  # not the mean of 1.0 and 0.0


# --- memory bank inputs ----------------------------------------------------------------------------
def test_augmented_is_deterministic_and_starts_with_the_originals():
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = bank_bench.augmented(images, 20)
    assert out.shape == (20, 3, 16, 16)
    assert torch.equal(out[:3], images)
    assert torch.equal(out, bank_bench.augmented(images, 20))
    flat = out.flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) == 20  # no repeats
    assert torch.equal(out[3], torch.flip(images[0], dims=(2,)))  # variant 1: horizontal flip
    assert torch.equal(out[6], torch.rot90(images[0], 1, dims=(1, 2)))  # variant 2: rot90
    with pytest.raises(ValueError):
        bank_bench.augmented(images, 8 * len(bank_bench.CROPS) * 3 + 1)


# --- the scripts' per-category steps on an untrained tiny model --------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tiny_config):
    from train.model import build_model

    torch.manual_seed(0)
    return build_model(tiny_config.model).eval()


@pytest.fixture(scope="module")
def tiny_predictor(tiny_model):
    from train.model.predictor import Predictor

    return Predictor(tiny_model, tiny_model.cfg, "cpu")


def test_baseline_category_on_a_tiny_model(tiny_predictor, sample_data_root):
    from synth.datasets import read_dataset

    train = read_dataset(sample_data_root, "mvtec", split="train", categories=["brick"])
    test = read_dataset(sample_data_root, "mvtec", split="test", categories=["brick"])[:4]
    one = baseline.baseline_category(tiny_predictor, train, test, 1)
    every = baseline.baseline_category(tiny_predictor, train, test, "all")
    assert 0.0 <= one["image_auroc"] <= 1.0 and 0.0 <= one["pixel_auroc"] <= 1.0
    assert every["memory_patches"] == [6 * p for p in one["memory_patches"]]


def test_answers_follow_map_category_on_a_tiny_model(tiny_model, tiny_predictor, sample_data_root):
    import dataclasses

    from synth.datasets import read_dataset

    train = read_dataset(sample_data_root, "mvtec", split="train", categories=["grass"])
    test = read_dataset(sample_data_root, "mvtec", split="test", categories=["grass"])
    test = [r for r in test if r.label][:2] + [r for r in test if not r.label][:3]  # 5 images, 2 pairs
    cfg = tiny_model.cfg
    tiny_model.cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, max_new_tokens=3))
    try:
        part, example = follow.run_category(tiny_predictor, "grass", train, test, 2)
    finally:
        tiny_model.cfg = cfg
    labels, own, swapped, pairs = part
    assert labels == [t.label for t in test] and len(own) == len(test)
    assert len(pairs) == 2 and set(swapped) == set(follow.partners(pairs))
    assert len(example) == 2
    assert follow.follow_stats(*part)["images"] == len(test)


def test_region_boxes_score_the_core_against_the_whole_component():
    """A smoothed defect: the ground truth is the 4 x 4 core, the part above 0.5 a 12 x 12 shoulder."""
    amap = np.zeros((32, 32), np.float32)
    amap[2:14, 2:14] = 0.6
    amap[5:9, 5:9] = 0.95
    truth = np.zeros((32, 32), bool)
    truth[5:9, 5:9] = True
    missed = np.zeros((32, 32), bool)
    missed[20:24, 20:24] = True  # a second defect far from any region: IoU 0
    defects = [(amap, truth), (amap, missed)]
    assert region_bench.box_figures(defects, 0.85) == {"mean": 0.5, "share_050": 0.5}
    assert region_bench.box_figures(defects, 0.0) == {"mean": round(16 / 144 / 2, 3), "share_050": 0.0}


def test_memory_bank_measure_on_a_tiny_model(tiny_model):
    refs = bank_bench.augmented(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), 6)
    small = bank_bench.measure(tiny_model, refs, refs[:1], "brick", 50, 1)
    assert small["images"] == 6 and small["max_patches"] == 50
    assert max(small["patches_per_layer"]) <= 50 and small["bytes"] > 0 and small["query_ms_per_image"] > 0
    large = bank_bench.measure(tiny_model, refs, refs[:1], "brick", 100000, 1)
    assert large["bytes"] > small["bytes"]


# --- scale ----------------------------------------------------------------------------------
scale = _script("scale")


def test_scale_sides_run_from_the_demos_to_mvtecs():
    assert [scale.side_for(s) for s in (1, 4, 16)] == [256, 423, 700]


def test_scale_growth_compares_time_with_input_per_stage():
    def stages(seconds: float, inputs: int) -> dict:
        return {"stages": {"bank_build": {"seconds": seconds, "input": inputs}}}

    linear = scale.growth({1: stages(2.0, 14), 16: stages(36.0, 224)})["bank_build"]
    assert linear == {
        "time_ratio": 18.0,
        "input_ratio": 16.0,
        "time_ratio_per_input_ratio": 1.12,
        "linear_or_better": True,
    }
    quadratic = scale.growth({1: stages(2.0, 14), 16: stages(512.0, 224)})["bank_build"]
    assert quadratic["time_ratio_per_input_ratio"] == 16.0 and not quadratic["linear_or_better"]


# --- robustness suite: goals and draws ---------------------------------------------------------
robustness = _script("robustness")


def _rows(margins: dict[str, float], answer: float | None = None) -> dict[str, dict[str, float]]:
    rows = {c: {"model": 0.8 + m, "baseline": 0.8, "margin": m} for c, m in margins.items()}
    if answer is not None:
        for row in rows.values():
            row |= {"answer_accuracy": answer, "map_best_accuracy": 0.8, "position_follows_map": 0.95}
            row["answer_share_of_map"] = answer / 0.8
    return rows


def test_the_category_goal_fails_on_one_category_and_the_answer_goal_is_per_dataset():
    rows = _rows({"a": 0.05, "b": -0.02, "mean": 0.015}, answer=0.77)
    met = robustness.goals(rows)
    assert met == {
        "every_category_within_0.01": False,
        "mean_at_least_baseline": True,
        "answers_keep_up": True,  # 0.77 / 0.8 = 0.9625 on the dataset
        "positions_follow_map": True,
    }
    assert robustness.goals(_rows({"a": 0.0, "mean": 0.0}, answer=0.75))["answers_keep_up"] is False


def test_draws_are_pooled_by_their_mean_with_the_margins_standard_error():
    draws = [_rows({"a": -0.03, "mean": -0.03}, 0.72), _rows({"a": 0.01, "mean": 0.01}, 0.76)]
    pooled = robustness.pooled_rows(draws)
    assert pooled["a"]["margin"] == pytest.approx(-0.01)
    assert pooled["a"]["margin_se"] == pytest.approx(0.02)  # stdev 0.0283 over sqrt(2) draws
    assert pooled["a"]["answer_share_of_map"] == pytest.approx(0.74 / 0.8)
    assert robustness.goals(pooled)["every_category_within_0.01"] is True
    assert robustness.goals(draws[0])["every_category_within_0.01"] is False


def test_a_learnt_threshold_takes_the_middle_of_its_best_plateau():
    images = [(0.1, False), (0.2, False), (0.3, True), (0.4, False), (0.6, True), (0.8, True)]
    # 5 of 6 right between 0.2 and 0.3 and between 0.4 and 0.6: the middle of those two cuts
    assert robustness.learnt_threshold(images) == pytest.approx(0.5)
    assert robustness.learnt_threshold([(0.4, False), (0.6, True)]) == pytest.approx(0.5)


def test_each_draw_is_judged_by_the_threshold_the_other_draws_teach(tmp_path):
    def answers(name: str, images: list[tuple[float, int]]) -> Path:
        path = tmp_path / f"{name}.jsonl"
        rows = [{"category": "a", "label": label, "score": score} for score, label in images]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path

    files = [
        answers("d0", [(0.7, 0), (0.8, 1), (0.9, 1), (0.3, 0)]),  # normals up to 0.7
        answers("d1", [(0.6, 0), (0.65, 1), (0.2, 0), (0.9, 1)]),  # learnt from d0: cut 0.75
        answers("d2", [(0.1, 0), (0.55, 0), (0.85, 1), (0.95, 1)]),
    ]
    draws = [_rows({"a": 0.0, "mean": 0.0}) for _ in files]
    for rows, decided in zip(draws, (1.0, 0.75, 0.5), strict=True):
        rows["a"]["decision_accuracy"] = rows["mean"]["decision_accuracy"] = decided
    robustness.add_other_draws_accuracy(draws, files)
    # d1 learns from d0 and d2 (all right only between 0.7 and 0.8: 0.75) and misses its anomaly at 0.65
    assert draws[1]["a"]["other_draws_accuracy"] == pytest.approx(0.75)
    assert draws[1]["mean"]["other_draws_accuracy"] == pytest.approx(0.75)
    # d1 + d2 teach 0.625 (all right between 0.6 and 0.65): d0's normal at 0.7 lies above it
    assert draws[0]["a"]["other_draws_accuracy"] == pytest.approx(0.75)
    pooled = robustness.pooled_rows(draws)  # d2 learns 0.75 from d0 and d1 and is all right
    assert pooled["a"]["other_draws_accuracy"] == pytest.approx((0.75 + 0.75 + 1.0) / 3, abs=1e-4)
    assert pooled["a"]["decision_share_of_other_draws"] == pytest.approx(0.75 / (2.5 / 3), abs=1e-4)


def test_the_reviewer_marks_the_highest_scoring_false_alarms_of_each_category():
    feedback = _script("feedback_recovery")
    rows = [
        {"image": "a/test/good/0.png", "category": "a", "label": 0, "score": 0.6, "answer": "Yes, there is"},
        {"image": "a/test/good/1.png", "category": "a", "label": 0, "score": 0.9, "answer": "Yes, there is"},
        {"image": "a/test/good/2.png", "category": "a", "label": 0, "score": 0.7, "answer": "Yes, there is"},
        {
            "image": "a/test/good/3.png",
            "category": "a",
            "label": 0,
            "score": 0.8,
            "answer": "No, there is no",
        },
        {"image": "a/test/hole/0.png", "category": "a", "label": 1, "score": 0.95, "answer": "Yes, there is"},
        {
            "image": "b/test/good/0.png",
            "category": "b",
            "label": 0,
            "score": 0.2,
            "answer": "No, there is no",
        },
    ]
    assert feedback.flagged_normals(rows, most=2) == {"a": ["a/test/good/1.png", "a/test/good/2.png"]}


def test_marked_normals_leave_the_test_set_and_join_the_references_only_after(tmp_path):
    feedback = _script("feedback_recovery")
    data = tmp_path / "data"
    for folder in ("cat/train/good", "cat/test/good", "cat/test/crack"):
        (data / folder).mkdir(parents=True)
    for i in range(3):
        (data / "cat/train/good" / f"{i:03d}.png").write_bytes(b"train")
        (data / "cat/test/good" / f"{i:03d}.png").write_bytes(b"test")
    (data / "cat/test/crack/000.png").write_bytes(b"defect")
    marked = {"cat": ["cat/test/good/000.png", "cat/test/good/002.png"]}
    before, after, confirmed = feedback.split_feedback(data, tmp_path / "work", marked)

    def names(root, folder):
        return sorted(p.name for p in (root / "cat" / folder).iterdir())

    assert names(before, "test/good") == names(after, "test/good") == ["001.png"]
    assert names(before, "train/good") == ["000.png", "001.png", "002.png"]
    moved = ["feedback-000.png", "feedback-002.png"]
    assert names(after, "train/good") == ["000.png", "001.png", "002.png", *moved]
    assert (after / "cat/train/good/feedback-002.png").read_bytes() == b"test"
    assert names(confirmed, "train/good") == moved  # a feedback folder: cover for the bank
    assert (confirmed / "cat/train/good/feedback-000.png").read_bytes() == b"test"
    assert names(data, "test/good") == ["000.png", "001.png", "002.png"]  # the suite's data is untouched
    with pytest.raises(ValueError, match="not a test normal of cat"):
        feedback.split_feedback(data, tmp_path / "again", {"cat": ["cat/test/crack/000.png"]})


# --- bank forms: every form of the all-shot map, and the rules that pick one --------------------------
bank_forms = _script("bank_forms")


def test_bank_forms_category_on_a_tiny_model(tiny_predictor, sample_data_root):
    row = bank_forms.category_forms(tiny_predictor, sample_data_root, "brick")
    forms = [bank_forms.form_name(w, s) for s in bank_forms.SIGMAS for w in bank_forms.WEIGHTINGS]
    assert (row["references"], len(forms)) == (6, 8)
    assert set(row["probes"]) == set(bank_forms.PROBE_SETS)
    assert all(0 < n <= 16 for n in row["probes"].values())
    for form in forms:
        parts = 1 + len(bank_forms.FUSIONS)  # the bank alone and each fusion: test and guard figures
        assert len(row[form]) == parts + parts * len(bank_forms.PROBE_SETS)
        assert all(0.0 <= v <= 1.0 for v in row[form].values())
    # the plain form alone is the baseline's map: the same test ranking
    assert row[bank_forms.PLAIN]["test_bank"] == row["baseline"]


def _form_row(baseline: float, refined: tuple[float, float], plain: tuple[float, float]) -> dict:
    """A category draw where every form scores (guard, test) as the plain form except weighted_s4."""
    row = {"baseline": baseline, "references": 12, "probes": dict.fromkeys(bank_forms.PROBE_SETS, 16)}
    for sigma in bank_forms.SIGMAS:
        for weighting in bank_forms.WEIGHTINGS:
            guard, test = refined if (weighting, sigma) == ("weighted", 4.0) else plain
            # the decoder adds nothing to the guard's figure and 0.01 to the test's: kept
            figures = {"test_bank": test, "test_fused": test + 0.01, "test_amplified": test + 0.01}
            for probes in bank_forms.PROBE_SETS:
                figures |= {f"guard_{part}_{probes}": guard for part in ("bank", "fused", "amplified")}
            row[bank_forms.form_name(weighting, sigma)] = figures
    return row


def test_bank_forms_rules_pick_by_the_guard_and_count_categories_below():
    rows = {
        # the guard prefers the plain form, which is also better on the test images
        "a": [_form_row(0.80, refined=(0.70, 0.75), plain=(0.72, 0.80))] * 2,
        # the guard prefers the refined form (a tie keeps it)
        "b": [_form_row(0.90, refined=(0.60, 0.95), plain=(0.60, 0.90))] * 2,
    }
    summary = bank_forms.rule_summary(rows)
    picked = summary["guard_picks_refined_or_plain_nsa"]
    assert picked["per_category"] == {"a": 0.01, "b": 0.06}
    assert picked["categories_below"] == 0 and picked["worst_category"] == 0.01
    old = summary["weighted_s4_with_decoder_guard"]
    assert old["per_category"] == {"a": -0.04, "b": 0.06} and old["categories_below"] == 1
    assert summary["equal_s0_bank"]["per_category"] == {"a": 0.0, "b": 0.0}
