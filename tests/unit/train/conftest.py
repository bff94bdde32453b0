"""Shared fixtures of the train tests: real shards written by the synth stage from the sample data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def tiny_config():
    from pipeline.pipeline_config import load_pipeline_config

    return load_pipeline_config(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_shards(ray_session, sample_data_root, tiny_config, tmp_path_factory) -> Path:
    """48 samples (24 normal, 24 synthetic) in 3 shards at 64 px, made by the real synth job."""
    from synth.job import run_synth

    out = tmp_path_factory.mktemp("train_shards")
    run_synth(tiny_config.synth, sample_data_root, out, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def instruct_set(sample_data_root, tmp_path_factory) -> Path:
    from train.instruct import write_instruction_set

    out = tmp_path_factory.mktemp("instruct")
    write_instruction_set(sample_data_root, out, seed=0, size=64)
    return out
