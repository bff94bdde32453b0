"""Per-category metrics from the gathered rows and pixel histograms, and the output folder.

``metrics.json``: ``setting``, ``shots``, ``per_category`` -> {image_auroc, pixel_auroc, accuracy,
aupro, f1_max, n_images, ...}, ``mean`` -> the same keys (mean over the categories where the metric
is defined; ``null`` where it is defined for none). ``metrics.md`` is the same as tables,
``answers.jsonl`` one line per test image (with ``gt_positions``, the grid cells of an anomalous
image's ground-truth regions, ``answer_positions``, the cells its answer names, and ``regions``, the
map's defect regions of evaluate.regions with boxes in the image file's pixels); the overlays
are written by evaluate.job as they arrive.

Whether the answers follow the map (``ANSWER_METRICS``, per category and their mean):

- ``answer_map_agreement``: share of answers whose strict yes/no equals the map's decision at its
  F1-optimal image threshold (the one of ``f1_max``); an answer with neither counts as disagreeing.
  ``null`` without answers, without scores or without an anomalous image (no F1 threshold).
- ``position_accuracy``: among anomalous images with ground-truth regions answered "yes", the share
  whose answer names the grid cell of at least one region's centroid. ``null`` when there are none;
  ``n_position_answers`` counts them.
- ``map_position_accuracy``: on the same images as ``position_accuracy``, the share whose map peaks
  in the grid cell of a region's centroid: the position accuracy of answers that named the map's
  hottest cell, so the gap between the two is the LLM's, not the map's. ``null`` where
  ``position_accuracy`` is.
- ``position_follows_map``: on the same images, the share whose answer names the map's hottest cell
  (the answer reads the map, whether or not the map is right). ``null`` where ``position_accuracy`` is.
- ``map_best_accuracy``: the best accuracy any image-score threshold reaches, the ceiling for answers
  that follow the map; 1.0 with a single class (a threshold beyond all scores). ``null`` without scores.

Where the map's own decision point (0.5: a score above it is an anomaly, as the answers and the
service decide) errs (``DECISION_METRICS``): ``decision_accuracy``, the share of images it decides
right; ``false_alarm_share``, the share of test normals scored above it; ``miss_share``, the share of
anomalies at or below it. Which way it errs is what to do about it: false alarms are normals the
references do not cover (mark them normal, or add references like them), misses a boundary above
faint defects. ``null`` where the category has no image of that kind or no scores.

Whether the region boxes find the defects (``REGION_METRICS``), over the detected defects (anomalous
images with a ground-truth mask scored above 0.5; ``n_region_boxes`` counts them): ``region_box_iou``
is the mean IoU of each one's best region box with the box around its ground truth (both at the
evaluation size), ``region_box_iou_share_050`` the share with an IoU of at least 0.5. ``null`` when
there are none.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from evaluate import metrics
from evaluate.pixel_state import PixelMetricState
from train.model.config import DECISION_POINT
from train.model.conversation import parse_answer

log = logging.getLogger(__name__)

# The paper's keys first, then what we report beside them.
HEADLINE = ("image_auroc", "pixel_auroc", "accuracy", "aupro", "f1_max")
EXTRA = ("pixel_f1_max", "accuracy_substring", "pixel_auroc_error_bound")
ANSWER_METRICS = (
    "answer_map_agreement",
    "position_accuracy",
    "map_position_accuracy",
    "position_follows_map",
    "map_best_accuracy",
)
DECISION_METRICS = ("decision_accuracy", "false_alarm_share", "miss_share")
REGION_METRICS = ("region_box_iou", "region_box_iou_share_050")
COUNTS = ("n_images", "n_unreadable", "n_without_mask", "n_position_answers", "n_region_boxes")
GOOD_BOX_IOU = 0.5
"""A region box with at least this IoU with the ground truth's box found the defect (as in detection)."""


def category_metrics(
    rows: list[dict[str, Any]],
    state: PixelMetricState | None,
    answers_used: bool,
    max_fpr: float,
    n_without_mask: int = 0,
    n_skipped: int = 0,
) -> dict[str, Any]:
    """Metrics of one category; ``null`` for every metric its data cannot define.

    ``f1_max`` is image-level (threshold on the image score), ``pixel_f1_max`` pixel-level.
    ``accuracy`` is the strict parse of the answers when ``answers_used``, else the paper's
    max-normal-score threshold rule; ``accuracy_substring`` is the reference's "Yes"/"No" rule.
    """
    ok = [r for r in rows if r["error"] is None]
    labels = np.array([r["label"] for r in ok], dtype=int)
    scores = [r["score"] for r in ok]
    scored = bool(ok) and all(s is not None for s in scores)
    out: dict[str, Any] = dict.fromkeys(HEADLINE + EXTRA + ANSWER_METRICS + DECISION_METRICS + REGION_METRICS)
    if scored and metrics.has_both_classes(labels):
        out["image_auroc"] = metrics.auroc(scores, labels)
    if scored and labels.any():
        out["f1_max"] = metrics.f1_max(scores, labels)
    if answers_used and ok:
        answers = [r["answer"] for r in ok]
        out["accuracy"] = metrics.answer_accuracy([parse_answer(a).is_anomalous for a in answers], labels)
        out["accuracy_substring"] = metrics.substring_accuracy(answers, labels)
    elif scored and not labels.all():
        out["accuracy"] = metrics.threshold_accuracy(scores, labels)
    out.update(answer_metrics(ok, answers_used, scored))
    if scored:
        out.update(decision_metrics(scores, labels))
    out.update(region_metrics(ok))
    if state is not None:
        out["pixel_auroc"] = state.auroc()
        out["aupro"] = state.aupro(max_fpr)
        out["pixel_f1_max"] = state.f1_max()
        if out["pixel_auroc"] is not None:
            out["pixel_auroc_error_bound"] = state.auroc_error_bound()
    out["n_images"] = len(ok)
    out["n_unreadable"] = len(rows) - len(ok) + n_skipped  # failed to decode + failed the header check
    out["n_without_mask"] = n_without_mask
    return out


def answer_metrics(ok: list[dict[str, Any]], answers_used: bool, scored: bool) -> dict[str, Any]:
    """ANSWER_METRICS and n_position_answers of one category's readable rows (``null`` where undefined)."""
    out: dict[str, Any] = dict.fromkeys(ANSWER_METRICS)
    labels = np.array([r["label"] for r in ok], dtype=int)
    scores = [r["score"] for r in ok]
    answered = ok if answers_used else []
    parsed = [parse_answer(r["answer"]) for r in answered]
    if scored:
        out["map_best_accuracy"] = metrics.best_threshold_accuracy(scores, labels)
    if scored and parsed and labels.any():
        decisions = np.asarray(scores) >= metrics.f1_max_threshold(scores, labels)
        out["answer_map_agreement"] = metrics.answer_agreement([p.is_anomalous for p in parsed], decisions)
    # the anomalous images with ground-truth regions answered "yes", with the cells their answers name
    located = [
        (p.positions, r) for p, r in zip(parsed, answered, strict=True) if p.is_anomalous and _locatable(r)
    ]
    if located:
        truth = [r["gt_positions"] for _, r in located]
        out["position_accuracy"] = metrics.position_accuracy([named for named, _ in located], truth)
        hottest = [[r["map_position"]] if r.get("map_position") else [] for _, r in located]
        out["map_position_accuracy"] = metrics.position_accuracy(hottest, truth)
        out["position_follows_map"] = metrics.position_accuracy([named for named, _ in located], hottest)
    out["n_position_answers"] = len(located)
    return out


def decision_metrics(scores: list[float], labels: np.ndarray) -> dict[str, float | None]:
    """DECISION_METRICS of one category's scores (see the module docstring)."""
    above = np.asarray(scores) > DECISION_POINT
    normal, anomalous = labels == 0, labels == 1
    return {
        "decision_accuracy": float((above == anomalous).mean()),
        "false_alarm_share": float(above[normal].mean()) if normal.any() else None,
        "miss_share": float((~above[anomalous]).mean()) if anomalous.any() else None,
    }


def region_metrics(ok: list[dict[str, Any]]) -> dict[str, Any]:
    """REGION_METRICS and n_region_boxes of one category's readable rows, from their
    ``region_box_iou`` (set by the worker for the detected defects only)."""
    ious = np.array([r["region_box_iou"] for r in ok if r.get("region_box_iou") is not None], float)
    return {
        "region_box_iou": float(ious.mean()) if ious.size else None,
        "region_box_iou_share_050": float((ious >= GOOD_BOX_IOU).mean()) if ious.size else None,
        "n_region_boxes": int(ious.size),
    }


def _locatable(row: dict[str, Any]) -> bool:
    """An anomalous image whose ground truth names at least one region."""
    return bool(row["label"] and row.get("gt_positions"))


def mean_metrics(per_category: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean over categories of each metric where it is defined (the paper averages per class);
    counts are summed."""
    mean: dict[str, Any] = {}
    for key in HEADLINE + EXTRA + ANSWER_METRICS + DECISION_METRICS + REGION_METRICS:
        values = [m[key] for m in per_category.values() if m.get(key) is not None]
        if key == "pixel_auroc_error_bound":
            mean[key] = max(values) if values else None
        else:
            mean[key] = float(np.mean(values)) if values else None
    for key in COUNTS:
        mean[key] = int(sum(m.get(key, 0) for m in per_category.values()))
    return mean


def setting_name(shots: int | str) -> str:
    """How metrics.md names the setting: all-shot, unsupervised or k-shot."""
    if shots == "all":
        return "all-shot (memory bank of every train normal, fused with the decoder)"
    return "unsupervised (decoder map)" if not shots else f"{shots}-shot"


def mlflow_prefix(shots: int | str) -> str:
    """MLflow metric prefix: ``eval`` for the default all-shot setting, else the setting's name."""
    if shots == "all":
        return "eval"
    return "eval_unsupervised" if not shots else f"eval_{shots}shot"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


DECODER_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "map_best_accuracy")


def part_metrics(
    rows: list[dict[str, Any]], score_key: str, state: PixelMetricState | None, max_fpr: float
) -> dict:
    """The map metrics of another map scored beside the reported one (rows' ``score_key``): the
    decoder's own map (``decoder_score``) or the plain baseline's (``baseline_score``)."""
    as_part = [{**r, "score": r.get(score_key)} for r in rows]
    full = category_metrics(as_part, state, False, max_fpr)
    return {k: full[k] for k in (*DECODER_KEYS, "n_images")}


BELOW_BASELINE_MARGIN = 0.0005
"""A category is flagged when the model's Image-AUROC is below the baseline's by more than this
(half of the last printed digit of a percentage with one decimal)."""


def baseline_section(per_category: dict[str, dict], baseline: dict[str, dict]) -> dict[str, Any]:
    """metrics.json's ``baseline``: the plain memory's figures per category and mean, the model's
    Image-AUROC minus the baseline's, and the categories where the model falls below it."""
    margin = {
        c: per_category[c]["image_auroc"] - b["image_auroc"]
        for c, b in baseline.items()
        if per_category[c].get("image_auroc") is not None and b.get("image_auroc") is not None
    }
    mean = mean_metrics(baseline)
    model_mean = mean_metrics(per_category).get("image_auroc")
    return {
        "what": "plain nearest-neighbour memory of the same encoder's bank layers and references",
        "per_category": baseline,
        "mean": mean,
        "image_auroc_margin": margin,
        "mean_image_auroc_margin": (
            None
            if model_mean is None or mean.get("image_auroc") is None
            else model_mean - mean["image_auroc"]
        ),
        "below": sorted(c for c, m in margin.items() if m < -BELOW_BASELINE_MARGIN),
    }


def markdown_table(result: dict[str, Any]) -> str:
    """metrics.md: one row per category and the mean, figures in percent as the paper prints them."""
    setting = setting_name(result["shots"])
    lines = [
        f"# Evaluation: {setting}",
        "",
        f"Model `{result['model']}`, data `{result['data']}` ({result['format']}), "
        f"{result['image_size']} px, accuracy rule: {result['accuracy_rule']}.",
        "",
        "| Category | Image-AUROC | Pixel-AUROC | Accuracy | AUPRO | F1-max | Images |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [*result["per_category"].items(), ("**mean**", result["mean"])]
    for name, m in rows:
        figures = " | ".join(_pct(m[k]) for k in HEADLINE)
        lines.append(f"| {name} | {figures} | {m['n_images']} |")
    lines.append("")
    if any(m.get(k) is not None for _, m in rows for k in ANSWER_METRICS):
        lines += _answer_table(rows)
    if any(m.get("decision_accuracy") is not None for _, m in rows):
        lines += _decision_table(rows)
    if any(m.get("n_region_boxes") for _, m in rows):
        lines += _region_table(rows)
    if result.get("decoder_only"):
        lines += _decoder_table(result["decoder_only"])
    if result.get("baseline"):
        lines += _baseline_table(result)
    if result["unreadable"]:
        lines.append(f"Unreadable files (left out, counted): {len(result['unreadable'])}")
        lines += [f"- `{u['path']}`: {u['reason']}" for u in result["unreadable"]]
    return "\n".join(lines) + "\n"


def _answer_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Second table of metrics.md: do the answers follow the map (see the module docstring)."""
    intro = (
        "Answers against the map: agreement with the map's F1-optimal decision, position accuracy of "
        "the anomalies answered yes and that of the map's hottest cell on the same images, how often "
        "those answers name the map's hottest cell, and the best accuracy a map threshold reaches."
    )
    header = (
        "Answer-map agreement",
        "Position accuracy",
        "Map position accuracy",
        "Position follows map",
        "Map best accuracy",
    )
    return _percent_table(rows, intro, header, ANSWER_METRICS, ("Positioned", "n_position_answers"))


def _decision_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """metrics.md's table of where the map's decision point errs (see the module docstring)."""
    intro = (
        "The map's decision point (a score above 0.5 is an anomaly, as the answers and the service "
        "decide): accuracy, the test normals it flags and the defects it misses (all in percent)."
    )
    header = ("Decision accuracy", "Normals flagged", "Defects missed")
    lines = _percent_table(rows, intro, header, DECISION_METRICS, ("Images", "n_images"))
    notes = [
        f"- {name}: {note}"
        for name, m in rows
        if name != "**mean**"
        for note in decision_notes(m, borrowed=m.get("boundary_borrowed", False))
    ]
    return [*lines, *notes, ""] if notes else lines


MOST = 0.5
"""A decision point that flags (or misses) at least this share of a category's normals (anomalies)
is said to err that way in the report and on the console."""


def decision_notes(m: dict[str, Any], borrowed: bool = False) -> list[str]:
    """What a category's decision figures tell the user to do, if anything. ``borrowed``: its
    boundary is not its own but the median of those training measured on its own categories (one
    reference of a category training never saw)."""
    notes = []
    for key, what, own_cause, borrowed_cause in _DECISION_ERRORS:
        if (m.get(key) or 0.0) >= MOST:
            cause = (
                f"{BORROWED}, and this one's {borrowed_cause} ({MORE_REFERENCES})" if borrowed else own_cause
            )
            notes.append(f"the decision point {what.format(100 * m[key])}: {cause}")
    return notes


BORROWED = "its 1-shot boundary is borrowed from the categories training saw"
MORE_REFERENCES = "evaluate with more references, which calibrate it, or train on it"
_DECISION_ERRORS = (
    (
        "false_alarm_share",
        "flags {:.0f}% of the test normals",
        "they are unlike the references (mark them normal with `pipeline feedback`, or add "
        "references like them)",
        "normals score higher",
    ),
    (
        "miss_share",
        "misses {:.0f}% of the defects",
        "they score within the references' own held-out variation (more references cover the normals "
        "closer and lower it)",
        "defects score under it",
    ),
)
"""Per way the decision point errs: its share's key, what it does, and why (own or borrowed boundary)."""


def _region_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """metrics.md's table of the region boxes against the ground truth (see the module docstring)."""
    intro = (
        "Region boxes of the detected defects (score above 0.5, with a mask): mean IoU of the best box "
        "with the ground truth's box, and the share with an IoU of at least 0.5 (both in percent)."
    )
    header = ("Box IoU", "IoU >= 0.5")
    return _percent_table(rows, intro, header, REGION_METRICS, ("Detected defects", "n_region_boxes"))


def _percent_table(
    rows: list[tuple[str, dict[str, Any]]],
    intro: str,
    header: tuple[str, ...],
    keys: tuple[str, ...],
    count: tuple[str, str],
) -> list[str]:
    """A metrics.md table: per category, ``keys`` in percent, then the count ``count`` = (title, key)."""
    titles = ("Category", *header, count[0])
    lines = [intro, "", "| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for name, m in rows:
        figures = " | ".join(_pct(m.get(k)) for k in keys)
        lines.append(f"| {name} | {figures} | {m.get(count[1], 0)} |")
    return [*lines, ""]


def _decoder_table(decoder_only: dict[str, Any]) -> list[str]:
    """Third table of metrics.md: the decoder's map alone, beside the fused map of the first."""
    lines = [
        "The decoder's map alone (no memory bank):",
        "",
        "| Category | Image-AUROC | Pixel-AUROC | AUPRO | F1-max | Map best accuracy |",
        "|---|---|---|---|---|---|",
    ]
    rows = [*decoder_only["per_category"].items(), ("**mean**", decoder_only["mean"])]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(_pct(m.get(k)) for k in DECODER_KEYS) + " |")
    return [*lines, ""]


def _baseline_table(result: dict[str, Any]) -> list[str]:
    """The plain nearest-neighbour memory beside the model: the floor its map must clear."""
    base = result["baseline"]
    lines = [
        "The model against a plain nearest-neighbour memory (same encoder layers, same references; "
        "no rotations, coreset, weighting, calibration or decoder):",
        "",
        "| Category | Model Image-AUROC | Baseline Image-AUROC | Model - baseline | Baseline Pixel-AUROC |",
        "|---|---|---|---|---|",
    ]
    rows = [*base["per_category"].items(), ("**mean**", base["mean"])]
    for name, b in rows:
        is_mean = name == "**mean**"
        model = result["mean"] if is_mean else result["per_category"][name]
        margin = base["mean_image_auroc_margin"] if is_mean else base["image_auroc_margin"].get(name)
        flag = " **below the baseline**" if name in base["below"] else ""
        shown = "n/a" if margin is None else f"{100 * margin:+.1f}"
        lines.append(
            f"| {name} | {_pct(model.get('image_auroc'))} | {_pct(b.get('image_auroc'))} | "
            f"{shown}{flag} | {_pct(b.get('pixel_auroc'))} |"
        )
    return [*lines, ""]


def write_outputs(out: Path, result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """metrics.json, metrics.md and answers.jsonl (rows sorted by category and image)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "metrics.md").write_text(markdown_table(result))
    keys = ("image", "category", "label", "defect", "score", "answer", "error")
    with (out / "answers.jsonl").open("w") as fh:
        for row in sorted(rows, key=lambda r: (r["category"], r["image"])):
            line = {k: row[k] for k in keys}
            line["gt_positions"] = row.get("gt_positions")
            answer = row["answer"]
            line["answer_positions"] = None if answer is None else parse_answer(answer).positions
            line["regions"] = row.get("regions")
            fh.write(json.dumps(line) + "\n")


def map_path(out: Path, row: dict[str, Any]) -> Path:
    """maps/<category>/<defect>_<stem>.png: the defect folder keeps MVTec's repeated stems apart."""
    return out / "maps" / row["category"] / f"{row['defect']}_{Path(row['image']).stem}.png"


def log_to_mlflow(out: Path, result: dict[str, Any], rows: list[dict[str, Any]], per_category: int) -> bool:
    """Metrics, metrics.json/.md and a few overlays to the active MLflow run, if there is one.

    Without mlflow imported there can be no active run in this process, so it is not imported."""
    if "mlflow" not in sys.modules:
        return False
    import mlflow

    if mlflow.active_run() is None:
        return False
    prefix = mlflow_prefix(result["shots"])
    values = _metric_values(prefix, result)
    for part in ("decoder_only", "baseline"):
        if result.get(part):
            values.update(_metric_values(f"{prefix}_{part}", result[part]))
    mlflow.log_metrics(values)
    for name in ("metrics.json", "metrics.md"):
        mlflow.log_artifact(str(out / name), artifact_path=prefix)
    for path in _showcase(out, rows, per_category):
        mlflow.log_artifact(str(path), artifact_path=f"{prefix}/maps/{path.parent.name}")
    return True


def mean_metric_values(result: dict[str, Any]) -> dict[str, float]:
    """The mean metrics under the names the evaluation's MLflow run gives them (``eval/mean/...``),
    for another run (the pipeline's parent run) to carry the same figures."""
    return _mean_values(mlflow_prefix(result["shots"]), result["mean"])


def _mean_values(prefix: str, mean: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}/mean/{k}": v for k, v in mean.items() if isinstance(v, (int, float))}


def _metric_values(prefix: str, result: dict[str, Any]) -> dict[str, float]:
    values = _mean_values(prefix, result["mean"])
    for category, m in result["per_category"].items():
        values.update({f"{prefix}/{category}/{k}": v for k, v in m.items() if isinstance(v, (int, float))})
    return values


def _showcase(out: Path, rows: list[dict[str, Any]], per_category: int) -> list[Path]:
    """Per category the lowest-scored anomalies and highest-scored normals: the instructive errors."""
    chosen: list[Path] = []
    for category in sorted({r["category"] for r in rows}):
        ok = [r for r in rows if r["category"] == category and r["error"] is None]
        anomalies = sorted((r for r in ok if r["label"]), key=lambda r: r["score"] or 0.0)
        normals = sorted((r for r in ok if not r["label"]), key=lambda r: -(r["score"] or 0.0))
        picks = [r for pair in zip(anomalies, normals, strict=False) for r in pair]
        picks += anomalies[len(normals) :] + normals[len(anomalies) :]
        chosen += [p for p in (map_path(out, r) for r in picks[:per_category]) if p.is_file()]
    return chosen
