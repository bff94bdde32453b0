"""Per-category metrics from the gathered rows and pixel histograms, and the output folder.

``metrics.json``: ``setting``, ``shots``, ``per_category`` -> {image_auroc, pixel_auroc, accuracy,
aupro, f1_max, n_images, ...}, ``mean`` -> the same keys (mean over the categories where the metric
is defined; ``null`` where it is defined for none). ``metrics.md`` is the same as a table,
``answers.jsonl`` one line per test image; the overlays are written by evaluate.job as they arrive.
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

log = logging.getLogger(__name__)

# The DESIGN.md keys first, then what we report beside them.
HEADLINE = ("image_auroc", "pixel_auroc", "accuracy", "aupro", "f1_max")
EXTRA = ("pixel_f1_max", "accuracy_substring", "pixel_auroc_error_bound")
COUNTS = ("n_images", "n_unreadable", "n_without_mask")


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
    from train.model.conversation import parse_answer

    ok = [r for r in rows if r["error"] is None]
    labels = np.array([r["label"] for r in ok], dtype=int)
    scores = [r["score"] for r in ok]
    scored = bool(ok) and all(s is not None for s in scores)
    out: dict[str, Any] = dict.fromkeys(HEADLINE + EXTRA)
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


def mean_metrics(per_category: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean over categories of each metric where it is defined (the paper averages per class);
    counts are summed."""
    mean: dict[str, Any] = {}
    for key in HEADLINE + EXTRA:
        values = [m[key] for m in per_category.values() if m.get(key) is not None]
        if key == "pixel_auroc_error_bound":
            mean[key] = max(values) if values else None
        else:
            mean[key] = float(np.mean(values)) if values else None
    for key in COUNTS:
        mean[key] = int(sum(m.get(key, 0) for m in per_category.values()))
    return mean


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown_table(result: dict[str, Any]) -> str:
    """metrics.md: one row per category and the mean, figures in percent as the paper prints them."""
    shots = result["shots"]
    setting = "unsupervised" if not shots else f"{shots}-shot"
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
    if result["unreadable"]:
        lines.append(f"Unreadable files (left out, counted): {len(result['unreadable'])}")
        lines += [f"- `{u['path']}`: {u['reason']}" for u in result["unreadable"]]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, result: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """metrics.json, metrics.md and answers.jsonl (rows sorted by category and image)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "metrics.md").write_text(markdown_table(result))
    keys = ("image", "category", "label", "defect", "score", "answer", "error")
    with (out / "answers.jsonl").open("w") as fh:
        for row in sorted(rows, key=lambda r: (r["category"], r["image"])):
            fh.write(json.dumps({k: row[k] for k in keys}) + "\n")


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
    prefix = "eval" if not result["shots"] else f"eval_{result['shots']}shot"
    values = {f"{prefix}/mean/{k}": v for k, v in result["mean"].items() if isinstance(v, (int, float))}
    for category, m in result["per_category"].items():
        values.update({f"{prefix}/{category}/{k}": v for k, v in m.items() if isinstance(v, (int, float))})
    mlflow.log_metrics(values)
    for name in ("metrics.json", "metrics.md"):
        mlflow.log_artifact(str(out / name), artifact_path=prefix)
    for path in _showcase(out, rows, per_category):
        mlflow.log_artifact(str(path), artifact_path=f"{prefix}/maps/{path.parent.name}")
    return True


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
