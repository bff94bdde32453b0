"""How well region boxes fit the defects, for several region cores: the study that chose CORE_SHARE.

A region is a connected component of the calibrated map above 0.5, told by its core: the pixels at
a share of the component's peak or more (``evaluate.regions``). The map is smoothed, so the whole
component is wider than the defect. This scores every defective test image of each dataset once
(all train normals as the bank, no answers) and measures, for each core share, the mean IoU of each
detected defect's best region box with the box around its ground-truth mask, as evaluation's
``region_box_iou`` does, and the share of boxes at IoU >= 0.5.

The choice is made on data that is not the demo: the robustness suite's validation datasets
(``synth/robustness_suite.py``: other textures, other defect kinds) and the demo's generator with
another seed (``sample-data --seed 1``). The demo's own test set is reported with ``--demo``,
never chosen on. Prints one JSON object; ``chosen`` is the share with the best validation mean.

    python benchmarks/region_boxes.py [--model runs/demo/train] [--out runs/region-boxes]
        [--shares 0,0.6,0.7,0.75,0.8,0.85,0.9] [--demo runs/demo/data]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for project imports

from benchmarks.quality_cli import parser_with_model_and_data, start  # noqa: E402

BATCH = 8
VALIDATION_SUITE = ("grey", "colour")
SAMPLE_SEED = 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = parser_with_model_and_data(__doc__, 2, "2: the machine's cores; no token decoding here")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/region-boxes", help="datasets go here")
    parser.add_argument("--shares", default="0,0.6,0.7,0.75,0.8,0.85,0.9", help="core shares to try")
    parser.add_argument(
        "--demo", type=Path, default=None, help="also report this dataset (the demo's), never chosen on"
    )
    return parser.parse_args(argv)


def detected_defects(predictor: Any, root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(calibrated map, ground-truth mask) of every defect the model detects (score above 0.5) in
    ``root``'s test split, each category's bank built from all its train normals."""
    from evaluate.data import load_ground_truth, load_image
    from synth.datasets import read_dataset
    from train.model.config import DECISION_POINT

    test = [r for r in read_dataset(root, "mvtec", split="test") if r.label == 1 and r.mask_path]
    train = read_dataset(root, "mvtec", split="train")
    size = predictor.image_size
    out = []
    for category in sorted({r.category for r in test}):
        normals = [load_image(r.path, size) for r in train if r.category == category]
        bank = predictor.memory_bank(category, normals)
        records = [r for r in test if r.category == category]
        for i in range(0, len(records), BATCH):
            chunk = records[i : i + BATCH]
            images = [load_image(r.path, size) for r in chunk]
            preds = predictor.predict(images, [category] * len(chunk), memory_bank=bank, generate=False)
            for record, pred in zip(chunk, preds, strict=True):
                truth = load_ground_truth(record.mask_path, size, 0.1)
                if pred.score > DECISION_POINT and truth.any():
                    out.append((pred.anomaly_map, truth))
        predictor.clear_banks()
    return out


def box_figures(defects: list[tuple[np.ndarray, np.ndarray]], share: float) -> dict[str, Any]:
    """Mean best-box IoU and share of boxes at IoU >= 0.5 with regions cored at ``share``."""
    from evaluate.regions import best_box_iou, find_regions

    ious = np.array([best_box_iou(find_regions(m, core_share=share), gt) for m, gt in defects])
    return {"mean": round(float(ious.mean()), 3), "share_050": round(float((ious >= 0.5).mean()), 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start(args.threads)
    from synth.demo_dataset import write_sample_dataset
    from synth.robustness_suite import write_suite_dataset
    from train.model.predictor import Predictor

    roots = {}
    for name in VALIDATION_SUITE:
        roots[name] = args.out / name
        if not roots[name].is_dir():
            write_suite_dataset(roots[name], name)
    roots[f"sample-seed{SAMPLE_SEED}"] = args.out / f"sample-seed{SAMPLE_SEED}"
    if not roots[f"sample-seed{SAMPLE_SEED}"].is_dir():
        write_sample_dataset(roots[f"sample-seed{SAMPLE_SEED}"], seed=SAMPLE_SEED)
    validation = list(roots)
    if args.demo is not None:
        roots["demo (reported only)"] = args.demo
    predictor = Predictor.from_checkpoint(args.model, device="cpu")
    defects = {name: detected_defects(predictor, root) for name, root in roots.items()}
    shares = [float(s) for s in args.shares.split(",")]
    table = {}
    for share in shares:
        row = {name: box_figures(found, share) for name, found in defects.items()}
        row["validation_mean"] = round(float(np.mean([row[n]["mean"] for n in validation])), 3)
        table[str(share)] = row
    result = {
        "model": str(args.model),
        "detected_defects": {name: len(found) for name, found in defects.items()},
        "by_core_share": table,
        "chosen": max(table, key=lambda s: table[s]["validation_mean"]),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
