"""The cluster path on one machine, and recovery: `ray start --head` on 127.0.0.1, `ray job submit`
of `run` (tiny config), the job is stopped during training, submitted again: it resumes (finished
stages skipped, training from its checkpoint) and registers exactly one model. Then, locally, a
third `run` skips every stage and `retrain` says it is up to date.

The head runs in its own process group and temp dir and is stopped by signalling that group:
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
FAST = [
    "--set", "synth.categories=[brick,coin]",
    "--set", "evaluate.categories=[brick,coin]",
    "--set", "train.max_steps=40",  # long enough that the stop lands during training
    "--set", "train.checkpoint_every=2",
    "--set", "evaluate.use_llm=false",
]  # fmt: skip


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


def _pipeline(verb: str, data: Path, out: Path, config: str = "configs/tiny.yaml") -> list[str]:
    return [
        "python",
        "-m",
        "pipeline",
        verb,
        "--config",
        config,
        "--data",
        str(data),
        "--out",
        str(out),
        *FAST,
    ]


@pytest.fixture()
def head(tmp_path):
    """A Ray head on 127.0.0.1 started from the venv (the job's `python` is the head's PATH python);
    yields (dashboard address, environment for the `ray` client)."""
    gcs, dashboard, agent, agent_grpc, metrics, runtime_env_agent, client = _free_ports(7)
    # Earlier tests in this process may have exported MLflow URIs (mlflow.set_*_uri does): drop them.
    dropped = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="disabled")
    temp_dir = tempfile.mkdtemp(prefix="rayjs-", dir="/tmp")  # short: Ray's socket paths live in it
    log = (tmp_path / "head.log").open("w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env_agent}",
         f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}", "--num-cpus=2",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_http(f"{address}/api/version", proc, timeout=120)
        yield address, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@pytest.mark.integration
def test_submitted_run_stopped_during_training_resumes_once(head, sample_data_root, tmp_path):
    address, env = head
    out = tmp_path / "run"
    submit = ["job", "submit", "--address", address, "--working-dir", str(ROOT),
              "--runtime-env-json", json.dumps({"excludes": [".git/", "runs/", "tests/"]})]  # fmt: skip

    first = _ray(
        env, *submit, "--submission-id", "tiny-1", "--no-wait", "--", *_pipeline("run", sample_data_root, out)
    )
    assert first.returncode == 0, first.stderr[-2000:]
    deadline = time.monotonic() + 300
    while not list((out / "train" / "ray").glob("*/checkpoint_*/train_state.json")):
        status = _ray(env, "job", "status", "--address", address, "tiny-1", timeout=60).stdout
        assert "FAILED" not in status and "SUCCEEDED" not in status, status
        assert time.monotonic() < deadline, "no training checkpoint within 300 s"
        time.sleep(1)
    stop = _ray(env, "job", "stop", "--address", address, "tiny-1", timeout=120)
    assert stop.returncode == 0, stop.stderr[-2000:]
    from mlflow import MlflowClient

    store = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert client.search_model_versions("name = 'anomalygpt'") == []  # the stopped run registered nothing

    second = _ray(env, *submit, "--submission-id", "tiny-2", "--", *_pipeline("run", sample_data_root, out))
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert "succeeded" in second.stdout
    assert "synth: skipped" in second.stdout and "train: resuming" in second.stdout
    assert "[4/4] register: done" in second.stdout

    summary = json.loads((out / "run.json").read_text())
    assert summary["ray_address"], "the stages did not run on the cluster the job was submitted to"
    train = json.loads((out / "train" / "train_summary.json").read_text())
    assert train["resumed_from_step"] > 0 and train["steps"] == 40
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert isinstance(metrics["mean"]["image_auroc"], float)
    assert sorted(p.name for p in (out / "evaluate" / "maps").iterdir()) == ["brick", "coin"]

    versions = client.search_model_versions("name = 'anomalygpt'")
    assert [str(v.version) for v in versions] == ["1"]
    v1 = versions[0]
    assert str(client.get_model_version_by_alias("anomalygpt", "champion").version) == "1"
    assert v1.tags["promotion_decision"] == "promoted"
    assert v1.tags["eval_image_auroc"] == f"{metrics['mean']['image_auroc']:.6f}"
    assert v1.tags["pipeline_run_id"] == summary["parent_run_id"]

    # One parent run (the stopped one, resumed) with a child per stage, the train run attached.
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {c.data.tags.get("stage") for c in children} >= {"synth", "train", "evaluate", "register"}
    assert len(client.search_runs([parent.info.experiment_id], "tags.stage = 'pipeline'")) == 1

    local = [sys.executable if a == "python" else a for a in _pipeline("run", sample_data_root, out)]
    third = subprocess.run(local, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    for stage in ("synth", "train", "evaluate", "register"):
        assert f"{stage}: skipped" in third.stdout
    assert len(client.search_model_versions("name = 'anomalygpt'")) == 1
    retrain = subprocess.run(
        [*local[:3], "retrain", *local[4:]], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    assert "up to date: anomalygpt champion v1" in retrain.stdout
