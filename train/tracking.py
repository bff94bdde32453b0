"""MLflow for the train job: the driver opens (or reopens) the run and closes it; rank 0 logs steps.

The run lives across worker restarts and reruns: its id travels in each checkpoint's state.
mlflow is imported inside the functions: the driver imports this module before its input checks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.core.config import flatten
from pipeline.core.mlflow_store import configure_mlflow, source_tags

log = logging.getLogger(__name__)


def open_run(
    out: Path, experiment: str, config: dict[str, Any], resume_id: str | None, extra: dict[str, Any]
) -> tuple[str, str]:
    """(run id, tracking URI): the resumed run, or a new one ``<experiment>/train`` in ``experiment``
    with the flattened ``config`` (plain data) and ``extra`` (as ``run.*``) as params."""
    from mlflow.exceptions import MlflowException

    uri = configure_mlflow(out, experiment)
    client = _client(uri)
    if resume_id:
        try:
            client.update_run(resume_id, status="RUNNING")
            return resume_id, uri
        except MlflowException:
            log.warning(
                "train: MLflow run %s of the checkpoint is not in %s; logging to a new run", resume_id, uri
            )
    import mlflow
    from mlflow.entities import Param

    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    tags = {"stage": "train", **source_tags()}
    run = client.create_run(experiment_id, run_name=f"{experiment}/train", tags=tags)
    params = {**flatten(config), **{f"run.{k}": v for k, v in extra.items()}}
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # the store takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id, uri


def close_run(uri: str, run_id: str, artifacts: list[Path]) -> None:
    client = _client(uri)
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")


def fail_run(uri: str, run_id: str) -> None:
    _client(uri).set_terminated(run_id, "FAILED")


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


class MetricLogger:
    """Rank 0 only: per-step metrics to MLflow (asynchronously) and a progress line to the log."""

    def __init__(self, uri: str, run_id: str, total_steps: int) -> None:
        import mlflow

        mlflow.set_tracking_uri(uri)
        self.mlflow, self.run_id = mlflow, run_id
        self.every = max(1, total_steps // 20)

    def log(self, metrics: dict[str, float], step: int, total: int) -> None:
        self.mlflow.log_metrics(metrics, step=step, run_id=self.run_id, synchronous=False)
        if step % self.every == 0 or step == total:
            log.info(
                "train: step %d/%d loss %.4f lr %.2e %.1f samples/s",
                *(step, total, metrics["loss"], metrics["lr"], metrics["samples_per_s"]),
            )

    def close(self) -> None:
        self.mlflow.flush_async_logging()
