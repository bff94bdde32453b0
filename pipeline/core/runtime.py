"""Process-wide runtime defaults and the one way to get a Ray session.

Kept import-light: ``ray`` is imported only inside :func:`init_ray`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import re
import warnings
from collections.abc import Iterator

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


VERBOSE_ENV = "ANOMALYGPT_VERBOSE"
"""``1``: every library's own lines too (``python -m pipeline --verbose`` sets it); else quiet."""

QUIET_WARNINGS = (
    "`is_gradient_checkpointing` is deprecated",  # transformers, about its own internals
    "`torch.distributed.all_gather_into_tensor` is deprecated",  # torch, about DeepSpeed's call
)
"""FutureWarnings about library internals, not about this project's use: hidden unless verbose."""

QUIET_ENV_DEFAULTS = {
    "TRANSFORMERS_VERBOSITY": "error",  # its INFO/WARNING lines of loading and generating
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars (one per model load)
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables..."
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts" when registering
    "PYTHONWARNINGS": ",".join(f"ignore:{message}:FutureWarning" for message in QUIET_WARNINGS),
}
"""The quiet console's environment: read when each library is imported, so set before that, in the
driver and (inherited, or as :func:`worker_env`) in every Ray worker. A user's own value wins."""

_RAY_TOKEN_NOTE = "Token authentication is enabled"
"""Ray's note that a local Ray uses token authentication (its secure default): nothing to act on."""


def configure_environment() -> None:
    """Offline, private defaults; unless :func:`verbose`, the quiet console's too (in this process)."""
    for key, value in RUNTIME_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if verbose():
        return
    for key, value in QUIET_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if os.environ["PYTHONWARNINGS"] == QUIET_ENV_DEFAULTS["PYTHONWARNINGS"]:  # read at start-up only
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=re.escape(message), category=FutureWarning)


@contextlib.contextmanager
def loading_for_good() -> Iterator[None]:
    """Load what a short-lived process keeps until it exits (torch, transformers, a model) with the
    cyclic collector paused, then freeze it out of later collections.

    Importing transformers creates ~400k objects; every full collection walks all of them, which is
    ~0.8 s of a 5 s ``ask`` on 2 cores (imports, tokenizer JSON, finalisation). Only for processes
    that end soon after: cycles among what is frozen are never collected."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def set_verbose(on: bool) -> None:
    """``--verbose``: this process and the Ray workers it starts show every library's lines."""
    if on:
        os.environ[VERBOSE_ENV] = "1"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def library_log_level() -> int:
    """Level of Ray's and Ray Train's own loggers: their INFO lines only when verbose."""
    return logging.INFO if verbose() else logging.WARNING


def worker_env() -> dict[str, str]:
    """``env_vars`` for the Ray workers this process starts (training workers, evaluation actors):
    workers of a cluster do not inherit the driver's environment, so its verbosity travels here."""
    if verbose():
        return {VERBOSE_ENV: os.environ[VERBOSE_ENV]}
    return {key: os.environ.get(key, value) for key, value in QUIET_ENV_DEFAULTS.items()}


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` when set (a cluster or a submitted job), else start Ray locally.

    Idempotent: an already initialised Ray (a test session, a parent stage) is reused.
    """
    configure_environment()
    import ray

    if ray.is_initialized():
        return
    # log_to_driver: the workers' own lines (train: step ...) are the run's progress; what else
    # they print is quietened at its source (worker_env, Ray Train's LoggingConfig).
    level = library_log_level()
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True, logging_level=level)
    else:
        if not verbose():
            _quiet_local_ray()
        # address="local": without it ray.init() joins whatever cluster /tmp/ray/ray_current_cluster
        # names (left by any `ray start`, even one that has since died: then it hangs).
        # Without the dashboard (no state API), Ray Train's placement-group cleaner warns every few
        # seconds that it cannot query the controller; the hook mutes that one logger in workers.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=True,
            logging_level=level,
            runtime_env={"worker_process_setup_hook": "pipeline.core.runtime.quiet_ray_worker"},
        )


def _quiet_local_ray() -> None:
    """A local Ray's start-up notes that ask nothing of the user: its token authentication (the
    secure default) and the error line of Ray Train's preemption watcher (a restart caveat of an
    actor that has nothing to watch on one machine: no node of it is preempted)."""
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_not_token_note)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def _not_token_note(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_RAY_TOKEN_NOTE)


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


def quiet_train_worker() -> None:
    """In a Ray Train worker, unless verbose: Ray Train 2.60 logs every rank's report ("Reporting
    training result ...", the whole metrics dict) on a logger named by its file's path, outside
    ``ray.train``, so the run's LoggingConfig does not reach it."""
    if verbose():
        return
    with contextlib.suppress(ImportError):  # another Ray: that logger may live elsewhere
        context = importlib.import_module("ray.train.v2._internal.execution.context")
        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def quiet_ray_worker() -> None:
    """Runs in every local Ray worker process at start-up. Names this Ray for the components that
    find their cluster on their own (Ray Train's placement-group cleaner asks the state API with no
    address): with another local Ray on the machine (a service beside a retrain) they would fail
    with "Found multiple active Ray instances"."""
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
        logging.ERROR
    )
