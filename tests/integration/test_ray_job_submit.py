"""The cluster path on one machine: `ray start --head` on 127.0.0.1, `ray job submit` of `run` with
the tiny config, the job succeeds and the model is in the registry; the head is then stopped.

The head runs in its own process group and temp dir, and is stopped by signalling that group:
`ray stop` would stop every Ray instance on the machine, and a head in the default /tmp/ray leaves
/tmp/ray/ray_current_cluster behind, which a later bare `ray.init()` on the machine would follow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@pytest.mark.slow
@pytest.mark.integration
def test_ray_job_submit_runs_the_pipeline(sample_data_root, tmp_path):
    gcs, dashboard, agent, agent_grpc, metrics, runtime_env_agent, client = _free_ports(7)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    # The job's `python` is the head's PATH python: start the head with the venv first on PATH.
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="disabled")
    head_log = (tmp_path / "head.log").open("w")
    temp_dir = tempfile.mkdtemp(prefix="rayjs-", dir="/tmp")  # short: Ray's socket paths live in it
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env_agent}",
         f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}", "--num-cpus=2",
         "--disable-usage-stats"],
        env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    out = tmp_path / "run"
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_http(f"{address}/api/version", head, timeout=120)
        runtime_env = {"excludes": [".git/", "runs/", "tests/"]}
        submit = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
             "--runtime-env-json", json.dumps(runtime_env), "--",
             "python", "-m", "pipeline", "run", "--config", "configs/tiny.yaml",
             "--data", str(sample_data_root), "--out", str(out),
             "--set", "synth.categories=[grass]", "--set", "evaluate.categories=[grass]",
             "--set", "train.max_steps=2", "--set", "evaluate.use_llm=false"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
        assert "succeeded" in submit.stdout
        assert "[4/4] register: done" in submit.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)

    assert (
        not Path("/tmp/ray/ray_current_cluster").exists()
        or f":{gcs}" not in Path("/tmp/ray/ray_current_cluster").read_text()
    )
    summary = json.loads((out / "run.json").read_text())
    assert summary["ray_address"], "the job's stages did not run on the submitted-to cluster"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("anomalygpt", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["checkpoint_sha256"]
