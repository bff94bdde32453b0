"""Orchestration decisions that need no training: fingerprints, retrain's up-to-date check, fail-fast."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from pipeline.orchestrate import RunRequest, eval_identity, model_fingerprint, run_pipeline, up_to_date
from pipeline.pipeline_config import load_pipeline_config
from pipeline.registry_errors import RegistryError

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def cfg():
    return load_pipeline_config(ROOT / "configs" / "tiny.yaml")


def test_model_fingerprint_tracks_what_changes_the_model(cfg):
    base = model_fingerprint(cfg)
    assert (
        model_fingerprint(load_pipeline_config(ROOT / "configs" / "tiny.yaml", ["train.log_every=5"])) == base
    )
    assert (
        model_fingerprint(load_pipeline_config(ROOT / "configs" / "tiny.yaml", ["synth.workers=2"])) == base
    )
    for change in ("train.optimizer.lr=0.01", "seed=1", "synth.per_image=2", "model.prompt_tokens=9"):
        assert model_fingerprint(load_pipeline_config(ROOT / "configs" / "tiny.yaml", [change])) != base, (
            change
        )


def test_eval_identity_ignores_speed_settings(cfg):
    base = eval_identity(cfg, "data-a")
    faster = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, workers=4, write_maps=False))
    assert eval_identity(faster, "data-a") == base
    assert eval_identity(cfg, "data-b") != base
    k_shot = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, shots=1))
    assert eval_identity(k_shot, "data-a") != base


def test_retrain_up_to_date_only_for_same_normals_and_config(cfg, tmp_path):
    import mlflow
    import torch
    import yaml
    from safetensors.torch import save_file

    from pipeline.core.mlflow_store import configure_mlflow
    from pipeline.registry import register_and_promote

    configure_mlflow(tmp_path / "runs", "up-to-date")
    fps = {"normals": "n1", "model": model_fingerprint(cfg), "eval": "e"}
    assert up_to_date(cfg, fps) is None  # nothing registered yet

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file({"w": torch.ones(2)}, str(ckpt / "model.safetensors"))
    (ckpt / "config.yaml").write_text(yaml.safe_dump({"x": 1}))
    tags = {"normals_fingerprint": "n1", "model_fingerprint": fps["model"]}
    with mlflow.start_run():
        register_and_promote(ckpt, {"mean": {"image_auroc": 0.6}}, "e", cfg.registry, tags=tags)

    assert "champion v1" in up_to_date(cfg, fps)
    assert up_to_date(cfg, {**fps, "normals": "n2"}) is None  # new normal images
    assert up_to_date(cfg, {**fps, "model": "other"}) is None  # new model config


def test_unreachable_mlflow_fails_before_any_work(cfg, tmp_path, monkeypatch, sample_data_root):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    out = tmp_path / "run"
    with pytest.raises(RegistryError, match="unreachable"):
        run_pipeline(RunRequest(cfg, sample_data_root, out))
    assert sorted(p.name for p in out.iterdir()) == []  # no lock, no stage, no fingerprint cache


def test_run_command_names_a_missing_dataset(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(ROOT / "configs" / "tiny.yaml"), "--out",
         str(tmp_path / "run")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"dataset root not found: {tmp_path / 'run' / 'data'}" in proc.stderr
    assert "sample-data" in proc.stderr


def test_second_retrain_exits_naming_the_running_one(sample_data_root, tmp_path):
    import os
    import subprocess
    import sys

    from pipeline.lock import workspace_lock

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipeline", "retrain", "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--data", str(sample_data_root), "--out", str(out)]  # fmt: skip
    with workspace_lock(out):  # a run in progress
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert f"{out} is in use by another pipeline run (pid {os.getpid()}" in proc.stderr
    assert not (out / "synth").exists()
