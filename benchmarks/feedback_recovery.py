"""How far a few false alarms marked normal fix a shift the references cannot see.

The robustness suite cuts each category's test normals from another part of its source than the
references (synth/robustness_suite.py), so the calibrated boundary, learnt on the references,
can put many test normals of a category above it. No calibration on the references can see such
a shift. On a production line the feedback loop is the fix: an inspector reviews the images the
model flagged, marks the normal ones "normal" (``pipeline feedback``, the served page's Mark
normal), and ``serve`` and ``inspect`` take them into the category's bank at once.

This does the same on each suite dataset: the all-shot model answers every test image; per
category, up to --normals test normals it answered "yes" to (the highest scores first, as a
reviewer sorted by score sees them) are marked normal; the other test images are evaluated
before marking and after it, twice: with the marked normals as the bank's cover, as ``serve`` and
``inspect --feedback`` bank a feedback folder (``after``: in the bank, not in its calibration), and
with them as references (``after_as_references``: in the train split, calibrating the bank too,
as before the cover existed). Prints one JSON object: per dataset and category, for each the
answer accuracy, the map's best accuracy (a threshold chosen on the test set), their ratio,
where the decision point errs, and the model's and the baseline's Image-AUROC, with the images
marked.

    python benchmarks/feedback_recovery.py [--model runs/demo/train] [--role validation|test|all]
        [--datasets grey,colour] [--normals 4] [--out runs/robustness]
"""

from __future__ import annotations

import argparse
import dataclasses
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


def split_feedback(data: Path, out: Path, marked: dict[str, list[str]]) -> tuple[Path, Path, Path]:
    """Under ``out``: two copies of ``data`` without the ``marked`` test normals (paths relative to
    ``data``, per category), ``before`` (dropped) and ``as_references`` (moved among the train
    normals), and ``feedback``, a feedback folder holding them as confirmed normals."""
    before, as_references, feedback = out / "before", out / "as_references", out / "feedback"
    for copy in (before, as_references):
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(data, copy)
    shutil.rmtree(feedback, ignore_errors=True)
    for category, images in marked.items():
        (feedback / category / "train" / "good").mkdir(parents=True)
        for image in images:
            if not (data / image).is_file() or Path(image).parts[:3] != (category, "test", "good"):
                raise ValueError(f"{image}: not a test normal of {category} in {data}")
            (before / image).unlink()
            name = f"{FEEDBACK_PREFIX}{Path(image).name}"
            (as_references / image).rename(as_references / category / "train" / "good" / name)
            shutil.copyfile(data / image, feedback / category / "train" / "good" / name)
    return before, as_references, feedback


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
        before, as_references, feedback = split_feedback(data, work, marked)
        covered = dataclasses.replace(cfg, feedback=str(feedback))
        for label, variant, setting in (
            ("before", before, cfg),
            ("after", before, covered),
            ("after_as_references", as_references, cfg),
        ):
            metrics = run_evaluation(args.model, variant, work / f"eval-{label}", shots="all", config=setting)
            figures[label] = category_rows(metrics)
        result["datasets"][name] = {**figures, "seconds": round(time.perf_counter() - started)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
