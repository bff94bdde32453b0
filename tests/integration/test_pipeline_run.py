"""`run` end to end on the tiny preset: killed during training, run again, it resumes and registers
exactly one model; a third run skips every stage; `retrain` then says it is up to date."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "--set", "synth.categories=[brick,coin]",
    "--set", "evaluate.categories=[brick,coin]",
    "--set", "train.max_steps=6",
    "--set", "train.checkpoint_every=2",
    "--set", "evaluate.use_llm=false",
]  # fmt: skip


def _command(verb: str, data: Path, out: Path) -> list[str]:
    config = str(ROOT / "configs" / "tiny.yaml")
    return [
        sys.executable,
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


def _checkpoints(out: Path) -> list[Path]:
    return list((out / "train" / "ray").glob("*/checkpoint_*/train_state.json"))


@pytest.mark.slow
@pytest.mark.integration
def test_killed_run_resumes_and_registers_once(sample_data_root, tmp_path):
    out = tmp_path / "run"
    log = (tmp_path / "first.log").open("w")
    # Own session: killing the group kills the driver and the local Ray it started, as a crash would.
    first = subprocess.Popen(
        _command("run", sample_data_root, out), stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while not _checkpoints(out):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no training checkpoint within 300 s"
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (out / "register" / "stage.json").exists()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    assert client.search_model_versions("name = 'anomalygpt'") == []  # the dead run registered nothing

    second = subprocess.run(
        _command("run", sample_data_root, out), capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "synth: skipped" in second.stdout and "train: resuming" in second.stdout
    summary = json.loads((out / "run.json").read_text())
    train = json.loads((out / "train" / "train_summary.json").read_text())
    assert train["resumed_from_step"] > 0 and train["steps"] == 6
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

    # One parent run (resumed, not a second one) with a child per stage, the train run attached.
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {c.data.tags.get("stage") for c in children} >= {"synth", "train", "evaluate", "register"}
    parents = client.search_runs([parent.info.experiment_id], "tags.stage = 'pipeline'")
    assert len(parents) == 1

    third = subprocess.run(
        _command("run", sample_data_root, out), capture_output=True, text=True, timeout=300
    )
    assert third.returncode == 0, third.stderr[-3000:]
    for stage in ("synth", "train", "evaluate", "register"):
        assert f"{stage}: skipped" in third.stdout
    assert len(client.search_model_versions("name = 'anomalygpt'")) == 1

    retrain = subprocess.run(
        _command("retrain", sample_data_root, out), capture_output=True, text=True, timeout=300
    )
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    assert "up to date: anomalygpt champion v1" in retrain.stdout
