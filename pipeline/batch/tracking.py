"""An inspection's summary in MLflow: a run of its own kind (tag ``kind=inspect``), the child of the
pipeline run that made the model when that run is known, so a model's nightly inspections sit under
it in the MLflow UI."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.batch.provenance import ModelOrigin
from pipeline.core.mlflow_store import source_tags

EXPERIMENT = "inspect"
"""Where an inspection of a model without a known pipeline run is logged."""


def log_inspection(summary: dict[str, Any], origin: ModelOrigin, out: Path) -> str:
    """Log ``summary`` (counts, anomalous share, histogram; summary.json as an artifact); returns
    the run id. MLflow's tracking URI must already be set."""
    import mlflow

    experiment_id = _experiment_of(origin.pipeline_run_id)
    tags = {**source_tags(), "kind": "inspect", "model_version": origin.version, "out": str(out)}
    if experiment_id is not None:
        tags["mlflow.parentRunId"] = origin.pipeline_run_id  # type: ignore[assignment]
    else:
        experiment_id = mlflow.set_experiment(EXPERIMENT).experiment_id
    name = f"inspect-{time.strftime('%Y%m%d-%H%M%S')}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as run:
        mlflow.log_metrics(
            {
                "images": summary["images"],
                "anomalous": summary["anomalous"],
                "anomalous_share": summary["anomalous_share"] or 0.0,
                "unreadable": summary["unreadable"],
                "images_per_s": summary["this_run"]["images_per_s"] or 0.0,
            }
        )
        for category, counts in summary["per_category"].items():
            mlflow.log_metrics(
                {f"{category}.images": counts["images"], f"{category}.anomalous_share": counts["share"]}
            )
        mlflow.log_artifact(str(out / "summary.json"))
        return run.info.run_id


def _experiment_of(run_id: str | None) -> str | None:
    """The experiment of the pipeline run ``run_id``; None when unknown or gone."""
    if not run_id:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_run(run_id).info.experiment_id
    except MlflowException:
        return None
