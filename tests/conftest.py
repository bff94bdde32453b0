"""Session-wide test setup: offline, loopback-only runtime and one shared local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.core.runtime import RUNTIME_ENV_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]

for _key, _value in RUNTIME_ENV_DEFAULTS.items():
    os.environ[_key] = _value
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (start ~6 s, stop ~10 s)."""
    import ray

    if not ray.is_initialized():
        # address="local": a fresh instance even when /tmp/ray/ray_current_cluster (left by any
        # `ray start` on this machine) points at another cluster.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_data_root(tmp_path_factory):
    """A small sample dataset (MVTec-AD layout, 4 categories, 64 px) written once per session.

    Per category: 6 train/good, 3 test/good and 4 defective test images (scratch, hole, stain,
    foreign) with ground_truth masks. Read-only for tests: copy it before changing anything.
    """
    from synth.demo_dataset import write_sample_dataset

    root = tmp_path_factory.mktemp("sample_data")
    return write_sample_dataset(root, seed=0, size=64, n_train=6, n_test_good=3, n_per_defect=1)


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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained checkpoint of the tiny preset (model.safetensors + config.yaml), for the tests
    that serve a model: they check the plumbing, not the answers."""
    from pipeline.pipeline_config import load_pipeline_config
    from train.model.build import build_model
    from train.model.checkpoint import save_checkpoint

    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml").model
    cfg.llm.cache_dir = tmp_path_factory.mktemp("llm_cache")
    return save_checkpoint(build_model(cfg), cfg, tmp_path_factory.mktemp("ckpt"))
