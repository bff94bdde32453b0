"""Output files and MLflow logging of an evaluation."""

from __future__ import annotations

import json

import numpy as np

from evaluate.overlay import BAR_GAP, BAR_LABELS, BAR_WIDTH, encode_png, render_overlay
from evaluate.report import log_to_mlflow, map_path, markdown_table, write_outputs


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
        "image", "category", "label", "defect", "score", "answer", "error", "gt_positions", "answer_positions"
    }  # fmt: skip
    assert lines[0]["gt_positions"] is None and lines[0]["answer_positions"] is None  # no answer
    table = (tmp_path / "metrics.md").read_text()
    assert "| brick | 90.0 | – | 75.0 | – | 80.0 | 4 |" in table
    assert "Answer-map agreement" not in table  # no answer figures: no second table
    assert "brick/test/good/9.png" in table
    assert map_path(tmp_path, _rows()[2]) == tmp_path / "maps" / "brick" / "hole_002.png"
    assert markdown_table(_result()) == table


def _answered():
    """_result and _rows with answers, ground-truth positions and the answer figures."""
    result = _result()
    m = {**result["per_category"]["brick"], "answer_map_agreement": 0.75, "position_accuracy": None,
         "map_position_accuracy": None, "map_best_accuracy": 1.0, "n_position_answers": 0}  # fmt: skip
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
        "| Category | Answer-map agreement | Position accuracy | Map position accuracy | Map best accuracy |"
    )
    assert header + " Positioned |" in table
    assert "| brick | 75.0 | – | – | 100.0 | 0 |" in table
    assert "| **mean** | 75.0 | – | – | 100.0 | 0 |" in table
    lines = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    stain = next(x for x in lines if x["defect"] == "stain")
    assert stain["gt_positions"] == ["center", "bottom"]
    assert stain["answer_positions"] == ["top left", "center"]


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
    logged = [f.path for f in client.list_artifacts(run.info.run_id, "eval/maps/brick")]
    # the two most instructive: the lowest-scored anomaly and the highest-scored normal
    assert sorted(logged) == ["eval/maps/brick/good_001.png", "eval/maps/brick/hole_002.png"]
    assert {f.path for f in client.list_artifacts(run.info.run_id, "eval")} >= {
        "eval/metrics.json",
        "eval/metrics.md",
    }
