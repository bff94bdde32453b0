"""How each stage's cost grows from the demo's size towards an MVTec-AD-sized set.

Writes an MVTec-shaped dataset from the demo's sources (``synth.demo_dataset``) at each scale: the
demo's 4 categories with f times its images per category (14 f train normals, 20 f good and 20 f
defective test images) and image sides from 256 px (1x) to 700 px (16x, about MVTec's), and times
each stage on it with its peak memory (the resident set of this process and its children, Ray's
workers included):

- ``listing_fingerprint``: reading the layout and hashing every file (train and test fingerprints);
- ``synth``: the demo preset's synthesis on 2 Ray workers (Ray's start-up not counted);
- ``shard_read``: indexing the shards and decoding every sample and mask, as training reads them;
- ``reference_pool``: encoding and calibrating training's few-shot pool (``few_shot_train_pool``
  normals per category: bounded by design);
- ``bank_build``: the all-shot memory bank of one category (every train normal, fusion guard
  included) at the model's patch budget, or ``--bank-budget``;
- ``evaluate_per_image``: scoring and answering test images of that category against that bank,
  per image (reading the image file included);
- ``evaluate_per_image_with_baseline``: the same with evaluation's default plain baseline beside
  it, a nearest-neighbour search over every patch of the references (no coreset: it is the floor
  the model is measured against), whose cost grows with the references (``--no-baseline``);
- ``registry``: logging, registering and promoting the checkpoint in a fresh sqlite MLflow.

Each stage's input size is counted in what it works through (files' bytes, samples, images); the
figure to watch is ``time_ratio / input_ratio`` against 1x: 1 is linear, the goal is at most 1.25
(time ratio 16x/1x <= 20 on a 16x input).

    .venv/bin/python benchmarks/scale.py [--scales 1,4,16] [--model runs/demo/train]
        [--bank-budget N] [--out runs/scale] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for project imports

from benchmarks.memory_bank import PeakRss  # noqa: E402

DEMO = {"train": 14, "test_good": 20, "per_defect": 5, "size": 256}
LARGEST = (16, 700)
"""The scale and image side of the largest set: 16x the demo's images at about MVTec-AD's side."""
EVAL_IMAGES = 8
"""Test images scored with answers per scale: one batch, enough for a per-image figure."""
GOAL = 20 / 16
"""Time ratio over input ratio allowed from 1x to 16x (the issue: 20x the time on a 16x input)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scales", default="1,4,16", help="comma-separated multiples of the demo's size")
    parser.add_argument(
        "--model", type=Path, default=ROOT / "runs/demo/train", help="a demo-preset checkpoint"
    )
    parser.add_argument(
        "--bank-budget", type=int, default=None, help="patches per bank layer (default: the model's)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "runs/scale", help="datasets, shards and MLflow go here"
    )
    parser.add_argument("--keep", action="store_true", help="keep each scale's dataset and shards")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine's 2 cores)")
    return parser.parse_args(argv)


def side_for(scale: int) -> int:
    """Image side at ``scale``: 256 px at 1x to 700 px at 16x, geometric between (4x: 423 px)."""
    top, side = LARGEST
    if scale <= 1:
        return DEMO["size"]
    return round(DEMO["size"] * (side / DEMO["size"]) ** (math.log(scale) / math.log(top)))


def write_dataset(root: Path, scale: int) -> dict[str, Any]:
    from synth.demo_dataset import write_sample_dataset

    if not root.is_dir():
        write_sample_dataset(
            root,
            seed=0,
            size=side_for(scale),
            n_train=DEMO["train"] * scale,
            n_test_good=DEMO["test_good"] * scale,
            n_per_defect=DEMO["per_defect"] * scale,
        )
    files = list(root.rglob("*.png"))
    return {"side": side_for(scale), "files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def timed(stage: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``stage``; its result and seconds, peak resident set and what the stage added (GiB),
    the stages before it not counted (``PeakRss``)."""
    gib = 1024**3
    started = time.perf_counter()
    with PeakRss(tree=True) as rss:
        result = stage()
    seconds = time.perf_counter() - started
    return result, {
        "seconds": round(seconds, 2),
        "peak_rss_gib": round(rss.peak / gib, 2),
        "added_gib": round((rss.peak - rss.before) / gib, 2),
    }


def measure_scale(args: argparse.Namespace, scale: int, predictor: Any) -> dict[str, Any]:
    from evaluate.data import load_image
    from pipeline.fingerprint import dataset_fingerprint
    from pipeline.pipeline_config import load_pipeline_config
    from synth.datasets import read_dataset
    from synth.job import run_synth
    from synth.text import question_for
    from train.config import AugmentConfig
    from train.data import BatchSource
    from train.shard_reader import decode_png, index_shards

    where = args.out / f"{scale}x"
    data, shards = where / "data", where / "shards"
    dataset = write_dataset(data, scale)
    stages: dict[str, Any] = {}

    def fingerprints() -> None:
        dataset_fingerprint(data, "mvtec", "train")
        dataset_fingerprint(data, "mvtec", "test")

    _, stages["listing_fingerprint"] = timed(fingerprints)
    stages["listing_fingerprint"]["input"] = dataset["bytes"]

    synth_cfg = load_pipeline_config(ROOT / "configs/demo.yaml").synth
    with contextlib.redirect_stdout(sys.stderr):  # synth's summary line: stdout stays one JSON object
        manifest, stages["synth"] = timed(lambda: run_synth(synth_cfg, data, shards, progress=False))
    stages["synth"]["seconds"] = round(manifest["run"]["elapsed_s"], 2)  # Ray's start-up left out
    stages["synth"]["input"] = manifest["samples"]

    def read_all() -> int:
        index = index_shards(shards)
        for i in range(len(index.samples)):
            png, mask = index.read(i)
            decode_png(png, "RGB")
            if mask is not None:
                decode_png(mask, "L")
        return len(index.samples)

    samples, stages["shard_read"] = timed(read_all)
    stages["shard_read"]["input"] = samples

    model = predictor.model
    pool = model.cfg.few_shot_train_pool
    source = BatchSource(
        index_shards(shards),
        [],
        image_size=predictor.image_size,
        micro=2,
        rank=0,
        world=1,
        seed=0,
        augment=AugmentConfig(enabled=False),
    )
    _, stages["reference_pool"] = timed(lambda: model.build_reference_pool(*source.reference_images(pool)))
    stages["reference_pool"]["input"] = sum(min(pool, n) for n in _normals_per_category(data).values())

    category = "brick"
    normals = read_dataset(data, "mvtec", split="train", categories=[category])
    predictor.clear_banks()
    bank, stages["bank_build"] = timed(
        lambda: predictor.memory_bank(category, [load_image(r.path, predictor.image_size) for r in normals])
    )
    stages["bank_build"]["input"] = len(normals)
    stages["bank_build"]["patches_per_layer"] = bank.n_patches

    tests = read_dataset(data, "mvtec", split="test", categories=[category])[:: max(1, scale)][:EVAL_IMAGES]

    def score(baseline: Any = None) -> None:
        images = [load_image(r.path, predictor.image_size) for r in tests]
        predictor.predict(
            images,
            [category] * len(images),
            memory_bank=bank,
            questions=question_for(category),
            baseline_bank=baseline,
        )

    _, stages["evaluate_per_image"] = timed(score)
    stages["evaluate_per_image"]["seconds"] = round(stages["evaluate_per_image"]["seconds"] / len(tests), 3)
    stages["evaluate_per_image"]["input"] = 1
    # evaluation's default adds the plain baseline: nearest neighbour over every reference patch
    plain = predictor.baseline_bank(category, [load_image(r.path, predictor.image_size) for r in normals])
    _, stages["evaluate_per_image_with_baseline"] = timed(lambda: score(plain))
    with_baseline = stages["evaluate_per_image_with_baseline"]
    with_baseline["seconds"] = round(with_baseline["seconds"] / len(tests), 3)
    with_baseline["input"] = len(normals)  # its search grows with the references' patches

    _, stages["registry"] = timed(lambda: _register(args.model, where / "mlflow"))
    stages["registry"]["input"] = 1

    if not args.keep:
        shutil.rmtree(where, ignore_errors=True)
    return {"dataset": dataset, "stages": stages}


def _normals_per_category(data: Path) -> dict[str, int]:
    from synth.datasets import read_dataset

    counts: dict[str, int] = {}
    for record in read_dataset(data, "mvtec", split="train"):
        counts[record.category] = counts.get(record.category, 0) + 1
    return counts


def _register(checkpoint: Path, store: Path) -> None:
    """Log, register and promote ``checkpoint`` in a fresh sqlite MLflow under ``store``."""
    import mlflow

    from pipeline.registry import RegistryConfig, register_and_promote

    store.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("scale")
    with mlflow.start_run():
        register_and_promote(checkpoint, {"mean": {"image_auroc": 0.5}}, "scale", RegistryConfig())


def growth(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per stage, time and input ratios of the largest scale against the smallest, and whether the
    time grew at most GOAL times faster than the input."""
    low, high = min(results), max(results)
    out = {}
    for stage, first in results[low]["stages"].items():
        last = results[high]["stages"][stage]
        time_ratio = last["seconds"] / first["seconds"] if first["seconds"] > 0 else None
        input_ratio = last["input"] / first["input"]
        per_input = time_ratio / input_ratio if time_ratio is not None else None
        out[stage] = {
            "time_ratio": _round(time_ratio),
            "input_ratio": _round(input_ratio),
            "time_ratio_per_input_ratio": _round(per_input),
            "linear_or_better": per_input is not None and per_input <= GOAL,
        }
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from pipeline.core.runtime import configure_environment, init_ray

    configure_environment()
    import torch

    torch.set_num_threads(args.threads)
    from train.model.predictor import Predictor

    init_ray(num_cpus=2)  # once, outside every timing
    predictor = Predictor.from_checkpoint(args.model, device="cpu", bank_budget=args.bank_budget)
    scales = [int(s) for s in args.scales.split(",")]
    results = {}
    for scale in scales:
        results[scale] = measure_scale(args, scale, predictor)
        print(f"scale {scale}x done: {json.dumps(results[scale]['stages'])}", file=sys.stderr, flush=True)
    report = {
        "model": str(args.model),
        "bank_budget": predictor.config.memory_bank.max_patches,
        "scales": {f"{s}x": r for s, r in results.items()},
        "growth": growth(results) if len(results) > 1 else None,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
