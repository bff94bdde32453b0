"""Output files and MLflow logging of an evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluate.overlay import BAR_GAP, BAR_LABELS, BAR_WIDTH, encode_png, render_overlay
from evaluate.report import (
    DECISION_METRICS,
    REGION_METRICS,
    category_metrics,
    decision_notes,
    log_to_mlflow,
    map_path,
    markdown_table,
    mean_metric_values,
    mean_metrics,
    write_outputs,
)


def _result():
    m = {
        "image_auroc": 0.9,
        "pixel_auroc": None,
        "accuracy": 0.75,
        "aupro": None,
        "f1_max": 0.8,
        "n_images": 4,
    }
    return {
        "shots": "all",
        "setting": "unsupervised",
        "model": "ckpt",
        "data": "data",
        "format": "mvtec",
        "image_size": 64,
        "accuracy_rule": "max_normal_score_threshold",
        "per_category": {"brick": m},
        "mean": m,
        "unreadable": [{"path": "brick/test/good/9.png", "split": "test", "reason": "unreadable image: x"}],
    }


def _rows():
    return [
        {"image": f"brick/test/{d}/00{i}.png", "category": "brick", "label": int(d != "good"), "defect": d,
         "score": s, "answer": None, "error": None}
        for i, (d, s) in enumerate([("good", 0.2), ("good", 0.6), ("hole", 0.5), ("stain", 0.9)])
    ]  # fmt: skip


def test_outputs_follow_the_schema_and_null_prints_as_a_dash(tmp_path):
    write_outputs(tmp_path, _result(), _rows())
    assert json.loads((tmp_path / "metrics.json").read_text())["per_category"]["brick"]["pixel_auroc"] is None
    lines = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [x["image"] for x in lines] == sorted(r["image"] for r in _rows())
    assert set(lines[0]) == {
        "image", "category", "label", "defect", "score", "answer", "error", "gt_positions",
        "answer_positions", "regions",
    }  # fmt: skip
    assert lines[0]["gt_positions"] is None and lines[0]["answer_positions"] is None  # no answer
    table = (tmp_path / "metrics.md").read_text()
    assert "| brick | 90.0 | – | 75.0 | – | 80.0 | 4 |" in table
    assert "Answer-map agreement" not in table  # no answer figures: no second table
    assert "Box IoU" not in table  # no detected defect: no region table
    assert "brick/test/good/9.png" in table
    assert map_path(tmp_path, _rows()[2]) == tmp_path / "maps" / "brick" / "hole_002.png"
    assert markdown_table(_result()) == table


def _answered():
    """_result and _rows with answers, ground-truth positions and the answer figures."""
    result = _result()
    m = {**result["per_category"]["brick"], "answer_map_agreement": 0.75, "position_accuracy": None,
         "map_position_accuracy": None, "position_follows_map": None, "map_best_accuracy": 1.0,
         "n_position_answers": 0}  # fmt: skip
    result["per_category"] = {"brick": m}
    result["mean"] = m
    rows = _rows()
    rows[3]["answer"] = "Yes, there are 2 anomalies, at the top left and center of the image."
    rows[3]["gt_positions"] = ["center", "bottom"]
    return result, rows


def test_answer_figures_get_a_second_table_and_positions_go_to_answers_jsonl(tmp_path):
    result, rows = _answered()
    write_outputs(tmp_path, result, rows)
    table = (tmp_path / "metrics.md").read_text()
    assert "| brick | 90.0 | – | 75.0 | – | 80.0 | 4 |" in table  # the first table as before
    header = (
        "| Category | Answer-map agreement | Position accuracy | Map position accuracy |"
        " Position follows map | Map best accuracy |"
    )
    assert header + " Positioned |" in table
    assert "| brick | 75.0 | – | – | – | 100.0 | 0 |" in table
    assert "| **mean** | 75.0 | – | – | – | 100.0 | 0 |" in table
    lines = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    stain = next(x for x in lines if x["defect"] == "stain")
    assert stain["gt_positions"] == ["center", "bottom"]
    assert stain["answer_positions"] == ["top left", "center"]


def _ious(values):
    """Rows of one category whose worker set ``region_box_iou`` to ``values`` (None: not a
    detected defect), scored and labelled so the other metrics are defined too."""
    return [
        {"image": f"{i}.png", "category": "c", "label": int(v is not None), "defect": "d", "score": 0.6,
         "answer": None, "error": None, "region_box_iou": v}
        for i, v in enumerate(values)
    ]  # fmt: skip


def test_region_box_iou_is_the_mean_and_share_over_the_detected_defects_of_a_category():
    m = category_metrics(_ious([0.8, 0.5, 0.2, None, None]), None, False, 0.3)
    assert m["region_box_iou"] == pytest.approx(0.5)  # (0.8 + 0.5 + 0.2) / 3
    assert m["region_box_iou_share_050"] == pytest.approx(2 / 3)  # 0.5 counts as found
    assert m["n_region_boxes"] == 3
    none = category_metrics(_ious([None, None]), None, False, 0.3)
    assert none["region_box_iou"] is None and none["region_box_iou_share_050"] is None
    assert none["n_region_boxes"] == 0
    unreadable = _ious([0.9, 0.1])
    unreadable[0]["error"] = "unreadable image: x"  # an error row is no detection
    assert category_metrics(unreadable, None, False, 0.3)["region_box_iou"] == pytest.approx(0.1)


def test_the_mean_of_the_region_figures_is_over_categories_that_have_them_and_counts_add_up():
    per_category = {
        "a": category_metrics(_ious([0.8, 0.5, 0.2, None]), None, False, 0.3),  # 0.5, 2/3, 3
        "b": category_metrics(_ious([0.1]), None, False, 0.3),  # 0.1, 0, 1
        "c": category_metrics(_ious([None, None]), None, False, 0.3),  # none detected
    }
    mean = mean_metrics(per_category)
    assert mean["region_box_iou"] == pytest.approx((0.5 + 0.1) / 2)
    assert mean["region_box_iou_share_050"] == pytest.approx((2 / 3 + 0) / 2)
    assert mean["n_region_boxes"] == 4
    result = {"shots": "all", "mean": mean}
    values = mean_metric_values(result)  # what the pipeline's parent run carries
    assert values["eval/mean/region_box_iou"] == pytest.approx(0.3)
    assert values["eval/mean/n_region_boxes"] == 4


def _regioned():
    """_result with region figures, and rows whose stain image has one region."""
    result = _result()
    m = {**result["per_category"]["brick"], "region_box_iou": 0.625, "region_box_iou_share_050": 1.0,
         "n_region_boxes": 1}  # fmt: skip
    result["per_category"] = {"brick": m}
    result["mean"] = m
    rows = _rows()
    region = {"box": [40, 6, 56, 18], "area_px": 192, "area_share": 0.03125, "peak": 0.9, "mean": 0.8,
              "position": "top right"}  # fmt: skip
    rows[3]["regions"] = [region]
    rows[0]["regions"] = []
    return result, rows


def test_region_figures_get_their_table_and_regions_go_to_answers_jsonl(tmp_path):
    result, rows = _regioned()
    write_outputs(tmp_path, result, rows)
    table = (tmp_path / "metrics.md").read_text()
    assert "| Category | Box IoU | IoU >= 0.5 | Detected defects |" in table
    assert "| brick | 62.5 | 100.0 | 1 |" in table and "| **mean** | 62.5 | 100.0 | 1 |" in table
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert {k: written["mean"][k] for k in REGION_METRICS} == {
        "region_box_iou": 0.625,
        "region_box_iou_share_050": 1.0,
    }
    lines = {x["image"]: x for x in map(json.loads, (tmp_path / "answers.jsonl").read_text().splitlines())}
    assert lines["brick/test/stain/003.png"]["regions"] == rows[3]["regions"]
    assert lines["brick/test/good/000.png"]["regions"] == []
    assert lines["brick/test/good/001.png"]["regions"] is None  # a row without the key


def test_overlay_shows_image_heatmap_contour_and_text():
    image = np.full((64, 64, 3), 128, np.uint8)
    amap = np.zeros((64, 64), np.float32)
    amap[20:30, 20:30] = 1.0
    gt = np.zeros((64, 64), bool)
    gt[20:30, 20:30] = True
    pic = render_overlay(image, amap, gt, "brick/test/hole/000.png", "Yes, there is an anomaly.")
    # two 256 px panels and the colour bar's strip beside them
    assert pic.shape[1] == 512 + BAR_GAP + BAR_WIDTH + BAR_LABELS and pic.shape[0] > 256
    assert pic.dtype == np.uint8
    left, right = pic[:256, :256], pic[:256, 256:]
    green = (pic[:256, :, 1] == 255) & (pic[:256, :, 0] == 0) & (pic[:256, :, 2] == 0)
    assert green[:, :256].any() and green[:, 256:].any()  # the ground-truth contour on both panels
    assert right[100, 100, 2] > right[10, 10, 2]  # hot (red) where the map is high
    assert (left[10, 10] == 128).all()
    assert (pic[256:] < 128).any()  # text drawn
    assert encode_png(pic)[:4] == b"\x89PNG"


def test_metrics_and_a_few_overlays_go_to_the_active_mlflow_run(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        _log_and_check(mlflow, tmp_path)
    finally:
        mlflow.set_tracking_uri(None)  # also clears the MLFLOW_TRACKING_URI it exported


def _log_and_check(mlflow, tmp_path):
    mlflow.set_experiment("eval-test")
    rows = _rows()
    out = tmp_path / "out"
    write_outputs(out, _result(), rows)
    for row in rows:
        path = map_path(out, row)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")
    assert not log_to_mlflow(out, _result(), rows, 2)  # no active run: nothing logged
    with mlflow.start_run() as run:
        assert log_to_mlflow(out, _result(), rows, 2)
    client = mlflow.MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.metrics["eval/mean/image_auroc"] == 0.9
    assert data.metrics["eval/brick/accuracy"] == 0.75
    assert "eval/brick/pixel_auroc" not in data.metrics  # null is not logged as a number
    with mlflow.start_run() as run:
        assert log_to_mlflow(out, *_answered(), 2)
    answered = client.get_run(run.info.run_id).data.metrics
    assert answered["eval/brick/answer_map_agreement"] == 0.75
    assert answered["eval/mean/map_best_accuracy"] == 1.0
    assert answered["eval/mean/n_position_answers"] == 0
    assert "eval/brick/position_accuracy" not in answered
    assert "eval/brick/map_position_accuracy" not in answered
    with mlflow.start_run() as run:
        assert log_to_mlflow(out, *_regioned(), 2)
    regioned = client.get_run(run.info.run_id).data.metrics
    assert regioned["eval/brick/region_box_iou"] == 0.625
    assert regioned["eval/mean/region_box_iou_share_050"] == 1.0
    assert regioned["eval/mean/n_region_boxes"] == 1
    logged = [f.path for f in client.list_artifacts(run.info.run_id, "eval/maps/brick")]
    # the two most instructive: the lowest-scored anomaly and the highest-scored normal
    assert sorted(logged) == ["eval/maps/brick/good_001.png", "eval/maps/brick/hole_002.png"]
    assert {f.path for f in client.list_artifacts(run.info.run_id, "eval")} >= {
        "eval/metrics.json",
        "eval/metrics.md",
    }


def test_the_decision_point_figures_say_which_way_it_errs_and_what_to_do():
    rows = _rows()  # normals at 0.2 and 0.6 (a false alarm), anomalies at 0.5 (missed: not above) and 0.9
    m = category_metrics(rows, None, answers_used=False, max_fpr=0.3)
    assert (m["decision_accuracy"], m["false_alarm_share"], m["miss_share"]) == (0.5, 0.5, 0.5)
    notes = decision_notes(m)
    assert len(notes) == 2 and "50% of the test normals" in notes[0] and "50% of the defects" in notes[1]
    passed = [{**r, "score": 0.1 if r["label"] == 0 else 0.9} for r in rows]
    calm = category_metrics(passed, None, answers_used=False, max_fpr=0.3)
    assert (calm["decision_accuracy"], calm["false_alarm_share"], calm["miss_share"]) == (1.0, 0.0, 0.0)
    assert decision_notes(calm) == []
    only_normals = category_metrics([r for r in rows if r["label"] == 0], None, False, 0.3)
    assert only_normals["miss_share"] is None and only_normals["false_alarm_share"] == 0.5
    unscored = category_metrics([{**r, "score": None} for r in rows], None, False, 0.3)
    assert all(unscored[k] is None for k in DECISION_METRICS)


def test_metrics_md_tables_the_decision_point_and_names_a_category_that_flags_most_normals():
    result = _result()
    m = {**result["mean"], "decision_accuracy": 0.5, "false_alarm_share": 1.0, "miss_share": 0.0}
    result["per_category"] = {"brick": m}
    result["mean"] = m
    table = markdown_table(result)
    assert "| brick | 50.0 | 100.0 | 0.0 | 4 |" in table
    assert "- brick: the decision point flags 100% of the test normals" in table


def test_a_borrowed_one_shot_boundary_is_named_as_the_cause_and_md_says_so():
    m = {"false_alarm_share": 1.0, "miss_share": 0.6}
    own, borrowed = decision_notes(m), decision_notes(m, borrowed=True)
    assert "unlike the references" in own[0] and "held-out variation" in own[1]
    assert all("borrowed from the categories training saw" in note for note in borrowed)
    result = _result()
    flagged = {**result["mean"], "decision_accuracy": 0.5, "false_alarm_share": 1.0, "miss_share": 0.0}
    result["per_category"] = {"brick": {**flagged, "boundary_borrowed": True}}
    result["mean"] = flagged
    assert "- brick: the decision point flags 100% of the test normals: its 1-shot boundary is borrowed" in (
        markdown_table(result)
    )
