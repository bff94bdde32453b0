"""How far a few false alarms marked normal fix a shift the references cannot see.

The robustness suite cuts each category's test normals from another part of its source than the
references (synth/robustness_suite.py), so the calibrated boundary, learnt on the references,
can put many test normals of a category above it. No calibration on the references can see such
a shift. On a production line the feedback loop is the fix: an inspector reviews the images the
model flagged, marks the normal ones "normal" (``pipeline feedback``, the served page's Mark
normal), and ``serve`` and ``inspect`` take them into the category's bank at once.

This does the same on each suite dataset: the all-shot model answers every test image; per
category, up to --normals test normals it answered "yes" to (the highest scores first, as a
reviewer sorted by score sees them) join the references; the other test images are evaluated
before and after. Prints one JSON object: per dataset and category, before and after, the answer
accuracy, the map's best accuracy (a threshold chosen on the test set), their ratio, and the
model's and the baseline's Image-AUROC, with the images marked.

    python benchmarks/feedback_recovery.py [--model runs/demo/train] [--role validation|test|all]
        [--datasets grey,colour] [--normals 4] [--out runs/robustness]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for `benchmarks.*` imports

from benchmarks.quality_cli import suite_names, suite_parser  # noqa: E402
from benchmarks.robustness import category_rows  # noqa: E402

FEEDBACK_PREFIX = "feedback-"  # marked normals keep their test names, which train names may share


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = suite_parser(__doc__, role="all")
    parser.add_argument("--normals", type=int, default=4, help="false alarms marked per category, at most")
    parser.add_argument("--workers", type=int, default=2, help="evaluation actors")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/robustness")
    args = parser.parse_args(argv)
    if args.normals < 1:
        parser.error(f"--normals must be at least 1, got {args.normals}")
    return args


def flagged_normals(answers: list[dict[str, Any]], most: int) -> dict[str, list[str]]:
    """Per category, up to ``most`` normal images answered "yes", highest score first: the false
    alarms a reviewer marks normal. ``answers``: evaluation's answers.jsonl rows."""
    from train.model.conversation import parse_answer

    alarms = [r for r in answers if r["label"] == 0 and parse_answer(r["answer"]).is_anomalous]
    marked: dict[str, list[str]] = {}
    for row in sorted(alarms, key=lambda r: -r["score"]):
        chosen = marked.setdefault(row["category"], [])
        if len(chosen) < most:
            chosen.append(row["image"])
    return marked


def split_feedback(data: Path, out: Path, marked: dict[str, list[str]]) -> tuple[Path, Path]:
    """Two copies of ``data`` under ``out`` without the ``marked`` test normals (paths relative to
    ``data``, per category): ``before`` drops them, ``after`` moves them among the train normals."""
    before, after = out / "before", out / "after"
    for copy in (before, after):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(data, copy)
    for category, images in marked.items():
        for image in images:
            if not (data / image).is_file() or Path(image).parts[:3] != (category, "test", "good"):
                raise ValueError(f"{image}: not a test normal of {category} in {data}")
            (before / image).unlink()
            moved = after / category / "train" / "good" / f"{FEEDBACK_PREFIX}{Path(image).name}"
            (after / image).rename(moved)
    return before, after


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from pipeline.core.runtime import configure_environment

    configure_environment()
    from evaluate.config import EvaluateConfig
    from evaluate.job import run_evaluation
    from synth.robustness_suite import suite_dataset

    result: dict[str, Any] = {"model": str(args.model), "normals_marked": args.normals, "datasets": {}}
    for name in suite_names(args):
        data = suite_dataset(args.out / "data", name)
        work = args.out / "feedback" / name
        started = time.perf_counter()
        cfg = EvaluateConfig(workers=args.workers, write_maps=False, mlflow_overlays=0, batch_size=4)
        run_evaluation(args.model, data, work / "eval-reviewed", shots="all", config=cfg)
        answers = [json.loads(line) for line in (work / "eval-reviewed" / "answers.jsonl").open()]
        marked = flagged_normals(answers, args.normals)
        figures: dict[str, Any] = {"marked": marked}
        for label, variant in zip(("before", "after"), split_feedback(data, work, marked), strict=True):
            metrics = run_evaluation(args.model, variant, work / f"eval-{label}", shots="all", config=cfg)
            figures[label] = category_rows(metrics)
        result["datasets"][name] = {**figures, "seconds": round(time.perf_counter() - started)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
