"""`python -m pipeline serve` under mixed and hostile traffic, optionally losing its replica. One JSON object.

    python benchmarks/serve_load.py [--model runs/demo/train] [--seconds 60] [--clients 8]
        [--kill-replica-at SECONDS]

Starts the service as a user does (the CLI, one replica, a token file, 127.0.0.1), then 8 clients
send for 60 s (after 15 s of the same load that is not counted: allocator and caches fill) a mix of
requests, each kind in turn: map only, map + answer, oversized (over
--max-upload-mb), corrupt image bytes, hostile history (JSON that is not a list of turns), and no
token. Prints per kind the count, status codes and p50/p99 latency; requests/s; the 5xx count;
whether every hostile request got a 4xx; the replica's and the HTTP proxy's resident memory after
warm-up and at the end; and requests that hung (no answer within --timeout). With
--kill-replica-at, the replica process is killed (SIGKILL) that many seconds in: Ray Serve must
start another, requests in flight may fail with 503 at most, and the run goes on; the time until
the next map-only 200 is reported. The figures of one 2-core machine are noisy: the load average is
printed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for project imports

from benchmarks.serve_latency import free_port, sample_images  # noqa: E402

DEMO_MODEL = ROOT / "runs" / "demo" / "train"
KINDS = ("map", "answer", "oversized", "corrupt", "hostile_history", "no_token")
HOSTILE = ("oversized", "corrupt", "hostile_history", "no_token")
MAX_UPLOAD_MB = 2.0
TOKEN = "load-test-token-0123456789abcdef"


def request_for(kind: str, i: int, category: str, images: list[bytes]) -> tuple[dict, dict, dict]:
    """(files, form fields, headers) of one request of ``kind``."""
    image = images[i % len(images)]
    fields = {"category": category, "map": "none", "generate": "false"}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if kind == "answer":
        fields["generate"] = "true"
    elif kind == "oversized":
        image = b"\0" * int((MAX_UPLOAD_MB + 1) * 2**20)
    elif kind == "corrupt":
        image = b"\x89PNG\r\n\x1a\n" + os.urandom(2048)
    elif kind == "hostile_history":
        fields["history"] = ["5", "null", '{"from": "human"}', "[1, 2]"][i % 4]
    elif kind == "no_token":
        headers = {}
    return {"image": ("part.png", image)}, fields, headers


def ray_process(service_pid: int, marker: str):
    """The process under the service whose command line holds ``marker`` (a Ray actor's name)."""
    import psutil

    for child in psutil.Process(service_pid).children(recursive=True):
        try:
            if marker in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def rss_mib(process) -> float | None:
    try:
        return round(process.memory_info().rss / 2**20, 1)
    except Exception:
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="seconds of the same load first, not counted (caches fill)"
    )
    parser.add_argument("--kill-replica-at", type=float, default=None, metavar="SECONDS")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="a request without an answer by then hung"
    )
    args = parser.parse_args(argv)
    if not (args.model / "model.safetensors").is_file():
        raise SystemExit(f"no checkpoint in {args.model}: run `make demo` first or pass --model")
    import requests

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    category, images = sample_images(work / "data")
    (work / "token").write_text(TOKEN + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = (work / "serve.log").open("w")
    service = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--model", str(args.model), "--port", str(port),
         "--device", "cpu", "--token-file", str(work / "token"), "--max-upload-mb", str(MAX_UPLOAD_MB)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the service did not start:\n" + (work / "serve.log").read_text()[-3000:])
            try:
                if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(1)
        for kind in ("map", "answer"):  # warm-up: the first answer loads the LLM's caches
            files, fields, headers = request_for(kind, 0, category, images)
            requests.post(f"{url}/v1/inspect", files=files, data=fields, headers=headers, timeout=600)
        replica = ray_process(service.pid, "ServeReplica")
        proxy = ray_process(service.pid, "ProxyActor")
        memory: dict[str, float | None] = {}

        results: dict[str, list[tuple[int, float]]] = defaultdict(list)
        hung: list[str] = []
        killed: dict[str, float | None] = {}
        started = time.monotonic() + args.warmup  # the same load before it is not counted
        stop = started + args.seconds
        lock = threading.Lock()
        counter = iter(range(10**9))

        def client() -> None:
            while time.monotonic() < stop:
                with lock:
                    i = next(counter)
                kind = KINDS[i % len(KINDS)]
                files, fields, headers = request_for(kind, i, category, images)
                t0 = time.monotonic()
                try:
                    code = requests.post(
                        f"{url}/v1/inspect", files=files, data=fields, headers=headers, timeout=args.timeout
                    ).status_code
                except requests.Timeout:
                    code = -1
                    hung.append(kind)
                except requests.ConnectionError:
                    code = 0  # the connection was dropped
                t1 = time.monotonic()
                if t0 < started:
                    continue
                with lock:
                    results[kind].append((code, t1 - t0))
                    if (
                        killed.get("at") is not None
                        and killed.get("recovered") is None
                        and kind == "map"
                        and code == 200
                        and t0 > killed["at"]
                    ):
                        killed["recovered"] = round(t1 - killed["at"], 2)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.warmup)
        memory.update({"replica_start_mib": rss_mib(replica), "proxy_start_mib": rss_mib(proxy)})
        if args.kill_replica_at is not None:
            time.sleep(args.kill_replica_at)
            victim = ray_process(service.pid, "ServeReplica")
            if victim is not None:
                victim.send_signal(signal.SIGKILL)
                killed.update({"at": time.monotonic(), "pid": victim.pid, "recovered": None})
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        replica_end = ray_process(service.pid, "ServeReplica")
        memory.update({"replica_end_mib": rss_mib(replica_end), "proxy_end_mib": rss_mib(proxy)})
    finally:
        os.killpg(service.pid, signal.SIGINT)
        try:
            service.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
        log.close()

    kinds = {}
    for kind in KINDS:
        rows = results.get(kind, [])
        latencies = sorted(t for _, t in rows)
        kinds[kind] = {
            "count": len(rows),
            "codes": dict(sorted(Counter(str(c) for c, _ in rows).items())),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)
            if latencies
            else None,
        }
    all_codes = [c for rows in results.values() for c, _ in rows]
    five_xx = sum(1 for c in all_codes if c >= 500)
    hostile_4xx = all(400 <= c < 500 for kind in HOSTILE for c, _ in results.get(kind, []))
    growth = None
    if memory["replica_start_mib"] and memory["replica_end_mib"] and args.kill_replica_at is None:
        growth = round(memory["replica_end_mib"] / memory["replica_start_mib"] - 1.0, 4)
    report = {
        "model": str(args.model),
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "requests": len(all_codes),
        "requests_per_s": round(len(all_codes) / elapsed, 2),
        "kinds": kinds,
        "five_xx": five_xx,
        "connection_dropped": sum(1 for c in all_codes if c == 0),
        "hung": len(hung),
        "hostile_all_4xx": hostile_4xx,
        "memory": {**memory, "replica_growth": growth},
        "replica_killed": killed or None,
        "load_average": os.getloadavg(),
    }
    goals = {"no_5xx": five_xx == 0, "hostile_all_4xx": hostile_4xx, "none_hung": not hung}
    if args.kill_replica_at is None:
        goals["replica_growth_le_10pct"] = growth is not None and growth <= 0.10
    else:
        non_503 = sum(1 for c in all_codes if c >= 500 and c != 503)
        goals = {"none_hung": not hung, "only_503_on_kill": non_503 == 0,
                 "recovered": killed.get("recovered") is not None}  # fmt: skip
    report["goals"] = goals
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
