"""The cluster path on one machine, and recovery: `ray start --head` on 127.0.0.1 with a Ray auth
token present (so Ray 2.60 turns token authentication on, as on any machine where the demo ran),
`ray job submit` of `run` (tiny config) in the README's exact form (its auth prefix, options and
runtime env; only the address and the entrypoint's arguments differ), the job is stopped during
training, submitted again: it resumes (finished stages skipped, training from its checkpoint) and
registers exactly one model. Then, locally, a third `run` skips every stage and `retrain` says it
is up to date.

The head runs in its own process group and temp dir and is stopped by signalling that group:
`ray stop` would stop every Ray instance on the machine, and a head in the default /tmp/ray leaves
/tmp/ray/ray_current_cluster behind, which a later bare `ray.init()` on the machine would follow."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
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


def _readme_submit() -> tuple[dict[str, str], list[str], list[str]]:
    """The README's cluster command ("On a cluster"): (its VAR=value prefix, the `ray ...` argv up to
    `--`, the entrypoint argv)."""
    section = (ROOT / "README.md").read_text().split("\n## On a cluster\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    argv = shlex.split(block.replace("\\\n", " "))
    prefix = {}
    while "=" in argv[0] and re.match(r"[A-Z_]+=", argv[0]):
        key, value = argv.pop(0).split("=", 1)
        prefix[key] = value
    split = argv.index("--")
    return prefix, argv[:split], argv[split + 1 :]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited"
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers or {}), timeout=2
            ) as resp:
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
    """A Ray head on 127.0.0.1 started from the venv (the job's `python` is the head's PATH python),
    with Ray's defaults for authentication: RAY_AUTH_MODE unset and a token present, so token auth
    is on. The token is a file of this test (RAY_AUTH_TOKEN_PATH), standing for ~/.ray/auth_token.
    Yields (dashboard address, the head's environment, which a client on this machine shares)."""
    gcs, dashboard, agent, agent_grpc, metrics, runtime_env_agent, client = _free_ports(7)
    # Earlier tests in this process may have exported MLflow URIs (mlflow.set_*_uri does) and
    # RAY_AUTH_MODE (a local ray.init() sets it): drop them.
    dropped = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    token = secrets.token_hex(32)
    token_path = tmp_path / "auth_token"
    token_path.write_text(token)
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_TOKEN_PATH=str(token_path))
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
        _wait_http(f"{address}/api/version", proc, timeout=120, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(f"{address}/api/authentication_mode", timeout=10) as resp:
            assert json.load(resp) == {"authentication_mode": "token"}
        with pytest.raises(urllib.error.HTTPError) as refused:  # what a client without the prefix gets
            urllib.request.urlopen(f"{address}/api/version", timeout=10)
        assert refused.value.code == 401 and b"Missing authentication token" in refused.value.read()
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
    """`ray ARGS` run as the README runs it: from the repository root (its relative paths)."""
    return subprocess.run(
        [str(VENV_BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.mark.slow
@pytest.mark.integration
def test_submitted_run_stopped_during_training_resumes_once(head, sample_data_root, tmp_path):
    address, env = head
    out = tmp_path / "run"
    prefix, readme, entrypoint = _readme_submit()
    assert prefix == {"RAY_AUTH_MODE": "token"}, prefix  # the setting a token-auth head needs
    assert readme[:3] == ["ray", "job", "submit"] and "http://HEAD:8265" in readme, readme
    assert "--runtime-env" in readme and entrypoint[:4] == _pipeline("run", sample_data_root, out)[:4]
    submit = [address if a == "http://HEAD:8265" else a for a in readme[1:]]  # only the address differs
    client_env = {**env, **prefix}

    run = _pipeline("run", sample_data_root, out)
    first = _ray(client_env, *submit, "--submission-id", "tiny-1", "--no-wait", "--", *run)
    assert first.returncode == 0, first.stderr[-2000:]
    deadline = time.monotonic() + 300
    while not list((out / "train" / "ray").glob("*/checkpoint_*/train_state.json")):
        status = _ray(client_env, "job", "status", "--address", address, "tiny-1", timeout=60).stdout
        assert "FAILED" not in status and "SUCCEEDED" not in status, status
        assert time.monotonic() < deadline, "no training checkpoint within 300 s"
        time.sleep(1)
    stop = _ray(client_env, "job", "stop", "--address", address, "tiny-1", timeout=120)
    assert stop.returncode == 0, stop.stderr[-2000:]
    from mlflow import MlflowClient

    store = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert client.search_model_versions("name = 'anomalygpt'") == []  # the stopped run registered nothing

    second = _ray(client_env, *submit, "--", *run)  # the README's form, with the test's entrypoint
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
    env = {**env, "RAY_AUTH_MODE": "disabled"}  # the local runs start their own Ray, as before
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
