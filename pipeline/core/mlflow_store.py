"""Where MLflow writes: ``MLFLOW_TRACKING_URI`` when set, else a sqlite store in the run folder.

Always explicit: MLflow's own default drops ``mlflow.db`` into the working directory.
"""

from __future__ import annotations

import functools
import getpass
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: "custom_model_development"}
"""MLflow 3's UI opens an experiment by its kind: this one shows runs, metrics and models (the
model-training view), not traces and prompts (the GenAI view)."""

UI_ADDRESS = "http://127.0.0.1:5000"
"""Where ``mlflow ui --host 127.0.0.1 --port 5000`` serves a local store."""
PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAX_TAG_CHARS = 5000

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
    _ensure_experiment(experiment, artifacts)
    mlflow.set_experiment(experiment)
    return uri


def _ensure_experiment(name: str, artifact_location: str | None) -> None:
    """Create ``name`` unless it exists (two pipelines starting together may both try: the loser
    finds the winner's), and mark it a model-training experiment where it has no kind yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            mlflow.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)
            return
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None and EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_TAGS[EXPERIMENT_KIND_TAG]
        )


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


def source_tags() -> dict[str, str]:
    """The tags the MLflow UI shows as a run's source: the command that made it, who ran it and,
    from a git checkout, the project's commit (MLflow's own guesses name only the script file)."""
    command = [Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]] if sys.orig_argv else sys.argv
    tags = {
        "mlflow.source.name": shlex.join(command)[:MAX_TAG_CHARS],
        "mlflow.source.type": "LOCAL",
        "mlflow.user": _user(),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: the tracking server's own, or ``mlflow ui``'s for a local store."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


@functools.cache
def git_commit() -> str | None:
    """HEAD of the project's git checkout; None outside one (an installed package, a Ray job's
    uploaded working directory) or without git."""
    if not (PROJECT_ROOT / ".git").exists():
        return None
    try:
        proc = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (some containers)
        return str(os.getuid())
