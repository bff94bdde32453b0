"""The evaluate stage end to end on the sample data with a randomly initialised tiny-preset model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluate import metrics
from evaluate.config import EvaluateConfig
from evaluate.job import run_evaluation
from train.model.checkpoint import checkpoint_config

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"image_auroc", "pixel_auroc", "accuracy", "aupro", "f1_max", "n_images"}
REGION_KEYS = {"region_box_iou", "region_box_iou_share_050", "n_region_boxes"}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from pipeline.pipeline_config import load_pipeline_config
    from train.model import build_model, save_checkpoint

    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml").model
    cfg.llm.cache_dir = tmp_path_factory.mktemp("llm_cache")
    torch.manual_seed(0)
    return save_checkpoint(build_model(cfg), cfg, tmp_path_factory.mktemp("tiny_ckpt"))


def _answers(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]


def check_regions(result: dict, answers: list[dict], data_root: Path) -> None:
    """answers.jsonl's regions lie in each image file's pixels, one at least above 0.5, none below;
    the region figures count the detected defects (anomalous, above 0.5, with a mask) and lie in
    [0, 1]."""
    from PIL import Image

    for a in answers:
        with Image.open(Path(data_root) / a["image"]) as im:
            width, height = im.size
        assert isinstance(a["regions"], list), a["image"]
        for r in a["regions"]:
            x0, y0, x1, y1 = r["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (a["image"], r)
            assert 0.5 < r["mean"] <= r["peak"] <= a["score"] + 1e-6
        assert bool(a["regions"]) == (a["score"] > 0.5), a["image"]
    for category, m in result["per_category"].items():
        assert set(m) >= REGION_KEYS
        rows = [a for a in answers if a["category"] == category]
        detected = [a for a in rows if a["label"] and a["score"] > 0.5 and a["gt_positions"]]
        assert m["n_region_boxes"] == len(detected), category
        for key in ("region_box_iou", "region_box_iou_share_050"):
            assert (m[key] is None) == (not detected) and (m[key] is None or 0.0 <= m[key] <= 1.0)
    mean = result["mean"]
    assert mean["n_region_boxes"] == sum(m["n_region_boxes"] for m in result["per_category"].values())
    assert mean["region_box_iou"] is None or 0.0 <= mean["region_box_iou"] <= 1.0


@pytest.mark.slow  # ~30 s: two evaluations, three actors each loading the model
def test_one_and_two_workers_give_identical_metrics_and_follow_the_schema(
    ray_session, tiny_checkpoint, sample_data_root, tmp_path
):
    one = run_evaluation(tiny_checkpoint, sample_data_root, tmp_path / "w1", workers=1)
    two = run_evaluation(tiny_checkpoint, sample_data_root, tmp_path / "w2", workers=2)
    assert one["per_category"] == two["per_category"]
    assert one["mean"] == two["mean"]
    assert _answers(tmp_path / "w1") == _answers(tmp_path / "w2")

    out = tmp_path / "w2"
    written = json.loads((out / "metrics.json").read_text())
    assert written["setting"] == "all_shot" and written["shots"] == "all"  # the default: every train normal
    assert written["model"] == written["checkpoint"] == str(tiny_checkpoint)
    assert sorted(written["references"]) == sorted(written["per_category"])
    decoder = written["decoder_only"]  # the decoder's own map, reported beside the fused one
    assert sorted(decoder["per_category"]) == sorted(written["per_category"])
    assert all(0.0 <= decoder["mean"][k] <= 1.0 for k in ("image_auroc", "pixel_auroc", "map_best_accuracy"))
    base = written["baseline"]  # the plain nearest-neighbour memory, beside the model
    assert sorted(base["per_category"]) == sorted(written["per_category"])
    assert all(0.0 <= base["mean"][k] <= 1.0 for k in ("image_auroc", "pixel_auroc"))
    for category, margin in base["image_auroc_margin"].items():
        model, plain = written["per_category"][category]["image_auroc"], base["per_category"][category]
        assert margin == pytest.approx(model - plain["image_auroc"])
        assert (category in base["below"]) == (margin < -0.0005)
    assert "plain nearest-neighbour memory" in (out / "metrics.md").read_text()
    bank_config = checkpoint_config(tiny_checkpoint).memory_bank
    for category, m in written["per_category"].items():  # how the decoder joined the bank, if it did
        dropped = m["fusion_guard"] is not None and not m["fusion_guard"]["decoder_kept"]
        assert m["fusion"] == (None if dropped else bank_config.fusion_for(category))
    assert written["accuracy_rule"] == "llm_answer_strict"
    categories = sorted(p.name for p in Path(sample_data_root).iterdir() if (p / "test").is_dir())
    assert sorted(written["per_category"]) == categories
    for m in [*written["per_category"].values(), written["mean"]]:
        assert set(m) >= KEYS
        for key in KEYS - {"n_images"}:  # every sample category has masks, normals and anomalies
            assert 0.0 <= m[key] <= 1.0, key
    answers = _answers(out)
    assert (
        len(answers)
        == written["mean"]["n_images"]
        == sum(m["n_images"] for m in written["per_category"].values())
    )
    assert set(answers[0]) >= {"image", "label", "score", "answer"}
    assert all(isinstance(a["answer"], str) for a in answers)
    # the image metric recomputed from answers.jsonl agrees with metrics.json
    brick = [a for a in answers if a["category"] == categories[0]]
    assert metrics.auroc([a["score"] for a in brick], [a["label"] for a in brick]) == pytest.approx(
        written["per_category"][categories[0]]["image_auroc"], abs=0
    )
    maps = sorted((out / "maps").rglob("*.png"))
    assert len(maps) == len(answers)
    assert "| **mean** |" in (out / "metrics.md").read_text()
    check_regions(written, answers, sample_data_root)


def test_few_shot_records_references_and_without_llm_uses_the_threshold_rule(
    ray_session, tiny_checkpoint, sample_data_root, tmp_path
):
    cfg = EvaluateConfig(reference_start=1, write_maps=False)
    result = run_evaluation(
        tiny_checkpoint,
        sample_data_root,
        tmp_path,
        shots=2,
        categories=["brick", "coin"],
        use_llm=False,
        config=cfg,
        model_ref="models:/anomalygpt/3",  # what the caller resolved to tiny_checkpoint
    )
    assert result["model"] == "models:/anomalygpt/3" and result["checkpoint"] == str(tiny_checkpoint)
    assert result["setting"] == "few_shot" and result["shots"] == 2
    assert result["accuracy_rule"] == "max_normal_score_threshold"
    train = sorted(p.name for p in (Path(sample_data_root) / "brick" / "train" / "good").iterdir())
    assert result["references"]["brick"] == [f"brick/train/good/{name}" for name in train[1:3]]
    assert not (tmp_path / "maps").exists()
    answers = _answers(tmp_path)
    assert all(a["answer"] is None for a in answers)
    for category in ("brick", "coin"):
        rows = [a for a in answers if a["category"] == category]
        scores, labels = [a["score"] for a in rows], np.array([a["label"] for a in rows])
        assert result["per_category"][category]["accuracy"] == metrics.threshold_accuracy(scores, labels)
        assert result["per_category"][category]["accuracy_substring"] is None
        assert result["per_category"][category]["pixel_auroc"] is not None
    check_regions(result, answers, sample_data_root)
    # two references leave this untrained model's brick anomalies above 0.5: box IoU is measured
    assert result["per_category"]["brick"]["n_region_boxes"] > 0
    assert result["per_category"]["brick"]["region_box_iou"] is not None
