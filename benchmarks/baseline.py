"""The floor a trained anomaly map must clear: a plain nearest-neighbour patch memory.

A map that loses to this has no reason to exist. The baseline uses the SAME frozen encoder (the
model's own, through ``model.encode``), the SAME bank layers (``memory_bank.layers``) and the SAME
normal train images as the model's k-shot evaluation, and nothing else: every patch of the K
normal images (no rotations, no coreset, no calibration, no decoder), a query patch scores
1 - max cosine similarity, per-layer maps are upsampled bilinearly to the image size and
averaged, the image score is the map's max. It is written here independently of MemoryBank.

For each shot setting (1 = the first train normal in sorted order, as evaluate with
reference_start 0; all = every train normal) it prints, per category and as the mean, the
baseline's Image-/Pixel-AUROC (sklearn) beside the model's (``run_evaluation`` without answers),
and whether the model's mean Image-AUROC is at least the baseline's. One JSON object.

    python benchmarks/baseline.py [--model runs/demo/train] [--data runs/demo/data] [--shots 1,all]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for `benchmarks.*` imports

from benchmarks.quality_cli import parser_with_model_and_data, start  # noqa: E402

MEMORY_CHUNK = 4096  # memory rows per similarity product
QUERY_CHUNK = 256  # query rows per similarity product
BATCH = 8  # images encoded at once


# --- the baseline, on given feature maps (pure functions) ---------------------------------------
def select_layers(patch_maps: list[Any], layers: list[int] | None) -> list[Any]:
    """The maps the bank uses: ``layers`` indexes the encoder's maps; None keeps them all."""
    return list(patch_maps) if layers is None else [patch_maps[i] for i in layers]


def memory_from_maps(patch_maps: list[Any]) -> list[Any]:
    """Per layer, every patch of the normal images as unit rows (N * h * w, C)."""
    import torch.nn.functional as F

    return [
        F.normalize(m.flatten(2).transpose(1, 2).reshape(-1, m.shape[1]).float(), dim=-1) for m in patch_maps
    ]


def max_similarity(queries: Any, memory: Any, chunk: int = MEMORY_CHUNK) -> Any:
    """Max cosine similarity of each unit query row to the unit memory rows; queries and memory
    in chunks, so that each product block stays small (fast on a CPU, bounded in memory)."""
    import torch

    out = []
    for rows in queries.split(QUERY_CHUNK):
        best = None
        for part in memory.split(chunk):
            sims = (rows @ part.T).amax(dim=1)
            best = sims if best is None else best.maximum(sims)
        out.append(best)
    return torch.cat(out)


def distance_maps(query_maps: list[Any], memory: list[Any], size: tuple[int, int]) -> Any:
    """(B, H, W) anomaly maps: per layer 1 - max cosine similarity to that layer's memory,
    upsampled bilinearly to ``size``, averaged over layers."""
    import torch
    import torch.nn.functional as F

    if len(query_maps) != len(memory):
        raise ValueError(f"{len(query_maps)} query layers but {len(memory)} memory layers")
    layers = []
    for fmap, mem in zip(query_maps, memory, strict=True):
        b, c, h, w = fmap.shape
        queries = F.normalize(fmap.float().flatten(2).transpose(1, 2).reshape(-1, c), dim=-1)
        dist = 1.0 - max_similarity(queries, mem).reshape(b, 1, h, w)
        layers.append(F.interpolate(dist, size=size, mode="bilinear", align_corners=False))
    return torch.stack(layers).mean(0)[:, 0]


def image_scores(maps: Any) -> np.ndarray:
    """Image score = the map's max, per image."""
    return maps.flatten(1).amax(dim=1).numpy()


def references(normals: list[Any], shots: int | str) -> list[Any]:
    """The first ``shots`` train normals in sorted order (reference_start 0), or all of them."""
    chosen = list(normals) if shots == "all" else list(normals)[: int(shots)]
    if not chosen or (shots != "all" and len(chosen) < int(shots)):
        raise ValueError(f"{shots}-shot needs {shots} normal train images, the category has {len(normals)}")
    return chosen


def parse_shots(text: str) -> list[int | str]:
    """``1,all`` -> [1, "all"]; every K must be >= 1 (0 has no memory)."""
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "all":
            out.append("all")
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"shots: {part!r} is neither 'all' nor an integer >= 1")
    return out


def aurocs(labels: list[int], scores: np.ndarray, maps: list[np.ndarray], gts: list[np.ndarray | None]):
    """Image-AUROC and Pixel-AUROC (sklearn); None where one class is missing. Pixel-AUROC uses
    the images with ground truth (normals, and anomalous ones with a mask), as evaluate does."""
    from sklearn.metrics import roc_auc_score

    image = float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None
    used = [(m, g) for m, g in zip(maps, gts, strict=True) if g is not None]
    pixel = None
    if used:
        truth = np.concatenate([g.ravel() for _, g in used])
        if truth.any() and not truth.all():
            pixel = float(roc_auc_score(truth, np.concatenate([m.ravel() for m, _ in used])))
    return image, pixel


def mean_of(per_category: dict[str, dict[str, float | None]], key: str) -> float | None:
    values = [m[key] for m in per_category.values() if m.get(key) is not None]
    return float(np.mean(values)) if values else None


def beats(model_mean: float | None, baseline_mean: float | None) -> bool | None:
    """Model mean Image-AUROC >= the baseline's (None when either is undefined)."""
    if model_mean is None or baseline_mean is None:
        return None
    return bool(model_mean >= baseline_mean)


# --- the run --------------------------------------------------------------------------------
def encode_layers(predictor: Any, paths: list[Any]) -> list[Any]:
    """The bank layers' patch maps of the images, encoded in batches."""
    import torch

    from evaluate.data import load_image

    layers, parts = predictor.config.memory_bank.layers, []
    for i in range(0, len(paths), BATCH):
        images = predictor.to_tensor([load_image(p, predictor.image_size) for p in paths[i : i + BATCH]])
        parts.append(select_layers(predictor.model.encode(images).patch_maps, layers))
    return [torch.cat(layer) for layer in zip(*parts, strict=True)]


def baseline_category(predictor: Any, normals: list[Any], tests: list[Any], shots: int | str) -> dict:
    """The baseline's figures for one category at one shot setting."""
    from evaluate.config import EvaluateConfig
    from evaluate.data import load_ground_truth

    size = predictor.image_size
    threshold = EvaluateConfig().mask_threshold  # GT as evaluate cuts it (resize, > 0.1)
    memory = memory_from_maps(encode_layers(predictor, [r.path for r in references(normals, shots)]))
    maps, scores = [], []
    for i in range(0, len(tests), BATCH):
        batch = tests[i : i + BATCH]
        m = distance_maps(encode_layers(predictor, [r.path for r in batch]), memory, (size, size))
        maps += list(m.numpy())
        scores.append(image_scores(m))
    gts = [
        load_ground_truth(r.mask_path, size, threshold) if (r.label == 0 or r.mask_path) else None
        for r in tests
    ]
    image, pixel = aurocs([r.label for r in tests], np.concatenate(scores), maps, gts)
    return {"image_auroc": image, "pixel_auroc": pixel, "memory_patches": [int(m.shape[0]) for m in memory]}


def model_figures(model_dir: Path, data: Path, categories: list[str], shots: int | str, threads: int) -> dict:
    """``run_evaluation`` without answers, into a temporary folder."""
    from evaluate.config import EvaluateConfig
    from evaluate.job import run_evaluation

    cfg = EvaluateConfig(write_maps=False, mlflow_overlays=0, threads_per_worker=threads, batch_size=4)
    with tempfile.TemporaryDirectory(prefix="baseline-eval-") as tmp:
        return run_evaluation(
            model_dir, data, tmp, shots=shots, use_llm=False, categories=categories, config=cfg
        )


def compare(predictor: Any, args: argparse.Namespace, categories: list[str], shots: int | str) -> dict:
    """Baseline and model side by side for one shot setting."""
    from synth.datasets import read_dataset

    train = read_dataset(args.data, "mvtec", split="train", categories=categories)
    test = read_dataset(args.data, "mvtec", split="test", categories=categories)
    base = {}
    for c in categories:
        normals = [r for r in train if r.category == c and r.label == 0]
        base[c] = baseline_category(predictor, normals, [r for r in test if r.category == c], shots)
    result = model_figures(args.model, args.data, categories, shots, args.threads)
    keys = ("image_auroc", "pixel_auroc")
    per_category = {
        c: {"baseline": base[c], "model": {k: result["per_category"][c][k] for k in keys}} for c in categories
    }
    out: dict[str, Any] = {
        "per_category": per_category,
        "mean": {
            "baseline": {k: mean_of(base, k) for k in keys},
            "model": {k: result["mean"][k] for k in keys},
        },
    }
    if result.get("decoder_only"):
        out["mean"]["decoder_only"] = {k: result["decoder_only"]["mean"][k] for k in keys}
    return out


def main() -> None:
    parser = parser_with_model_and_data(__doc__, 2, "the driver's and the evaluation actor's")
    parser.add_argument(
        "--shots", type=parse_shots, default=parse_shots("1,all"), help="e.g. 1,all or 1,4,all"
    )
    parser.add_argument("--categories", default="", help="comma-separated; default: all of --data")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    start(args.threads)
    from synth.datasets import read_dataset
    from train.model.predictor import Predictor

    started = time.perf_counter()
    predictor = Predictor.from_checkpoint(args.model, device="cpu")
    cfg = predictor.config
    wanted = [c for c in args.categories.split(",") if c]
    categories = sorted(
        {r.category for r in read_dataset(args.data, "mvtec", split="test", categories=wanted)}
    )
    settings = {str(s): compare(predictor, args, categories, s) for s in args.shots}
    verdict = {
        k: beats(v["mean"]["model"]["image_auroc"], v["mean"]["baseline"]["image_auroc"])
        for k, v in settings.items()
    }
    print(
        json.dumps(
            {
                "model": str(args.model),
                "data": str(args.data),
                "encoder": cfg.encoder.name,
                "image_size": cfg.image_size,
                "bank_layers": cfg.memory_bank.layers,
                "baseline": "1 - max cosine similarity to every normal patch; bank layers averaged; max",
                "settings": settings,
                "model_beats_baseline": verdict,
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
