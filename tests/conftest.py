"""Session-wide test setup: offline, loopback-only runtime and one shared local Ray."""

from __future__ import annotations

import os

import pytest

from pipeline.runtime import RUNTIME_ENV_DEFAULTS

for _key, _value in RUNTIME_ENV_DEFAULTS.items():
    os.environ[_key] = _value
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (start ~6 s, stop ~10 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
