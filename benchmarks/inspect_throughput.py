"""Images per second of `python -m pipeline inspect`, 1 and 2 workers, map only and with answers,
against the bare Predictor loop on the same images. Prints one JSON object.

    python benchmarks/inspect_throughput.py [--model runs/demo/train] [--data runs/demo/data] [--images 96]

The images are one product line's night: --images new test images of one category (half normal,
half defective) from the sample-data generator with its own seed, inspected with the memory bank of
that category's normal images in --data (at most 16, as `inspect` takes them by default).

Each inspect run is the real command in a fresh process (its own local Ray, Ray Data, the actor
pool). Its rate is read from the summary.json it writes: ``images_per_s`` over the whole run
(actor start-up and model loads included) and ``steady_images_per_s`` from the first scored batch
to the last (what a long night of images sees). The bare loop is one process with two torch
threads (the machine's cores), reading and scoring the same images in the same batches with the
same memory banks, timed the same two ways. ``rss_mib_per_worker`` is the largest resident memory
of one scoring actor while it ran. The scaling figure compares 2 workers with 1 worker of one
thread (on 2 cores, 1 worker by default already runs two threads). Defaults to the demo run
(`make demo` first).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


LINE_SEED = 7
"""Seed of the benchmark's images (the demo's data is seed 0)."""
RUNS = (
    ("inspect_1_worker", 1, None),  # the default: one actor with both cores' threads
    ("inspect_1_worker_1_thread", 1, 1),  # one core's worth: the base of the scaling figure
    ("inspect_2_workers", 2, None),  # one thread each
)
"""(name, --workers, --threads-per-worker) of the inspect runs of each setting."""


def line_images(folder: Path, category: str, count: int) -> list:
    """A night of one product line: ``count`` new test images of ``category`` (half normal, half
    with defects), made by the sample-data generator with a seed the demo does not use."""
    from pipeline.batch.sources import list_sources
    from synth.demo_dataset import write_sample_dataset

    root = write_sample_dataset(
        folder,
        seed=LINE_SEED,
        n_train=1,
        n_test_good=count // 2,
        n_per_defect=count // 8,
        categories=[category],
    )
    return list_sources(str(root))


def bare_loop(model: Path, data: Path, sources: list, batch_size: int, generate: bool) -> dict:
    """The Predictor alone: read, bank, predict in batches, per category; no Ray."""
    import torch

    from evaluate.data import load_image
    from pipeline.inference import default_question
    from pipeline.references import ReferenceFolders
    from train.model.predictor import Predictor

    torch.set_num_threads(2)
    predictor = Predictor.from_checkpoint(model, device="cpu")
    references = ReferenceFolders(data, max_count=16)
    size = predictor.image_size
    started, arrivals = time.perf_counter(), []
    by_category: dict[str, list[str]] = {}
    for source in sources:
        by_category.setdefault(source.category, []).append(source.path)
    for category, paths in by_category.items():
        bank = predictor.memory_bank(category, references.images(category, size))
        for i in range(0, len(paths), batch_size):
            images = [load_image(p, size) for p in paths[i : i + batch_size]]
            predictor.predict(
                images,
                [category] * len(images),
                memory_bank=bank,
                questions=default_question(category),
                generate=generate,
            )
            arrivals.append((time.perf_counter(), len(images)))
    took = time.perf_counter() - started
    steady = sum(n for _, n in arrivals[1:]) / (arrivals[-1][0] - arrivals[0][0])
    return {"images_per_s": round(len(sources) / took, 3), "steady_images_per_s": round(steady, 3)}


def inspect_run(
    model: Path,
    listing: Path,
    references: Path,
    out: Path,
    workers: int,
    batch_size: int,
    generate: bool,
    threads: int | None,
) -> dict:
    command = [
        sys.executable, "-m", "pipeline", "inspect", "--model", str(model), "--images", str(listing),
        "--out", str(out), "--workers", str(workers), "--batch-size", str(batch_size), "--overlays", "none",
        "--no-progress", "--store", str(out), "--references-dir", str(references),
    ] + ([] if generate else ["--no-llm"])  # fmt: skip
    if threads is not None:
        command += ["--threads-per-worker", str(threads)]
    peak: dict[int, int] = {}
    done = threading.Event()
    watcher = threading.Thread(target=_watch_actors, args=(peak, done), daemon=True)
    started = time.perf_counter()
    watcher.start()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    done.set()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"inspect failed: {proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())["this_run"]
    return {
        "images_per_s": summary["images_per_s"],
        "steady_images_per_s": summary["steady_images_per_s"],
        "command_wall_s": round(time.perf_counter() - started, 1),
        "rss_mib_per_worker": round(max(peak.values(), default=0) / 2**20, 1),
    }


def _watch_actors(peak: dict[int, int], done: threading.Event) -> None:
    """Largest RSS of each Ray Data scoring actor (its process title names the UDF)."""
    import psutil

    while not done.wait(0.5):
        for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if "BatchScorer" in cmdline and proc.info.get("memory_info") is not None:
                peak[proc.pid] = max(peak.get(proc.pid, 0), proc.info["memory_info"].rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "demo" / "train")
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "demo" / "data")
    parser.add_argument("--category", default="brick", help="the line's category (default brick)")
    parser.add_argument("--images", type=int, default=96, help="images scored per setting (default 96)")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = line_images(Path(tmp) / "line", args.category, args.images)
        result: dict = {
            "category": args.category,
            "images": len(sources),
            "references": str(args.data),
            "batch_size": args.batch_size,
            "load_average": round(os.getloadavg()[0], 2),
        }
        listing = Path(tmp) / "images.txt"
        listing.write_text("".join(s.path + "\n" for s in sources))
        for generate, label in ((False, "no_llm"), (True, "with_answers")):
            setting = {
                "bare_predictor_loop": bare_loop(args.model, args.data, sources, args.batch_size, generate)
            }
            for name, workers, threads in RUNS:
                out = Path(tmp) / f"{label}-{name}"
                setting[name] = inspect_run(
                    args.model, listing, args.data, out, workers, args.batch_size, generate, threads
                )
            one, two = setting["inspect_1_worker_1_thread"], setting["inspect_2_workers"]
            setting["speedup_1_to_2_workers"] = round(
                two["steady_images_per_s"] / one["steady_images_per_s"], 2
            )
            setting["inspect_2_workers_vs_bare_loop"] = round(
                two["steady_images_per_s"] / setting["bare_predictor_loop"]["steady_images_per_s"], 2
            )
            result[label] = setting
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
