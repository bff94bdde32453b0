"""Memory footprint and build time of the all-shot memory bank, and what it costs per query.

For N normal images (default 14, 56, 224: one category's train normals, repeated with flips,
90-degree rotations and crops to reach N, deterministically) and two patch budgets (the model's
``memory_bank.max_patches`` and a smaller one), it builds the bank as evaluation does
(``model.build_memory_bank``: encode, coreset, calibration) and reports build time, patches per
layer, bytes held, the process's peak resident memory while it builds, and the time per query
image of ``predict(generate=False)`` with that bank. One JSON object.

    python benchmarks/memory_bank.py [--model runs/demo/train] [--sizes 14,56,224] [--budgets default,2000]

Without a trained model at --model, an untrained one of --preset is built (the bank's cost does
not depend on the trained weights) and the output says so. Without --data, the sample dataset is
written to a temporary folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for `benchmarks.*` imports

from benchmarks.quality_cli import parser_with_model_and_data, start  # noqa: E402
from pipeline.core.memory import release_freed_memory  # noqa: E402

CROPS = (None, (0.125, 0.125), (0.0, 0.0), (0.0, 0.25), (0.25, 0.0), (0.25, 0.25))
"""Crop origins (fraction of the side) of a 0.75-side crop resized back; None: the whole image."""
CROP_SIDE = 0.75
QUERY_IMAGES = 4


# --- deterministic variants (pure functions) -------------------------------------------------
def variant(image: Any, index: int) -> Any:
    """Variant ``index`` of one (3, H, W) image: a crop (CROPS), then one of the 8 flips/rot90s.
    Index 0 is the image itself."""
    import torch
    import torch.nn.functional as F

    if not 0 <= index < 8 * len(CROPS):
        raise ValueError(f"variant index must be in [0, {8 * len(CROPS)}), got {index}")
    crop, k, flip = CROPS[index // 8], (index % 8) // 2, index % 2
    h, w = image.shape[-2:]
    if crop is not None:
        top, left = int(crop[0] * h), int(crop[1] * w)
        part = image[:, top : top + int(CROP_SIDE * h), left : left + int(CROP_SIDE * w)]
        image = F.interpolate(part[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    image = torch.rot90(image, k, dims=(1, 2))
    return torch.flip(image, dims=(2,)) if flip else image


def augmented(images: Any, count: int) -> Any:
    """``count`` images from the n given ones: all n as they are, then all n as variant 1, ...
    (so the first n are the originals and no image repeats until every variant is used)."""
    import torch

    n = images.shape[0]
    if count < 1 or count > 8 * len(CROPS) * n:
        raise ValueError(f"count must be in [1, {8 * len(CROPS) * n}] for {n} images, got {count}")
    return torch.stack([variant(images[i % n], i // n) for i in range(count)])


def parse_ints(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


# --- the run --------------------------------------------------------------------------------
def load_predictor(path: Path, preset: str) -> tuple[Any, str]:
    """The trained model at ``path``, else an untrained one of ``preset`` (with a message)."""
    import torch

    from train.model import build_model
    from train.model.predictor import Predictor

    if (path / "model.safetensors").is_file():
        return Predictor.from_checkpoint(path, device="cpu"), str(path)
    from pipeline.pipeline_config import load_pipeline_config

    print(
        f"memory_bank: no trained model at {path} (run `make demo` for one); using an untrained "
        f"{preset} model: the bank's size and timings do not depend on the trained weights",
        file=sys.stderr,
    )
    torch.manual_seed(0)
    cfg = load_pipeline_config(ROOT / "configs" / f"{preset}.yaml").model
    return Predictor(build_model(cfg), cfg, "cpu"), f"untrained {preset} preset"


def sample_paths(data: Path | None, category: str | None, tmp: Path) -> tuple[str, list[Path], list[Path]]:
    """The category's train normals and a few test images (the sample data when ``data`` is None)."""
    from synth.datasets import read_dataset
    from synth.demo_dataset import write_sample_dataset

    if data is None or not data.is_dir():
        data = write_sample_dataset(tmp / "data", n_test_good=QUERY_IMAGES, n_per_defect=1)
    train = read_dataset(data, "mvtec", split="train")
    category = category or sorted({r.category for r in train})[0]
    normals = [r.path for r in train if r.category == category and r.label == 0]
    tests = [r.path for r in read_dataset(data, "mvtec", split="test", categories=[category])]
    return category, normals, tests[:QUERY_IMAGES]


def build_with_budget(model: Any, refs: Any, category: str, budget: int) -> Any:
    """``model.build_memory_bank`` under patch budget ``budget`` (the model's config is restored)."""
    cfg = model.cfg
    model.cfg = dataclasses.replace(cfg, memory_bank=dataclasses.replace(cfg.memory_bank, max_patches=budget))
    try:
        return model.build_memory_bank(refs, category)
    finally:
        model.cfg = cfg


def query_ms(model: Any, queries: Any, category: str, bank: Any, repeats: int) -> float:
    """Median over repeats of ms per image of ``predict(generate=False)``, one image at a time."""
    model.predict(queries[:1], [category], memory_bank=bank, generate=False)  # warm-up
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for image in queries.split(1):
            model.predict(image, [category], memory_bank=bank, generate=False)
        runs.append((time.perf_counter() - started) * 1000 / queries.shape[0])
    return round(statistics.median(runs), 1)


class PeakRss:
    """The process's largest resident set while the block runs (sampled every 20 ms); ``tree``:
    the process's and all its children's together (Ray's workers). Memory freed before the block is
    handed back to the system first (``malloc_trim``), so the figure is the block's own and not the
    high-water mark of what ran before it."""

    def __init__(self, tree: bool = False) -> None:
        self.tree = tree

    def __enter__(self) -> PeakRss:
        import psutil

        release_freed_memory()
        self._process, self._stop = psutil.Process(), threading.Event()
        self.before = self.peak = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        import psutil

        total = self._process.memory_info().rss
        for child in self._process.children(recursive=True) if self.tree else ():
            with contextlib.suppress(psutil.Error):  # gone between listing and reading
                total += child.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def measure(model: Any, refs: Any, queries: Any, category: str, budget: int, repeats: int) -> dict:
    started = time.perf_counter()
    with PeakRss() as rss:
        bank = build_with_budget(model, refs, category, budget)
    build_s = time.perf_counter() - started
    return {
        "peak_rss_gib": round(rss.peak / 2**30, 2),
        "rss_growth_during_build_gib": round((rss.peak - rss.before) / 2**30, 2),
        "images": refs.shape[0],
        "max_patches": budget,
        "build_s": round(build_s, 2),
        "patches_per_layer": bank.n_patches,
        "bytes": bank.nbytes,
        "mib": round(bank.nbytes / 2**20, 2),
        "query_ms_per_image": query_ms(model, queries, category, bank, repeats),
    }


def main() -> None:
    parser = parser_with_model_and_data(
        __doc__,
        1,
        "1: on a busy 2-core machine, 2 threads make the coreset's many small steps up to 100x slower",
    )
    parser.add_argument("--preset", default="demo", choices=["demo", "tiny"], help="untrained fallback")
    parser.add_argument("--category", default=None, help="default: the first category of --data")
    parser.add_argument("--sizes", type=parse_ints, default=parse_ints("14,56,224"), help="normal images N")
    parser.add_argument("--budgets", default="default,2000", help="patch budgets; default = the model's")
    parser.add_argument("--repeats", type=int, default=2, help="query timing repeats")
    args = parser.parse_args()
    torch = start(args.threads)
    from evaluate.data import load_image

    predictor, source = load_predictor(args.model, args.preset)
    model, size = predictor.model, predictor.image_size
    default = int(model.cfg.memory_bank.max_patches)
    budgets = [default if b.strip() == "default" else int(b) for b in args.budgets.split(",") if b.strip()]
    with tempfile.TemporaryDirectory(prefix="bank-bench-") as tmp:
        category, normals, tests = sample_paths(args.data, args.category, Path(tmp))
        base = predictor.to_tensor([load_image(p, size) for p in normals])  # [0, 1], for the variants
        queries = predictor.to_tensor([load_image(p, size) for p in tests])
    measure(model, base[:2], queries[:1], category, 100, 1)  # warm-up: first calls are slow
    runs = []
    for n in args.sizes:
        for budget in budgets:
            # as the Predictor hands references to a bank build: uint8, converted a chunk at a time
            refs = augmented(base, n).mul(255.0).round().to(torch.uint8)
            runs.append(measure(model, refs, queries, category, budget, args.repeats))
            print(f"memory_bank: {n} images, budget {budget}: {runs[-1]['build_s']} s", file=sys.stderr)
    print(
        json.dumps(
            {
                "model": source,
                "encoder": model.cfg.encoder.name,
                "image_size": size,
                "bank_layers": model.cfg.memory_bank.layers,
                "category": category,
                "source_images": len(normals),
                "default_max_patches": default,
                "torch_threads": torch.get_num_threads(),
                "decoder_only_query_ms_per_image": query_ms(model, queries, category, None, args.repeats),
                "runs": runs,
                "load_average_1m": round(os.getloadavg()[0], 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
