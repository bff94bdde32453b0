"""Which part of the k-shot map wins or loses against the plain baseline, on the robustness suite.

The model's k-shot map is the plain nearest-neighbour memory plus rotations of few references,
a coreset, Gaussian smoothing, layer weights, calibration and fusion with the decoder. This turns
them off one at a time (and all together) on a trained model, without retraining (they act at
bank-build and scoring time), and prints the Image-AUROC of each variant beside the baseline's
(``AnomalyGPT.build_baseline_bank``), per suite dataset, category and shot setting, plus each
variant's mean margin over the baseline and its worst category. One JSON object.

Choices are made on the suite's validation datasets (the default), never on the demo's test set.

    python benchmarks/bank_variants.py [--model runs/demo/train] [--role validation|test|all]
        [--shots all,1] [--out runs/robustness/data]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for project imports

from benchmarks.quality_cli import start, suite_names, suite_parser  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "model": {},
    "no_guard": {"fusion_guard": False},
    "no_decoder": {"decoder_weight": 0.0},
    "equal_layers": {"layer_weighting": "equal"},
    "no_smoothing": {"smoothing": 0.0},
    "smoothing_2": {"smoothing": 2.0},
    "averaged": {"unseen_fusion": None},  # categories training never saw fused as the trained ones
    "decoder_cap_1": {"decoder_cap": 1.0},
    "decoder_cap_2": {"decoder_cap": 2.0},
    "cap_1_smoothing_2": {"decoder_cap": 1.0, "smoothing": 2.0},
    "no_rotations": {"rotations": False},
    "equal_layers_no_decoder": {"layer_weighting": "equal", "decoder_weight": 0.0},
    "all_off": {"layer_weighting": "equal", "decoder_weight": 0.0, "smoothing": 0.0, "rotations": False},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = suite_parser(__doc__, role="validation")
    parser.add_argument("--shots", default="all,1")
    parser.add_argument("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--seed-offset", type=int, default=0, help="another draw of every dataset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs/robustness/data", help="suite data folder")
    return parser.parse_args(argv)


def category_aurocs(predictor: Any, data: Path, category: str, shots: int | str, variants: list[str]) -> dict:
    """Image-AUROC of the baseline and of each variant for one category and shot setting."""
    from sklearn.metrics import roc_auc_score

    from evaluate.data import load_image
    from synth.datasets import read_dataset
    from synth.text import question_for

    normals = sorted(r.path for r in read_dataset(data, "mvtec", split="train", categories=[category]))
    tests = read_dataset(data, "mvtec", split="test", categories=[category])
    refs = normals if shots == "all" else normals[: int(shots)]
    size = predictor.image_size
    ref_images = [load_image(p, size) for p in refs]
    test_images = [load_image(r.path, size) for r in tests]
    labels = [r.label for r in tests]
    model_cfg = predictor.model.cfg
    original = model_cfg.memory_bank
    out: dict[str, float] = {}
    baseline = predictor.baseline_bank(category, ref_images)
    try:
        for name in variants:
            model_cfg.memory_bank = dataclasses.replace(original, **VARIANTS[name])
            predictor.clear_banks()  # a bank is cached by content: each variant builds its own
            bank = predictor.memory_bank(category, ref_images)
            scores, plain = [], []
            for i in range(0, len(test_images), 8):
                preds = predictor.predict(
                    test_images[i : i + 8],
                    [category] * len(test_images[i : i + 8]),
                    memory_bank=bank,
                    questions=question_for(category),
                    generate=False,
                    baseline_bank=baseline if name == variants[0] else None,
                )
                scores += [p.score for p in preds]
                plain += [p.baseline_score for p in preds]
            if name == variants[0]:
                out["baseline"] = round(float(roc_auc_score(labels, plain)), 4)
            out[name] = round(float(roc_auc_score(labels, scores)), 4)
    finally:
        model_cfg.memory_bank = original
        predictor.clear_banks()
    return out


def summary(per: list[dict[str, float]], variants: list[str]) -> dict[str, Any]:
    """Per variant: mean Image-AUROC, mean margin over the baseline, worst category margin."""
    out = {}
    for name in ["baseline", *variants]:
        margins = [r[name] - r["baseline"] for r in per]
        out[name] = {
            "mean": round(float(np.mean([r[name] for r in per])), 4),
            "mean_margin": round(float(np.mean(margins)), 4),
            "worst_margin": round(float(min(margins)), 4),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start(args.threads)
    from synth.robustness_suite import suite_dataset, suite_spec
    from train.model.predictor import Predictor

    names = suite_names(args)
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r} (have: {', '.join(VARIANTS)})")
    predictor = Predictor.from_checkpoint(args.model, device="cpu")
    shots = [s if s == "all" else int(s) for s in args.shots.split(",")]
    result: dict[str, Any] = {"model": str(args.model), "datasets": {}, "summary": {}}
    for k in shots:
        every: list[dict[str, float]] = []
        for name in names:
            data = suite_dataset(args.out, name, args.seed_offset)
            per = {}
            for category in suite_spec()["datasets"][name]["categories"]:
                per[category] = category_aurocs(predictor, data, category, k, variants)
                every.append(per[category])
            result["datasets"].setdefault(name, {})[f"{k}-shot"] = per
        result["summary"][f"{k}-shot"] = summary(every, variants)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
