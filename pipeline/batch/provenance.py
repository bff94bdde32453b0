"""Where a model came from, as ``inspect`` records it: its version, the data it was trained on (the
default references) and the pipeline run it belongs to (the parent of the inspection's MLflow run).

A registered version carries these as tags (``data``, ``feedback``, ``pipeline_run_id``); a run
folder's checkpoint (``<run>/train``) has its evaluation's ``metrics.json`` beside it, naming the
data and the feedback folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelOrigin:
    version: str
    """``models:/NAME/N`` for a registered model, ``sha256:<12 hex>`` of the weights for a folder."""
    data_root: str | None
    """The dataset the model was trained on, when recorded."""
    pipeline_run_id: str | None = None
    feedback_root: str | None = None
    """The feedback folder it was trained and evaluated with (``retrain --feedback``), when recorded:
    its confirmed normals are the bank's cover, which the dataset also links in."""


def model_origin(model: str, checkpoint: Path) -> ModelOrigin:
    """The origin of ``model`` (what the user named), resolved to ``checkpoint`` already; a folder's
    version is the hash of its weights."""
    origin = recorded_origin(model, checkpoint)
    if model.startswith("models:/"):
        return origin
    from pipeline.registry import checkpoint_digest

    return dataclasses.replace(origin, version=f"sha256:{checkpoint_digest(checkpoint)[:12]}")


def recorded_origin(model: str, checkpoint: Path) -> ModelOrigin:
    """What ``model`` records of its training (the version's tags, or the run folder's metrics.json),
    without hashing a folder's weights (gigabytes for a 7B model): its version is ``model`` as named."""
    if model.startswith("models:/"):
        return _registered(model)
    metrics = checkpoint.parent / "evaluate" / "metrics.json"
    recorded = json.loads(metrics.read_text()) if metrics.is_file() else {}
    return ModelOrigin(model, recorded.get("data"), feedback_root=recorded.get("feedback"))


def _registered(model: str) -> ModelOrigin:
    import mlflow

    from pipeline.registry import alias_version

    client = mlflow.MlflowClient()
    head, _, number = model.removeprefix("models:/").partition("/")
    name, _, alias = head.partition("@")
    version = alias_version(client, name, alias) if alias else client.get_model_version(name, number)
    if version is None:  # resolve_model already refused a missing alias: it was moved since
        return ModelOrigin(model, None)
    tags = version.tags or {}
    return ModelOrigin(
        f"models:/{name}/{version.version}",
        tags.get("data"),
        tags.get("pipeline_run_id"),
        tags.get("feedback") or None,
    )


def recorded_cover(origin: ModelOrigin, references: Path | None) -> Path | None:
    """The feedback folder ``origin`` was retrained with, when ``references`` is its recorded dataset:
    that dataset links the confirmed normals into its train folders, and they must stay the bank's
    cover (scored against the references, never fitting where normal ends). None otherwise, or when
    the folder is gone."""
    if references is None or not (origin.data_root and origin.feedback_root):
        return None
    feedback = Path(origin.feedback_root)
    if not feedback.is_dir() or references.resolve() != Path(origin.data_root).resolve():
        return None
    return feedback.resolve()
