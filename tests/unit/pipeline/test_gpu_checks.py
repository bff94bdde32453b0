"""Asking for GPUs that the cluster does not have fails at once, naming the problem (a real local
Ray without GPUs)."""

from __future__ import annotations

import pytest

from pipeline.core.config import ConfigError, apply_overrides, from_dict, to_dict
from pipeline.core.runtime import MissingGPUError, require_gpus
from pipeline.pipeline_config import PipelineConfig, load_pipeline_config


def test_require_gpus_names_what_asked_and_what_the_cluster_offers(ray_session):
    with pytest.raises(MissingGPUError, match=r"train\.use_gpu needs 2 GPU\(s\), but the local Ray offers 0"):
        require_gpus(2, "train.use_gpu")
    require_gpus(0, "nothing")
    assert issubclass(MissingGPUError, ConfigError)  # the CLI prints it and exits 2, no traceback


def test_training_on_gpus_without_gpus_stops_before_any_worker_starts(ray_session, tiny_shards, tmp_path):
    from pathlib import Path

    from train.job import run_training

    root = Path(__file__).resolve().parents[3]
    data = apply_overrides(
        to_dict(load_pipeline_config(root / "configs" / "tiny.yaml")), ["train.use_gpu=true"]
    )
    cfg = from_dict(PipelineConfig, data)
    with pytest.raises(MissingGPUError, match=r"--workers 2 \(one GPU per worker\) needs 2 GPU"):
        run_training(cfg.train_job(), tiny_shards, tmp_path / "train", workers=2)
    assert not (tmp_path / "train" / "mlflow.db").exists()  # no MLflow run was opened
