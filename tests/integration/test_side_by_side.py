"""A service and a pipeline run on one machine at once, beside the test session's own Ray: each CLI
starts its own local Ray (RAY_ADDRESS unset), none disturbs another, and each stops only its own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def _healthy(url: str) -> bool:
    import requests

    try:
        return requests.get(f"{url}/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_a_service_and_a_run_side_by_side_both_finish(
    ray_session, sample_data_root, tiny_checkpoint, tmp_path
):
    import requests

    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve_log = (tmp_path / "serve.log").open("w")
    service = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--model", str(tiny_checkpoint), "--port", str(port),
         "--device", "cpu"],
        cwd=ROOT, env=env, stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not _healthy(url):
            assert service.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the service did not come up"
            time.sleep(0.5)

        data = tmp_path / "data"
        shutil.copytree(sample_data_root, data)
        run = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", "--config", "configs/tiny.yaml", "--data", str(data),
             "--out", str(tmp_path / "run"), "--set", "train.max_steps=2", "--set", "synth.categories=[coin]",
             "--set", "evaluate.categories=[coin]", "--workers", "1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        (tmp_path / "run.log").write_text(run.stdout + run.stderr)
        assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
        assert "Found multiple active Ray instances" not in run.stdout + run.stderr, tmp_path / "run.log"
        image = next((data / "coin" / "test" / "good").glob("*.png"))
        fields = {"category": "coin", "generate": "false"}
        answer = requests.post(
            f"{url}/v1/inspect", files={"image": image.read_bytes()}, data=fields, timeout=120
        )
        assert answer.status_code == 200, answer.text  # the service lived through the run's own Ray
        _kill_the_replica_under_load(url, service.pid, image.read_bytes())
    finally:
        os.killpg(service.pid, signal.SIGINT)  # as Ctrl-C: the service removes its app, stops its Ray
        code = service.wait(120)
        serve_log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]

    import ray

    assert ray.is_initialized() and ray.get(ray.put("still here")) == "still here"  # ours untouched


def _kill_the_replica_under_load(url: str, service_pid: int, image: bytes) -> None:
    """Four clients keep asking while the replica is killed: every answer is a 200 or a JSON 503
    with Retry-After (none a 500, none hangs), and the new replica answers again."""
    import threading

    import psutil
    import requests

    replica = next(
        p
        for p in psutil.Process(service_pid).children(recursive=True)
        if "ServeReplica" in " ".join(p.cmdline())
    )
    replies: list[requests.Response] = []
    stop = time.monotonic() + 20

    def client() -> None:
        while time.monotonic() < stop:
            fields = {"category": "coin", "generate": "true"}
            replies.append(
                requests.post(f"{url}/v1/inspect", files={"image": image}, data=fields, timeout=120)
            )

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    replica.kill()
    killed_at = time.monotonic()
    for thread in threads:
        thread.join()
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503}, [
        (r.status_code, r.headers, r.text[:300]) for r in replies if r.status_code != 200
    ]
    for refused in (r for r in replies if r.status_code == 503):
        assert refused.json()["error"]["code"] == "unavailable" and refused.headers["Retry-After"]
    deadline = killed_at + 120
    while True:  # Serve starts another replica
        again = requests.post(
            f"{url}/v1/inspect", files={"image": image}, data={"category": "coin"}, timeout=120
        )
        if again.status_code == 200:
            break
        assert again.status_code == 503 and time.monotonic() < deadline, again.text
        time.sleep(1)
