"""Input checks of the evaluate stage (no Ray, no model): masks, unreadable files, categories."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluate.config import EvaluateConfig
from evaluate.data import EvaluationDataError, load_ground_truth, read_evaluation_set, trained_categories
from evaluate.pixel_state import PixelMetricState
from evaluate.report import category_metrics, mean_metrics


@pytest.fixture
def data(sample_data_root, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(sample_data_root, root)
    return root


def test_anomalous_image_without_mask_is_an_error_naming_it_unless_allowed(data):
    (data / "brick" / "ground_truth" / "hole" / "000_mask.png").unlink()
    with pytest.raises(EvaluationDataError, match=r"brick/test/hole/000\.png.*--allow-missing-masks"):
        read_evaluation_set(data, EvaluateConfig())
    eval_set = read_evaluation_set(data, EvaluateConfig(allow_missing_masks=True))
    brick = next(c for c in eval_set.categories if c.category == "brick")
    assert brick.missing_masks == ["brick/test/hole/000.png"]
    hole = next(i for i in brick.items if i.relpath == "brick/test/hole/000.png")
    assert hole.mask_path is None and not hole.in_pixel_metrics and hole.label == 1
    assert sum(i.in_pixel_metrics for i in brick.items) == len(brick.items) - 1


def test_category_without_any_mask_gets_image_metrics_only(data):
    shutil.rmtree(data / "coin" / "ground_truth")
    coin = next(c for c in read_evaluation_set(data, EvaluateConfig()).categories if c.category == "coin")
    assert not coin.pixel_metrics and not coin.missing_masks
    assert not any(i.in_pixel_metrics for i in coin.items)


def test_unreadable_image_is_listed_not_dropped_silently(data):
    (data / "grass" / "test" / "good" / "999.png").write_bytes(b"not a png")
    eval_set = read_evaluation_set(data, EvaluateConfig())
    assert [u["path"] for u in eval_set.unreadable] == ["grass/test/good/999.png"]
    assert "unreadable" in eval_set.unreadable[0]["reason"] and eval_set.unreadable[0]["split"] == "test"
    counts = {c.category: c.n_unreadable for c in eval_set.categories}
    assert counts == {"brick": 0, "coin": 0, "grass": 1, "gravel": 0}
    row = {"label": 0, "score": 0.1, "answer": None, "error": None}
    assert category_metrics([row], None, False, 0.3, n_skipped=1)["n_unreadable"] == 1


def test_no_category_in_common_is_an_error_unless_k_shot(data, tmp_path):
    (tmp_path / "train_summary.json").write_text('{"categories": ["bottle", "cable"]}')
    known = trained_categories(tmp_path)
    assert known == ["bottle", "cable"]
    with pytest.raises(EvaluationDataError, match="no category in common"):
        read_evaluation_set(data, EvaluateConfig(shots=0), known)
    # cross-dataset k-shot is the protocol
    eval_set = read_evaluation_set(data, EvaluateConfig(shots=1), known)
    assert all(c.seen_in_training is False for c in eval_set.categories)
    eval_set = read_evaluation_set(data, EvaluateConfig(), known)  # the default bank holds every train normal
    for c in eval_set.categories:
        names = sorted(p.name for p in (data / c.category / "train" / "good").iterdir())
        assert c.references == [f"{c.category}/train/good/{n}" for n in names]
    assert trained_categories(tmp_path / "missing") is None


def test_references_are_deterministic_and_too_few_is_an_error(data):
    eval_set = read_evaluation_set(data, EvaluateConfig(shots=2, reference_start=3, categories=["grass"]))
    names = sorted(p.name for p in (data / "grass" / "train" / "good").iterdir())
    assert eval_set.categories[0].references == [f"grass/train/good/{n}" for n in names[3:5]]
    with pytest.raises(EvaluationDataError, match="needs 9"):
        read_evaluation_set(data, EvaluateConfig(shots=4, reference_start=5))


def test_ground_truth_is_resized_bilinearly_and_cut_at_the_threshold(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[8:16, 8:16] = 255  # an 8x8 defect -> 2x2 at 16 px, plus its antialiased rim
    mask[40, 40] = 255  # a single pixel: spread to at most 6/255, under the 0.1 cut
    Image.fromarray(mask).save(tmp_path / "m.png")
    gt = load_ground_truth(tmp_path / "m.png", 16, 0.1)
    assert gt.shape == (16, 16) and gt.dtype == bool
    # PIL's bilinear downscale (the reference's Resize) gives the rim 28/255 = 0.11 > 0.1, corners 4/255
    assert gt[2:4, 2:4].all() and gt[1, 2] and gt[2, 1] and not gt[1, 1]
    assert gt.sum() == 12 and not gt[8:12, 8:12].any()
    assert not load_ground_truth(None, 16, 0.1).any()


def test_category_metrics_are_null_where_undefined_and_both_accuracies_reported():
    rows = [
        {"label": 1, "score": None, "answer": "Yes, there is an anomaly.", "error": None},
        {"label": 0, "score": None, "answer": "Nothing wrong, yes.", "error": None},
        {"label": 0, "score": None, "answer": None, "error": "unreadable image: OSError"},
    ]
    m = category_metrics(rows, None, answers_used=True, max_fpr=0.3)
    assert m["image_auroc"] is None and m["pixel_auroc"] is None and m["aupro"] is None
    assert m["accuracy"] == 0.5  # strict reads the first yes/no word: "yes" on a normal image
    assert m["accuracy_substring"] == 1.0  # the reference's rule finds "No" in "Nothing"
    assert (m["n_images"], m["n_unreadable"]) == (2, 1)
    state = PixelMetricState()
    state.update(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8))  # normal pixels only
    m2 = category_metrics(
        [{"label": 0, "score": 0.2, "answer": None, "error": None}], state, answers_used=False, max_fpr=0.3
    )
    assert m2["accuracy"] == 1.0 and m2["image_auroc"] is None and m2["pixel_auroc"] is None
    mean = mean_metrics({"a": m, "b": m2})
    assert mean["accuracy"] == 0.75 and mean["image_auroc"] is None and mean["n_images"] == 3


def test_visa_layout_is_read_with_its_0_1_masks(tmp_path):
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for split, label, name in [("train", "normal", "a"), ("test", "normal", "b"), ("test", "anomaly", "c")]:
        image = root / "candle" / "Data" / "Images" / f"{name}.JPG"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(image, format="JPEG")
        mask = ""
        if label == "anomaly":
            m = np.zeros((40, 48), np.uint8)
            m[10:20, 10:30] = 1  # VisA masks are 0/1, not 0/255
            (root / "candle" / "Data" / "Masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).save(root / "candle" / "Data" / "Masks" / f"{name}.png")
            mask = f"candle/Data/Masks/{name}.png"
        rows.append(f"candle,{split},{label},candle/Data/Images/{name}.JPG,{mask}")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    eval_set = read_evaluation_set(root, EvaluateConfig(format="visa", shots=1))
    (candle,) = eval_set.categories
    assert [(i.relpath, i.label, i.in_pixel_metrics) for i in candle.items] == [
        ("candle/Data/Images/b.JPG", 0, True),
        ("candle/Data/Images/c.JPG", 1, True),
    ]
    assert candle.references == ["candle/Data/Images/a.JPG"]
    gt = load_ground_truth(candle.items[1].mask_path, 32, 0.1)
    # 200 of 1920 px (10.4 %); read as raw 0/1 values they would all fall under the 0.1 cut
    assert 0.10 < gt.mean() < 0.14


def test_a_feedback_folder_gives_each_category_its_confirmed_normals_as_cover(data, tmp_path):
    confirmed = tmp_path / "feedback" / "brick" / "train" / "good"
    confirmed.mkdir(parents=True)
    shutil.copyfile(data / "brick" / "test" / "good" / "000.png", confirmed / "0a1b.png")
    eval_set = read_evaluation_set(data, EvaluateConfig(feedback=str(tmp_path / "feedback")))
    cover = {c.category: [Path(p).name for p in c.cover_paths] for c in eval_set.categories}
    assert cover == {"brick": ["0a1b.png"], "coin": [], "grass": [], "gravel": []}
    assert all(c.reference_paths for c in eval_set.categories)  # the references stay the train split's
    with pytest.raises(EvaluationDataError, match=r"feedback folder .* does not exist"):
        read_evaluation_set(data, EvaluateConfig(feedback=str(tmp_path / "nowhere")))


def test_a_confirmed_normal_the_train_folder_links_in_is_cover_not_a_reference(data, tmp_path):
    """retrain --feedback trains on a dataset whose train/good links the confirmed normals in; its
    evaluation banks them once, as cover, so they never set the top of normal."""
    confirmed = tmp_path / "feedback" / "brick" / "train" / "good"
    confirmed.mkdir(parents=True)
    shutil.copyfile(data / "brick" / "test" / "good" / "000.png", confirmed / "0a1b.png")
    before = read_evaluation_set(data, EvaluateConfig()).categories[0].references
    (data / "brick" / "train" / "good" / "feedback_0a1b.png").symlink_to(confirmed / "0a1b.png")
    linked = read_evaluation_set(data, EvaluateConfig()).categories[0].references
    assert linked == sorted([*before, "brick/train/good/feedback_0a1b.png"])  # without feedback: a reference
    brick = read_evaluation_set(data, EvaluateConfig(feedback=str(tmp_path / "feedback"))).categories[0]
    assert brick.references == before and brick.cover_paths == [str(confirmed / "0a1b.png")]
