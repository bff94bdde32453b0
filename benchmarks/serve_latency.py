"""Latency and throughput of `python -m pipeline serve` over HTTP. Prints one JSON object.

    python benchmarks/serve_latency.py [--model runs/demo/train] [--requests 16] [--device cpu]

Starts a local Ray and the Serve application exactly as the command does (one replica), then
sends POST /v1/inspect requests of the sample images from 1 and from 4 concurrent clients, for the
map only (generate=false) and for the map and the answer, each after a warm-up. Per setting:
the median and 95th-percentile latency of one request and the requests per second; `served` says
how many model batches the replica ran (batching at work with 4 clients). The model defaults to
the demo run's checkpoint (runs/demo/train, written by `make demo`). On a shared machine the
figures are noisy; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "runs" / "demo" / "train"
MODES = {"map": "false", "map+answer": "true"}
CLIENTS = (1, 4)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sample_images(folder: Path) -> tuple[str, list[bytes]]:
    """A category and its test images (good and defective) from the sample dataset."""
    from synth.demo_dataset import write_sample_dataset

    root = write_sample_dataset(folder, seed=0, size=256, n_train=2, n_test_good=4, n_per_defect=1)
    category = sorted(p.name for p in root.iterdir() if p.is_dir())[0]
    return category, [p.read_bytes() for p in sorted((root / category / "test").rglob("*.png"))]


def measure(url: str, category: str, images: list[bytes], generate: str, clients: int, n: int) -> dict:
    import requests

    def one(i: int) -> float:
        start = time.perf_counter()
        response = requests.post(
            url,
            files={"image": ("part.png", images[i % len(images)])},
            data={"category": category, "generate": generate, "map": "small"},
            timeout=600,
        )
        response.raise_for_status()
        return time.perf_counter() - start

    for i in range(2):  # warm-up: first-call costs stay out of the figures
        one(i)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = sorted(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {
        "clients": clients,
        "requests": n,
        "median_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "throughput_rps": round(n / wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(DEMO_MODEL), help="checkpoint folder or models:/ URI")
    parser.add_argument("--requests", type=int, default=16, help="timed requests per setting")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    args = parser.parse_args()
    if args.model == str(DEMO_MODEL) and not (DEMO_MODEL / "model.safetensors").is_file():
        parser.error(f"no demo model at {DEMO_MODEL}: run `make demo` first, or pass --model CHECKPOINT")

    from pipeline.core.runtime import configure_environment, init_ray

    configure_environment()
    import requests
    from ray import serve

    from pipeline.serve.app import APP_NAME, build_app
    from pipeline.serve.options import ServeSettings, resolve_options

    init_ray()
    settings = ServeSettings(
        model=args.model,
        device=args.device,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
    )
    options = resolve_options(settings)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(options), name=APP_NAME, route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as tmp:
            category, images = sample_images(Path(tmp))
        results = []
        for mode, generate in MODES.items():
            for clients in CLIENTS:
                row = measure(f"{base}/v1/inspect", category, images, generate, clients, args.requests)
                results.append({"mode": mode, **row})
        served = requests.get(f"{base}/healthz", timeout=60).json()["served"]
    finally:
        serve.shutdown()
    report = {
        "model": args.model,
        "device": options.device,
        "max_batch_size": args.max_batch_size,
        "batch_wait_ms": args.batch_wait_ms,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "served": served,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
