"""Synth-stage throughput at 224x224: per-step costs, samples/s per worker, 1 -> 2 worker speed-up.

Prints one JSON object. Data: the sample dataset (scikit-image crops) with more train images than
the demo, written to a temporary folder. Ray is started once and excluded from the timings.

    .venv/bin/python benchmarks/synth_throughput.py [--train 48] [--per-image 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _ms(fn, items, repeats: int = 3) -> float:
    """Median over repeats of the mean ms per item."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        runs.append((time.perf_counter() - start) * 1000 / len(items))
    return round(statistics.median(runs), 3)


def step_costs(root: Path, size: int) -> dict[str, float]:
    import cv2
    import numpy as np

    from synth import nsa
    from synth.config import SynthConfig
    from synth.datasets import load_rgb, read_dataset
    from synth.shard_format import write_tar
    from synth.shard_samples import SampleMaker, _Augmenter, sources_from_records

    cv2.setNumThreads(1)
    cfg = SynthConfig(size=size)
    records = read_dataset(root, "mvtec")[:32]
    images = [cv2.resize(load_rgb(r.path), (size, size), interpolation=cv2.INTER_CUBIC) for r in records]
    rng = np.random.default_rng(0)
    augment = _Augmenter()
    p = size // 6
    patches = [img[10 : 10 + p, 20 : 20 + p].copy() for img in images]
    clone_mask = np.zeros((p, p), np.uint8)
    clone_mask[1:-1, 1:-1] = 255
    blended = [
        cv2.seamlessClone(pt, img, clone_mask, (size // 2, size // 2), cv2.NORMAL_CLONE)
        for pt, img in zip(patches, images[::-1], strict=True)
    ]
    box = (size // 2 - p // 2, size // 2 - p // 2, p, p)
    spec = nsa.category_spec("brick")
    level = [cv2.IMWRITE_PNG_COMPRESSION, cfg.png_compression]
    mask = np.zeros((size, size), np.uint8)
    mask[50:90, 60:100] = 255
    maker = SampleMaker(sources_from_records(records), cfg, 0)
    encoded = [maker.make(2 * i + 1, i, 1, 2 * i) for i in range(len(records))]
    members = [(f"{s.key}.{ext}", data) for s in encoded for ext, data in s.files]
    with tempfile.TemporaryDirectory() as tmp:
        write_ms = _ms(lambda i: write_tar(Path(tmp) / f"b{i}.tar", members), range(3)) / len(encoded)
    return {
        "decode": _ms(
            lambda r: cv2.resize(load_rgb(r.path), (size, size), interpolation=cv2.INTER_CUBIC), records
        ),
        "transform": _ms(lambda pt: augment(pt, None, rng), patches),
        "blend": _ms(
            lambda i: cv2.seamlessClone(
                patches[i], images[-1 - i], clone_mask, (size // 2, size // 2), cv2.NORMAL_CLONE
            ),
            range(len(images)),
        ),
        "mask": _ms(
            lambda i: nsa._changed_region(images[-1 - i], blended[i], box, spec, cfg), range(len(images))
        ),
        "encode": _ms(
            lambda img: (cv2.imencode(".png", img, level), cv2.imencode(".png", mask, level)), images
        ),
        "write": round(write_ms, 3),
        "synthesize_total": _ms(
            lambda i: nsa.synthesize(images[i], images[-1 - i], spec, cfg, np.random.default_rng(i), augment),
            range(len(images)),
        ),
    }


def end_to_end(root: Path, size: int, per_image: int, workers: int, repeats: int) -> dict:
    from synth.config import SynthConfig
    from synth.job import run_synth

    rates, shas = [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            cfg = SynthConfig(size=size, per_image=per_image, samples_per_shard=24, workers=workers)
            result = run_synth(cfg, root, out, seed=0, progress=False)
            rates.append(result["run"]["samples_per_s"])
            shas = [s["sha256"] for s in result["shards"]]
            samples = result["samples"]
    return {"samples": samples, "samples_per_s": round(statistics.median(rates), 1), "shard_sha256": shas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=48, help="train images per category (4 categories)")
    parser.add_argument("--per-image", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from pipeline.core.runtime import configure_environment, init_ray

    configure_environment()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from synth.demo_dataset import write_sample_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = write_sample_dataset(
            Path(tmp) / "data", seed=0, size=256, n_train=args.train, n_test_good=0, n_per_defect=0
        )
        steps = step_costs(root, args.size)
        init_ray(num_cpus=2)
        end_to_end(root, args.size, args.per_image, 2, 1)  # warm-up: worker processes, imports
        one = end_to_end(root, args.size, args.per_image, 1, args.repeats)
        two = end_to_end(root, args.size, args.per_image, 2, args.repeats)
    result = {
        "benchmark": "synth",
        "size": args.size,
        "samples": one["samples"],
        "cpus": os.cpu_count(),
        "step_ms": steps,
        "samples_per_s_1_worker": one["samples_per_s"],
        "samples_per_s_2_workers": two["samples_per_s"],
        "samples_per_s_per_worker_2_workers": round(two["samples_per_s"] / 2, 1),
        "speedup_1_to_2": round(two["samples_per_s"] / one["samples_per_s"], 2),
        "identical_shards_1_vs_2_workers": one["shard_sha256"] == two["shard_sha256"],
        "note": "end to end after a warm-up run, Ray start excluded; includes scheduling, decode, "
        "synthesis, encode, tar write",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
