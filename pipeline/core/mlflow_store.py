"""Where MLflow writes: ``MLFLOW_TRACKING_URI`` when set, else a sqlite store in the run folder.

Always explicit: MLflow's own default drops ``mlflow.db`` into the working directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI (for subprocesses); remember the value this
# module put there so a later call for another run folder is not mistaken for a user's setting.
_exported_uri: str | None = None


def tracking_uri(run_root: str | Path) -> str:
    """The tracking URI for a run folder (the registry lives in the same store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri != _exported_uri:
        return uri
    root = Path(run_root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def configure_mlflow(run_root: str | Path, experiment: str) -> str:
    """Point MLflow (tracking and registry) at the run's store and select ``experiment``."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    global _exported_uri
    from_user = os.environ.get("MLFLOW_TRACKING_URI") not in (None, "", _exported_uri)
    uri = tracking_uri(run_root)
    mlflow.set_tracking_uri(uri)
    if not from_user:
        _exported_uri = uri
    mlflow.set_registry_uri(uri)
    if not uri.startswith(("sqlite", "file")):
        root = Path(run_root).expanduser().resolve()
        artifacts = None
    else:
        root = Path(run_root).expanduser().resolve()
        artifacts = (root / "mlartifacts").as_uri()
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return uri


@contextmanager
def shared_store(uri: str) -> Iterator[str]:
    """Within the block, every stage (and subprocess) of this process logs to ``uri``: it is set as
    ``MLFLOW_TRACKING_URI``, as a user would, so each stage's ``configure_mlflow`` keeps it. Restores
    the previous setting afterwards."""
    global _exported_uri
    saved = os.environ.get("MLFLOW_TRACKING_URI"), _exported_uri
    os.environ["MLFLOW_TRACKING_URI"] = uri
    _exported_uri = None
    try:
        yield uri
    finally:
        if saved[0] is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved[0]
        _exported_uri = saved[1]
