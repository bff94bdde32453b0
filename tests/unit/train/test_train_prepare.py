"""Everything that can be wrong with the input fails in ``prepare``, before a Ray worker starts."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, apply_overrides, from_dict, to_dict
from pipeline.pipeline_config import PipelineConfig
from synth.shard_format import load_manifest
from train.config import TrainJobConfig
from train.context import WorkerContext
from train.job import prepare, run_record
from train.shard_reader import DataError


def with_overrides(cfg, *overrides):
    return from_dict(PipelineConfig, apply_overrides(to_dict(cfg), overrides)).train_job()


def test_prepared_run_without_instruction_data_trains_on_anomaly_data_only(
    tiny_config, tiny_shards, tmp_path, caplog
):
    with caplog.at_level(logging.WARNING):
        prepared = prepare(tiny_config.train_job(), tiny_shards, tmp_path / "out", None, workers=2)
    assert "no instruction data" in caplog.text
    assert prepared.fraction == 0.0 and prepared.instructions == []
    assert prepared.total_steps == tiny_config.train.max_steps
    assert prepared.deepspeed["gradient_accumulation_steps"] == 1 and prepared.previous is None
    assert Path(prepared.storage) == (tmp_path / "out" / "ray").resolve()


def test_prepared_run_with_instruction_data_and_epochs(tiny_config, tiny_shards, instruct_set, tmp_path):
    cfg = with_overrides(tiny_config, "train.max_steps=null", "train.epochs=2")
    prepared = prepare(cfg, tiny_shards, tmp_path / "out", instruct_set, workers=1)
    assert prepared.fraction == 0.5 and len(prepared.instructions) == 24
    assert prepared.total_steps == 2 * 48 // 2  # 2 anomaly samples per step of 4
    assert prepared.deepspeed["gradient_accumulation_steps"] == 2


@pytest.mark.parametrize(
    ("overrides", "workers", "error", "message"),
    [
        (["train.deepspeed.bf16.enable=true"], 1, ConfigError, "train.deepspeed.bf16.enable"),
        (
            ["train.deepspeed.zero_optimisation={stage: 2}"],
            1,
            ConfigError,
            "did you mean 'zero_optimization'",
        ),
        ([], 3, ConfigError, "not a multiple of train.micro_batch_size x workers"),
        ([], 0, ConfigError, "--workers must be >= 1"),
    ],
)
def test_bad_settings_fail_before_workers(
    tiny_config, tiny_shards, tmp_path, overrides, workers, error, message
):
    with pytest.raises(error, match=message.replace(".", r"\.")):
        prepare(with_overrides(tiny_config, *overrides), tiny_shards, tmp_path / "out", None, workers)
    assert not (tmp_path / "out").exists()


def test_bad_data_fails_before_workers(tiny_config, tiny_shards, tmp_path):
    with pytest.raises(DataError, match="shard folder not found"):
        prepare(tiny_config.train_job(), tmp_path / "missing", tmp_path / "out", None, 1)
    with pytest.raises(DataError, match="instruction data not found"):
        prepare(tiny_config.train_job(), tiny_shards, tmp_path / "out", tmp_path / "nothing", 1)


def test_rerun_finds_its_checkpoint_and_refuses_a_different_run(tiny_config, tiny_shards, tmp_path):
    prepared = prepare(tiny_config.train_job(), tiny_shards, tmp_path / "out", None, workers=2)
    ckpt = Path(prepared.storage) / prepared.name / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    (ckpt / "train_state.json").write_text(json.dumps({"step": 10, "fingerprint": prepared.fingerprint}))
    assert (
        prepare(tiny_config.train_job(), tiny_shards, tmp_path / "out", None, workers=2).previous is None
    )  # not registered
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": ckpt.name, "metrics": {}}}
    (ckpt.parent / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    again = prepare(tiny_config.train_job(), tiny_shards, tmp_path / "out", None, workers=2)
    assert again.previous["step"] == 10 and again.previous_dir == ckpt
    # Settings that do not change what is trained may differ on resume ...
    relaxed = replace(tiny_config, train=replace(tiny_config.train, max_failures=9, checkpoint_every=3))
    assert prepare(relaxed.train_job(), tiny_shards, tmp_path / "out", None, workers=2).previous["step"] == 10
    # ... anything else may not.
    with pytest.raises(ConfigError, match="holds checkpoints of a different run"):
        prepare(with_overrides(tiny_config, "train.optimizer.lr=0.1"), tiny_shards, tmp_path / "out", None, 2)
    with pytest.raises(ConfigError, match="holds checkpoints of a different run"):
        prepare(tiny_config.train_job(), tiny_shards, tmp_path / "out", None, workers=1)


def test_the_run_records_the_whole_pipeline_config_as_before(tiny_config):
    """pipeline_config.yaml and the MLflow params are the whole config (in its key order), with the
    job's own fields authoritative."""
    job = tiny_config.train_job()
    assert run_record(job) == to_dict(tiny_config)
    assert list(run_record(job)) == ["name", "seed", "synth", "model", "train", "evaluate", "registry"]
    assert run_record(replace(job, seed=7))["seed"] == 7
    assert list(run_record(TrainJobConfig())) == ["name", "seed", "model", "train"]


def test_the_resume_fingerprint_is_unchanged(tiny_config, tiny_shards, tmp_path):
    """Checkpoints written before the train stage had its own config still resume: the fingerprint
    is the former hash of the whole pipeline config, shards, workers and instruction share."""
    config = to_dict(tiny_config)
    for key in ("max_failures", "log_every", "keep_checkpoints", "checkpoint_every", "storage_path"):
        config["train"].pop(key)
    later = ("layer_weighting", "decoder_cap", "fusion_guard", "guard_probes", "guard_probe_kinds")
    for key in (*later, "unseen_fusion"):
        config["model"]["memory_bank"].pop(key)  # added later; at their defaults they are not hashed
    for key in ("baseline", "bank_budget", "feedback"):
        config["evaluate"].pop(key)
    identity = {
        "config": config,
        "workers": 2,
        "fraction": 0.0,
        "shards": [entry["sha256"] for entry in load_manifest(tiny_shards)["shards"]],
        "instructions": None,
    }
    former = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    prepared = prepare(tiny_config.train_job(), tiny_shards, tmp_path / "out", None, workers=2)
    assert prepared.fingerprint == former


def test_the_worker_context_travels_by_pickle(tiny_config, tiny_shards, tmp_path):
    prepared = prepare(tiny_config.train_job(), tiny_shards, tmp_path / "out", None, workers=1)
    ctx = WorkerContext(
        prepared.cfg, prepared.deepspeed, prepared.index, prepared.instructions, prepared.fraction,
        prepared.total_steps, 1, False, "fp32", prepared.fingerprint, "run", "sqlite:///x.db",
    )  # fmt: skip
    back = pickle.loads(pickle.dumps(ctx))
    assert back.config == prepared.cfg and back.fingerprint == prepared.fingerprint
    assert [s.key for s in back.index.samples] == [s.key for s in prepared.index.samples]
    assert repr(ctx).startswith("<train.context.WorkerContext object")  # not megabytes of samples
