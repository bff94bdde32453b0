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
    finally:
        os.killpg(service.pid, signal.SIGINT)  # as Ctrl-C: the service removes its app, stops its Ray
        code = service.wait(120)
        serve_log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]

    import ray

    assert ray.is_initialized() and ray.get(ray.put("still here")) == "still here"  # ours untouched
