"""The train job end to end on real shards: Ray Train + DeepSpeed ZeRO-2, MLflow, checkpoints,
a worker killed mid-run, and a rerun after the whole job died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from pipeline.core.config import apply_overrides, from_dict, to_dict
from pipeline.pipeline_config import PipelineConfig, load_pipeline_config

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def tiny(*overrides: str) -> PipelineConfig:
    return from_dict(PipelineConfig, apply_overrides(to_dict(load_pipeline_config(TINY)), overrides))


def wait_for_checkpoint(out: Path, timeout: float, proc: subprocess.Popen | None = None) -> dict:
    """State of the first checkpoint Ray Train registers under ``out/ray``."""
    from train.job import latest_checkpoint

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in (out / "ray").glob("*"):
            try:
                state, _ = latest_checkpoint(str(out / "ray"), run.name)
            except (json.JSONDecodeError, FileNotFoundError):  # caught mid-write
                state = None
            if state:
                return state
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"training exited (rc {proc.returncode}) before its first checkpoint")
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint under {out / 'ray'} after {timeout} s")


def train_worker_pids() -> list[int]:
    """PIDs of the Ray Train worker processes (not the helper processes they fork, which share the title)."""
    workers = {
        p.pid: p.ppid()
        for p in psutil.process_iter(["cmdline"])
        if any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))
    }
    return sorted(pid for pid, parent in workers.items() if parent not in workers)


def metric(client, run_id: str, key: str) -> dict[int, float]:
    """Last logged value per step (steps redone after a restart are logged again)."""
    return {
        m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
    }


def test_two_workers_zero2_survive_a_killed_worker(tiny_shards, instruct_set, tmp_path):
    from mlflow import MlflowClient

    from train.data import BatchSource
    from train.job import run_training
    from train.model import build_model, load_checkpoint
    from train.shard_reader import index_shards

    cfg = tiny("train.max_steps=60", "train.checkpoint_every=10", "train.max_failures=2")
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint():
        wait_for_checkpoint(out, timeout=240)
        pids = train_worker_pids()
        if pids and not (out / "train_summary.json").exists():
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])

    killer = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    killer.start()
    summary = run_training(cfg.train_job(), tiny_shards, out, instruct=instruct_set, workers=2)
    killer.join(timeout=5)

    # The run finished despite the kill, resuming from a checkpoint rather than from scratch.
    assert killed, "no Ray Train worker process was found to kill"
    assert summary["steps"] == 60 and summary["samples"] == 240
    assert summary["resumed_from_step"] >= 10 and summary["resumed_from_step"] % 10 == 0
    assert (summary["workers"], summary["zero_stage"], summary["accumulation_steps"]) == (2, 2, 1)
    assert summary["instruction_samples"] == 24 and summary["instruction_fraction"] == 0.5
    for name in ("model.safetensors", "config.yaml", "train_summary.json"):
        assert (out / name).is_file()
    # The checkpoint carries where normal ends on one-reference banks, measured on every category.
    one_shot = yaml.safe_load((out / "config.yaml").read_text())["memory_bank"]["one_shot"]
    assert set(one_shot) == set(summary["categories"])
    assert all(c["nn"][1] > c["nn"][0] and c["decoder"][1] > c["decoder"][0] for c in one_shot.values())
    assert all(sum(c["layer_weights"]) == pytest.approx(1.0, abs=1e-5) for c in one_shot.values())

    # MLflow: one run holds the config and the per-step metrics of both attempts; the loss fell.
    client = MlflowClient(summary["mlflow_tracking_uri"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.deepspeed.zero_optimization.stage"] == "2"
    assert run.data.params["run.workers"] == "2"
    assert run.data.params["synth.size"] == str(cfg.synth.size)  # the whole run config, as before
    assert yaml.safe_load((out / "pipeline_config.yaml").read_text()) == to_dict(cfg)
    assert {"model.safetensors", "config.yaml", "train_summary.json", "deepspeed.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    pixel = {s: v + metric(client, run.info.run_id, "anomaly/dice")[s] for s, v in metric(
        client, run.info.run_id, "anomaly/focal").items()}  # fmt: skip
    steps = sorted(pixel)
    assert steps[0] == 1 and steps[-1] == 59  # anomaly on odd steps, instruction on even ones
    assert set(metric(client, run.info.run_id, "instruction/ce")) == set(range(2, 61, 2))
    assert set(metric(client, run.info.run_id, "lr")) == set(range(1, 61))
    early = sum(pixel[s] for s in steps[:4]) / 4
    late = sum(pixel[s] for s in steps[-4:]) / 4
    assert late < 0.8 * early, f"focal+dice did not fall: first steps {early:.3f}, last steps {late:.3f}"

    # The exported checkpoint is exactly what the DeepSpeed engine held, and training changed it.
    loaded, model_cfg = load_checkpoint(out)
    engine_state = torch.load(
        Path(summary["checkpoint"]) / "ds" / "mp_rank_00_model_states.pt", weights_only=False
    )
    from_engine = build_model(model_cfg)
    result = from_engine.load_state_dict(engine_state["module"], strict=False)
    assert not result.unexpected_keys
    trainable = {n for n, p in from_engine.named_parameters() if p.requires_grad}
    assert trainable and not trainable & set(result.missing_keys)
    torch.manual_seed(cfg.seed)
    initial = build_model(model_cfg).trainable_state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in loaded.trainable_state_dict().items())

    batch = BatchSource(
        index_shards(tiny_shards),
        [],
        image_size=64,
        micro=4,
        rank=0,
        world=1,
        seed=1,
        augment=cfg.train.augment,
    ).anomaly(0)
    loaded.eval()
    from_engine.eval()
    with torch.no_grad():
        a, b = loaded.training_losses(batch), from_engine.training_losses(batch)
        pa = loaded.predict(batch.images, batch.categories, generate=False)
        pb = from_engine.predict(batch.images, batch.categories, generate=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(
        (x.anomaly_map == y.anomaly_map).all() and x.score == y.score for x, y in zip(pa, pb, strict=True)
    )


def test_rerun_after_the_whole_job_died_resumes(tiny_shards, tmp_path):
    from mlflow import MlflowClient

    from train.job import run_training

    out = tmp_path / "out"
    overrides = ["train.max_steps=24", "train.checkpoint_every=6", "train.cpus_per_worker=1"]
    command = [sys.executable, "-m", "pipeline", "train", "--config", str(TINY), "--shards", str(tiny_shards)]
    command += ["--out", str(out), "--workers", "1"] + [a for o in overrides for a in ("--set", o)]
    log = (tmp_path / "first.log").open("w")
    # As from a fresh shell: no MLflow URI that an earlier test exported into this process's environment.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        state = wait_for_checkpoint(out, timeout=240, proc=proc)
    finally:  # the whole job dies: driver, its local Ray and the workers, without any cleanup
        family = [proc, *psutil.Process(proc.pid).children(recursive=True)]
        for p in family:
            p.kill()
        psutil.wait_procs(family, timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "train_summary.json").exists()

    # The same command again (here in-process, on the test session's Ray) resumes.
    summary = run_training(tiny(*overrides).train_job(), tiny_shards, out, instruct=None, workers=1)
    assert summary["steps"] == 24
    assert summary["resumed_from_step"] >= state["step"] >= 6
    assert summary["mlflow_run_id"] == state["mlflow_run_id"]  # the same MLflow run continues
    client = MlflowClient(summary["mlflow_tracking_uri"])
    assert client.get_run(state["mlflow_run_id"]).info.status == "FINISHED"
    assert set(metric(client, state["mlflow_run_id"], "loss")) == set(range(1, 25))
