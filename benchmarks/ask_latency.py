"""Wall time of `python -m pipeline ask`, start-up and model load included. Prints one JSON object.

    python benchmarks/ask_latency.py [--model runs/demo/train] [--image PATH] [--warm 3] [--no-references]

Runs the command as a user does (a fresh process per call, one question, the overlay written, and,
as `ask` does for an image in an MVTec-style tree, a memory bank of its category's train/good images;
`--no-references`: the decoder's map alone):
a first, cold-ish call (a fresh process; the OS file cache and ~/.cache/anomalygpt as they are),
then ``--warm`` more calls, whose median is the figure to compare. Each call's CPU time (user +
system, all its threads) is given beside its wall time: on a busy machine the wall time mostly
measures the other work, the CPU time much less. The model defaults to the demo run's checkpoint
(runs/demo/train, written by `make demo`), the image to the demo data's first test image. The load
average before and after is printed; measure on an idle machine for figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "runs" / "demo" / "train"
DEMO_DATA = ROOT / "runs" / "demo" / "data"
QUESTION = "Is there any anomaly in the image?"


def default_image() -> Path | None:
    """The demo data's first test image (sorted), if the demo has run."""
    found = sorted(DEMO_DATA.glob("*/test/*/*.png"))
    return found[0] if found else None


def timed_ask(model: str, image: str, device: str, overlay: Path, extra: list[str]) -> dict:
    """One `ask` in a fresh process: wall and CPU seconds; a failure stops the benchmark."""
    command = [sys.executable, "-m", "pipeline", "ask", "--model", model, "--image", image]
    command += ["--question", QUESTION, "--device", device, "--overlay", str(overlay), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"ask failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "stdout": proc.stdout}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(DEMO_MODEL), help="checkpoint folder or models:/ URI")
    parser.add_argument("--image", help="the image to ask about (default: the demo data's first test image)")
    parser.add_argument("--warm", type=int, default=3, help="calls after the first (their median counts)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--no-references", action="store_true", help="ask with the decoder's map alone (no memory bank)"
    )
    args = parser.parse_args()
    if args.model == str(DEMO_MODEL) and not (DEMO_MODEL / "model.safetensors").is_file():
        parser.error(f"no demo model at {DEMO_MODEL}: run `make demo` first, or pass --model CHECKPOINT")
    image = args.image or default_image()
    if image is None:
        parser.error(f"no images under {DEMO_DATA}: run `make demo` first, or pass --image PATH")
    if args.warm < 1:
        parser.error("--warm must be at least 1")

    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp) / "overlay.png"
        extra = ["--no-references"] if args.no_references else []
        cold = timed_ask(args.model, str(image), args.device, overlay, extra)
        warm = [timed_ask(args.model, str(image), args.device, overlay, extra) for _ in range(args.warm)]
    answer = cold.pop("stdout").splitlines()
    for call in warm:
        if call.pop("stdout").splitlines() != answer:
            sys.exit("ask printed different answers for the same image: the figures would not compare")
    report = {
        "model": args.model,
        "image": str(image),
        "device": args.device,
        "memory_bank": not args.no_references,
        "cpus": os.cpu_count(),
        "cold": cold,
        "warm": warm,
        "warm_median_wall_s": round(statistics.median(c["wall_s"] for c in warm), 2),
        "warm_median_cpu_s": round(statistics.median(c["cpu_s"] for c in warm), 2),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "answer": answer,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
