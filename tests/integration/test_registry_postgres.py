"""The registry against what users run: an MLflow tracking server backed by PostgreSQL.

A module fixture starts a real PostgreSQL server (Debian's `postgresql` package, on 127.0.0.1 in a
temporary folder) and a real `mlflow server` on it; the tests register, promote and resolve through
the project's own functions, and race two pipelines that finish at the same time.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from support import fake_checkpoint, free_port

from pipeline.registry import RegistryConfig, checkpoint_digest

ROOT = Path(__file__).resolve().parents[2]
RACE_WORKER = Path(__file__).with_name("registry_race_worker.py")
LOCK_WORKER = Path(__file__).with_name("lock_race_worker.py")

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin (Debian's layout), else initdb's folder on PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server on a free loopback port with an empty database ``mlflow`` (trust auth),
    for this module only.

    initdb refuses to run as root, so as root the server runs as the ``postgres`` user in a folder
    it owns."""
    import psycopg2

    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (initdb): install Debian's postgresql package")
    root = Path(tempfile.mkdtemp(prefix="anomalygpt-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")  # Debian's package creates it
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def pg(tool: str, *args: str) -> None:
        proc = subprocess.run(
            [*as_user, str(bindir / tool), *args], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"{tool} failed:\n{proc.stdout}\n{proc.stderr}"

    pg("initdb", "-D", str(data), "-U", "mlflow", "-A", "trust", "-E", "UTF8", "--no-sync")
    options = f"-h 127.0.0.1 -p {port} -k {root} -F"
    pg("pg_ctl", "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "60", "-o", options, "start")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the dev extra pins psycopg2.
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres_url, tmp_path_factory):
    """``mlflow server`` on the PostgreSQL database, serving artifacts from a temporary folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", postgres_url,
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "2"]  # fmt: skip
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240  # the first start migrates the schema
        while True:
            assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield uri
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:  # its workers wait for idle connections; nothing to keep
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(30)
        log.close()


@pytest.fixture()
def server_store(mlflow_server, tmp_path, monkeypatch):
    """This test's process logs to the server (as a user's MLFLOW_TRACKING_URI would say)."""
    import mlflow

    from pipeline.core.mlflow_store import configure_mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("ANOMALYGPT_CACHE", str(tmp_path / "cache"))
    configure_mlflow(tmp_path / "run", "postgres-test")
    yield mlflow_server
    while mlflow.active_run():
        mlflow.end_run()


def test_register_promote_and_resolve_through_the_server(server_store, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from pipeline.model_download import resolve_model
    from pipeline.promotion_lock import tickets
    from pipeline.registry import register_and_promote
    from pipeline.registry_errors import ModelReferenceError

    cfg = RegistryConfig(model_name="pg-sequence")
    data = {"dataset root": "/data/mvtec", "categories": ["brick"]}
    outcomes = []
    for seed, value in ((1, 0.7), (2, 0.8), (3, 0.75)):
        with mlflow.start_run():
            metrics = {"mean": {"image_auroc": value, "pixel_auroc": 0.5, "accuracy": 0.6}}
            ckpt = fake_checkpoint(tmp_path / f"ckpt{seed}", seed)
            outcomes.append(register_and_promote(ckpt, metrics, "eval-data", cfg, data=data))
    assert [(o["version"], o["promoted"]) for o in outcomes] == [("1", True), ("2", True), ("3", False)]
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(cfg.model_name, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(cfg.model_name, "challenger").version) == "3"
    description = client.get_model_version(cfg.model_name, "3").description
    assert "- dataset root: /data/mvtec" in description
    assert "not promoted, v2 stays champion: 0.7500 does not beat 0.8000" in description
    assert [t.released for t in tickets(client, cfg.model_name)] == [True]  # one ticket kept, released

    local = resolve_model(f"models:/{cfg.model_name}@champion")
    assert checkpoint_digest(local) == checkpoint_digest(tmp_path / "ckpt2")
    with pytest.raises(ModelReferenceError, match=r"no registered model 'nope' in http://127\.0\.0\.1"):
        resolve_model("models:/nope@champion")


def test_four_pipelines_finishing_together_leave_the_best_champion(server_store, tmp_path):
    """Four processes register at the same moment, round after round (the best one rotates): each
    round ends with all four versions registered and the champion alias on the best one."""
    from mlflow import MlflowClient

    workers, rounds, plans, procs = 4, 5, [], []
    for worker in range(workers):
        steps = []
        for r in range(rounds):
            better = worker == r % workers
            steps.append({
                "model_name": f"race-{r}",
                "checkpoint": str(fake_checkpoint(tmp_path / f"ckpt-{worker}-{r}", seed=10 * r + worker)),
                "value": 0.9 if better else 0.6 + 0.01 * worker,
                "ready": str(tmp_path / f"ready-{worker}-{r}"),
                "gate": str(tmp_path / f"gate-{r}"),
            })  # fmt: skip
        plan = {"run_root": str(tmp_path / f"run-{worker}"), "experiment": "postgres-race",
                "rounds": steps, "result": str(tmp_path / f"result-{worker}.json")}  # fmt: skip
        (tmp_path / f"plan-{worker}.json").write_text(json.dumps(plan))
        plans.append(plan)
        env = {**os.environ, "MLFLOW_TRACKING_URI": server_store}
        procs.append(
            subprocess.Popen(
                [sys.executable, str(RACE_WORKER), str(tmp_path / f"plan-{worker}.json")],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        for r in range(rounds):
            deadline = time.monotonic() + 300
            while not all(Path(p["rounds"][r]["ready"]).exists() for p in plans):
                failed = [p.poll() for p in procs if p.poll() not in (None, 0)]
                assert not failed, "\n".join(p.communicate()[0][-3000:] for p in procs if p.poll())
                assert time.monotonic() < deadline, f"round {r}: the workers never got ready"
                time.sleep(0.02)
            Path(plans[0]["rounds"][r]["gate"]).touch()  # both start this round at once
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * workers, "\n".join(o[-3000:] for o in outputs)

    client = MlflowClient()
    for r in range(rounds):
        name = f"race-{r}"
        steps = [p["rounds"][r] for p in plans]
        best = max(steps, key=lambda s: s["value"])
        versions = client.search_model_versions(f"name = '{name}'")
        assert sorted(v.tags["checkpoint_sha256"] for v in versions) == sorted(
            checkpoint_digest(s["checkpoint"]) for s in steps
        ), f"round {r}: a version is missing"
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.tags["checkpoint_sha256"] == checkpoint_digest(best["checkpoint"]), (
            f"round {r}: the worse checkpoint is champion ({champion.tags['promotion_reason']})"
        )
        assert champion.tags["promotion_decision"] == "promoted"


def test_the_lock_is_never_held_twice_and_a_killed_holder_blocks_no_longer_than_its_lease(
    server_store, tmp_path
):
    """Four processes take the lock of one model again and again (lease 2 s) while a fifth, holding it,
    is killed: no two holds overlap, and the lock moves on within the lease (plus the clock skew
    allowed) of the kill."""
    from pipeline.promotion_lock import CLOCK_SKEW_S

    journal, lease, env = tmp_path / "journal.txt", 2.0, {**os.environ, "MLFLOW_TRACKING_URI": server_store}

    def worker(*args: str) -> subprocess.Popen:
        cmd = [sys.executable, str(LOCK_WORKER), "pg-lock", str(journal), str(lease), *args]
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    holder = worker("hold")
    deadline = time.monotonic() + 120
    while "hold" not in (journal.read_text() if journal.exists() else ""):
        assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()[0][-3000:]
        time.sleep(0.05)
    racers = [worker("rounds", "5") for _ in range(4)]
    time.sleep(1.0)  # the racers wait on the held lock
    holder.kill()
    killed_at = time.time()
    holder.wait()
    outputs = [r.communicate(timeout=300)[0] for r in racers]
    assert [r.returncode for r in racers] == [0] * 4, "\n".join(o[-3000:] for o in outputs)

    rounds = []
    for line in journal.read_text().splitlines():
        kind, who, start, end = line.split()
        if kind == "round":
            rounds.append((float(start), float(end), who))
    rounds.sort()
    assert len(rounds) == 20
    for (_, end, who), (start, _, nxt) in itertools.pairwise(rounds):
        assert end <= start, f"{who} and {nxt} held the lock at once"
    assert killed_at < rounds[0][0] < killed_at + lease + CLOCK_SKEW_S + 3.0  # the killed hold ended it
