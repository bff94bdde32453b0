"""Process-wide runtime defaults and the one way to get a Ray session.

Kept import-light: ``ray`` is imported only inside :func:`init_ray`.
"""

from __future__ import annotations

import logging
import os

from pipeline.core.config import ConfigError

log = logging.getLogger(__name__)

# Defaults that keep a local run private (Ray listens on 127.0.0.1 only), quiet and offline.
# setdefault: a user's or cluster's own value always wins.
RUNTIME_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DS_ACCELERATOR": "cpu",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def configure_environment() -> None:
    for key, value in RUNTIME_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` when set (a cluster or a submitted job), else start Ray locally.

    Idempotent: an already initialised Ray (a test session, a parent stage) is reused.
    """
    configure_environment()
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": without it ray.init() joins whatever cluster /tmp/ray/ray_current_cluster
        # names (left by any `ray start`, even one that has since died: then it hangs).
        # Without the dashboard (no state API), Ray Train's placement-group cleaner warns every few
        # seconds that it cannot query the controller; the hook mutes that one logger in workers.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"worker_process_setup_hook": "pipeline.core.runtime.quiet_ray_worker"},
        )


class MissingGPUError(ConfigError):
    """The config asks for GPUs that the Ray cluster does not offer (the CLI exits 2 with it)."""


def require_gpus(needed: float, what: str) -> None:
    """Fail at once when the connected Ray cluster offers fewer than ``needed`` GPUs: Ray would
    otherwise wait for them (Ray Train times out and retries) without saying why."""
    import ray

    offered = float(ray.cluster_resources().get("GPU", 0.0))
    if offered < needed:
        where = os.environ.get("RAY_ADDRESS") or "the local Ray"
        raise MissingGPUError(
            f"{what} needs {needed:g} GPU(s), but {where} offers {offered:g}. Run where GPUs are "
            f"(an autoscaling cluster: start its GPU workers first), or set the use_gpu key to false."
        )


def quiet_ray_worker() -> None:
    """Runs in every local Ray worker process at start-up."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
        logging.ERROR
    )
