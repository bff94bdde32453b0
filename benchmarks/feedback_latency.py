"""Time from a person's "this is normal" to the service calling the image normal. Prints one JSON object.

    python benchmarks/feedback_latency.py [--model runs/demo/train] [--data runs/demo/data]

Serves the model as `pipeline serve --references-dir DATA --feedback-dir TMP` does (one replica,
in-process Ray Serve), inspects every normal test image of DATA (map only) and takes the ones it
calls anomalous: the false alarms. For each: POST /v1/feedback with the sha256 the inspection
returned, then POST /v1/inspect again; the figure is the wall time of the two requests, which
includes rebuilding the category's memory bank with the confirmed image in it. Defaults to the
demo run (`make demo` first). The feedback folder is a temporary one: DATA is not changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def inspect(base: str, image: Path, category: str) -> dict:
    import requests

    files = [("image", (image.name, image.read_bytes()))]
    data = {"category": category, "map": "none", "generate": "false"}
    reply = requests.post(f"{base}/v1/inspect", files=files, data=data, timeout=600)
    reply.raise_for_status()
    return reply.json()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / "runs" / "demo" / "train"))
    parser.add_argument("--data", type=Path, default=ROOT / "runs" / "demo" / "data")
    args = parser.parse_args()

    from pipeline.core.runtime import configure_environment, init_ray

    configure_environment()
    import requests
    from ray import serve

    from pipeline.serve.app import APP_NAME, build_app
    from pipeline.serve.options import ServeSettings, resolve_options

    init_ray()
    normals = sorted(args.data.glob("*/test/good/*.png"))
    with tempfile.TemporaryDirectory() as feedback:
        settings = ServeSettings(
            model=args.model,
            device="cpu",
            references_dir=str(args.data),
            feedback_dir=feedback,
            batch_wait_ms=0,
        )
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(build_app(resolve_options(settings)), name=APP_NAME, route_prefix="/")
            base = f"http://127.0.0.1:{port}"
            calls = [(p, p.parents[2].name, inspect(base, p, p.parents[2].name)) for p in normals]
            alarms = [(p, c, r) for p, c, r in calls if r["anomalous"]]
            cases = []
            for image, category, before in alarms:
                started = time.perf_counter()
                fields = {"sha256": before["sha256"], "category": category, "label": "normal"}
                requests.post(f"{base}/v1/feedback", data=fields, timeout=600).raise_for_status()
                after = inspect(base, image, category)
                cases.append(
                    {
                        "image": str(image.relative_to(args.data)),
                        "score_before": round(before["score"], 4),
                        "score_after": round(after["score"], 4),
                        "normal_after": after["anomalous"] is False,
                        "seconds_to_changed_verdict": round(time.perf_counter() - started, 2),
                    }
                )
        finally:
            serve.shutdown()
    seconds = [c["seconds_to_changed_verdict"] for c in cases]
    print(
        json.dumps(
            {
                "model": args.model,
                "normal_test_images": len(normals),
                "false_alarms": len(alarms),
                "fixed_by_feedback": sum(c["normal_after"] for c in cases),
                "max_seconds_to_changed_verdict": max(seconds, default=None),
                "cases": cases,
                "load_average": round(os.getloadavg()[0], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
