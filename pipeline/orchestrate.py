"""synth -> train -> evaluate -> register as one Ray job, in one run folder, with one MLflow parent run.

Run folder (``--out``)::

    mlflow.db, mlartifacts/   the MLflow store (unless MLFLOW_TRACKING_URI is set)
    synth/  train/  evaluate/  register/   each stage's outputs and its stage.json
    pipeline.lock             held for the whole run (a second run/retrain waits or exits)
    run.json                  the last run's summary; run_state.json: the open parent run

A stage whose key (input fingerprints + its config + seed) matches a complete stage.json is skipped
and says so; one interrupted with the same key resumes (synth writes only missing shards, training
continues from its last Ray Train checkpoint); a changed key starts that stage over. Registration is
idempotent (keyed by the checkpoint's sha256), so a run killed at any point and run again ends with
one registered version. Ray starts with the first stage that needs it and the stages share that
session (under `ray job submit`, the cluster's), so a run with every stage up to date takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluate.job import run_evaluation
from evaluate.report import mean_metric_values
from pipeline.core.config import to_dict
from pipeline.core.files import file_sha256, json_sha256, write_json_atomic
from pipeline.core.mlflow_store import configure_mlflow, shared_store, source_tags, tracking_uri
from pipeline.core.runtime import configure_environment
from pipeline.feedback import FeedbackStore, feedback_tags, merged_dataset
from pipeline.fingerprint import (
    dataset_fingerprint,
    read_stage,
    stage_key,
    stage_status,
)
from pipeline.fingerprint import write_stage as _write_stage
from pipeline.lock import workspace_lock
from pipeline.model_download import resolve_model
from pipeline.pipeline_config import PipelineConfig
from pipeline.registry import alias_version, checkpoint_digest, register_and_promote
from pipeline.registry_errors import ensure_reachable
from synth.fingerprint import HashCache
from synth.job import run_synth
from train.instruct import resolve
from train.job import run_training

log = logging.getLogger(__name__)

STAGES = ("synth", "train", "evaluate", "register")
FEEDBACK_DATA = "data_with_feedback"
"""The run folder's view of ``--data`` with ``--feedback`` folded in (rebuilt at every start)."""


@dataclass
class RunRequest:
    """What ``run`` and ``retrain`` were asked to do."""

    config: PipelineConfig
    data: Path
    out: Path
    workers: int = 1
    instruct: Path | None = None
    lock_wait: float = 0.0
    force: bool = False
    """Start every stage over even when its inputs are unchanged."""
    feedback: Path | None = None
    """A feedback folder (pipeline.feedback): confirmed normals train, confirmed defects evaluate."""


def synth_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """The synth section as its config declares its identity (``SynthConfig.identity()``)."""
    return cfg.synth.identity()


def model_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """The settings :func:`model_fingerprint` hashes, readable: callers record them to say what changed.
    Each section as its config declares (``identity()``)."""
    train = cfg.train.identity()
    return {"seed": cfg.seed, "synth": synth_settings(cfg), "model": cfg.model.identity(), "train": train}


def model_fingerprint(cfg: PipelineConfig) -> str:
    """What defines a trained model besides the data: seed, synth, model and training settings."""
    return json_sha256(model_settings(cfg))


def eval_protocol(cfg: PipelineConfig) -> dict[str, Any]:
    """The evaluation section less the settings that change how fast, not what is measured
    (``EvaluateConfig.identity()``)."""
    return cfg.evaluate.identity()


def eval_identity(cfg: PipelineConfig, eval_data: str) -> str:
    """The evaluation data and protocol: figures with equal identities are comparable."""
    return json_sha256({"data": eval_data, "protocol": eval_protocol(cfg)})


def data_fingerprints(cfg: PipelineConfig, data: Path, out: Path) -> dict[str, str]:
    """Content hashes of the normal training images and of the test set (cached in out/hashes.json)."""
    cache = HashCache(out / "hashes.json")
    normals = dataset_fingerprint(data, cfg.synth.format, "train", cfg.synth.categories, cache)
    test = dataset_fingerprint(data, cfg.evaluate.format, "test", cfg.evaluate.categories, cache)
    cache.save()
    return {"normals": normals, "test": test}


def fingerprints(cfg: PipelineConfig, data: Path, out: Path) -> dict[str, str]:
    """Normal training images, evaluation set + protocol, model config (content hashes, cached)."""
    data_fps = data_fingerprints(cfg, data, out)
    return {
        "normals": data_fps["normals"],
        "eval": eval_identity(cfg, data_fps["test"]),
        "model": model_fingerprint(cfg),
    }


def synth_key(cfg: PipelineConfig, normals: str) -> str:
    """The synth stage's key: the normal images, the synth settings and the seed."""
    return stage_key(normals=normals, synth=synth_settings(cfg), seed=cfg.seed)


def train_key(plan_id: str, model_fp: str, workers: int, instruct_id: str) -> str:
    """The train stage's key: the shards' plan, the model fingerprint, the worker count (a checkpoint
    resumes only with the same one) and the instruction set's hash ("" without one)."""
    return stage_key(shards=plan_id, model=model_fp, workers=workers, instruct=instruct_id)


def evaluate_key(checkpoint_digest: str, eval_id: str) -> str:
    """The evaluate stage's key: the checkpoint's content and the evaluation identity."""
    return stage_key(model=checkpoint_digest, eval=eval_id)


def instruct_fingerprint(instruct: Path | None) -> str:
    """sha256 of an instruction set's JSON ("" for none): what training read from it."""
    if instruct is None:
        return ""
    return file_sha256(resolve(instruct)[0])


def run_pipeline(req: RunRequest, retrain: bool = False) -> dict[str, Any]:
    """Check the store, take the lock, run the four stages; returns the run summary (run.json).

    ``retrain``: first compare the normal images and model config with those of the champion and
    the newest registered version; when one matches (and not ``force``), return at once with
    ``{"up_to_date": message}``.
    """
    configure_environment()
    req.out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(req.out)
    ensure_reachable(uri)  # before any work
    with workspace_lock(req.out, req.lock_wait), shared_store(uri):
        if req.feedback is not None:
            req = with_feedback(req)
        fps = fingerprints(req.config, req.data, req.out)
        if req.feedback is not None:
            fps["feedback"] = FeedbackStore(req.feedback).fingerprint()
        if retrain and not req.force:
            configure_mlflow(req.out, req.config.name)
            message = up_to_date(req.config, fps)
            if message:
                return {"up_to_date": message, "fingerprints": fps}
        return Pipeline(req, uri).execute(fps)


def with_feedback(req: RunRequest) -> RunRequest:
    """``req`` on its dataset with the feedback folded in (``<out>/data_with_feedback``, links).
    Confirmed normals train with the rest, and the evaluation banks them as cover
    (``evaluate.feedback``), as serve and inspect do: in the bank, out of its calibration. Confirmed
    defects carry an image-level label only: they count in the image metrics and stay out of the
    pixel metrics (``evaluate.allow_missing_masks``)."""
    merged = merged_dataset(req.data, req.feedback, req.out / FEEDBACK_DATA)  # type: ignore[arg-type]
    evaluation = req.config.evaluate
    if evaluation.feedback is None:
        evaluation = dataclasses.replace(evaluation, feedback=str(req.feedback))
    if any(kinds["defect"] for kinds in FeedbackStore(req.feedback).counts().values()):  # type: ignore[arg-type]
        evaluation = dataclasses.replace(evaluation, allow_missing_masks=True)
    config = dataclasses.replace(req.config, evaluate=evaluation)
    return dataclasses.replace(req, data=merged, config=config)


def up_to_date(cfg: PipelineConfig, fps: dict[str, str]) -> str | None:
    """Why no retraining is needed, or None: the champion or the newest version was trained on
    these normal images with this model config (and this feedback, when there is any)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    name = cfg.registry.model_name
    versions = client.search_model_versions(f"name = '{name}'")
    newest = max(versions, key=lambda v: int(v.version), default=None)
    champion = alias_version(client, name, cfg.registry.champion_alias)
    for label, version in (("champion", champion), ("newest version", newest)):
        if version is None:
            continue
        tags = version.tags
        if (
            tags.get("normals_fingerprint") == fps["normals"]
            and tags.get("model_fingerprint") == fps["model"]
            and tags.get("feedback_fingerprint", "") == fps.get("feedback", "")
        ):
            return (
                f"up to date: {name} {label} v{version.version} was trained on these normal images with "
                f"this config (normals {fps['normals'][:12]}); nothing to do (--force retrains anyway)"
            )
    return None


class Pipeline:
    """One execution of the stages inside an MLflow parent run (resumed if the last one died)."""

    def __init__(self, req: RunRequest, uri: str, prints: Callable[[str], None] = print) -> None:
        self.req, self.cfg, self.out, self.uri, self.say = req, req.config, req.out, uri, prints
        self.summary: dict[str, Any] = {"stages": {}}

    def execute(self, fps: dict[str, str]) -> dict[str, Any]:
        import mlflow

        started = time.perf_counter()
        configure_mlflow(self.out, self.cfg.name)
        state_file = self.out / "run_state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        resume = state.get("status") == "running" and _run_exists(state.get("parent_run_id"))
        with mlflow.start_run(
            run_id=state["parent_run_id"] if resume else None,
            run_name=None if resume else f"{self.cfg.name}/pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
        ) as parent:
            if resume:
                self.say(f"resuming pipeline run {parent.info.run_id} (the last one did not finish)")
            write_json_atomic(state_file, {"parent_run_id": parent.info.run_id, "status": "running"})
            # Tags, not params: a resumed run may be called with other --workers (params are write-once).
            mlflow.set_tags({"stage": "pipeline", "config": self.cfg.name, "data": str(self.req.data)})
            mlflow.set_tags({"out": str(self.out), "workers": str(self.req.workers)})
            mlflow.set_tags({f"fingerprint.{k}": v for k, v in fps.items()})
            mlflow.set_tags(source_tags())
            if self.req.feedback is not None:
                mlflow.set_tags(feedback_tags(self.req.feedback))
            self.fps, self.parent_id = fps, parent.info.run_id
            self.stages(fps)
            self.summary.update(
                parent_run_id=parent.info.run_id,
                experiment_id=parent.info.experiment_id,
                tracking_uri=self.uri,
                ray_address=os.environ.get("RAY_ADDRESS"),  # set by `ray job submit`; None: local Ray
                fingerprints=fps,
                wall_time_s=round(time.perf_counter() - started, 1),
            )
        write_json_atomic(state_file, {"parent_run_id": self.parent_id, "status": "complete"})
        write_json_atomic(self.out / "run.json", self.summary)
        return self.summary

    def stages(self, fps: dict[str, str]) -> None:
        """The four stages; each key names exactly what its output depends on."""
        manifest = self._stage(1, "synth", synth_key(self.cfg, fps["normals"]), self._synth)

        key = train_key(manifest["plan_id"], fps["model"], self.req.workers, self._instruct_id())
        train = self._stage(2, "train", key, self._train, own_run=True)
        self.summary["train"] = {k: train.get(k) for k in ("steps", "wall_time_s", "mlflow_run_id")}

        digest = checkpoint_digest(self.out / "train")
        self.metrics = self._stage(3, "evaluate", evaluate_key(digest, fps["eval"]), self._evaluate)
        self.summary["mean"] = self.metrics.get("mean", {})
        self._log_parent_metrics()

        key = stage_key(model=digest, eval=fps["eval"], registry=to_dict(self.cfg.registry))
        self.summary["registry"] = self._stage(4, "register", key, self._register)

    def _instruct_id(self) -> str:
        return instruct_fingerprint(self.req.instruct)

    def _stage(self, n: int, name: str, key: str, fn: Callable[[Path], dict], own_run: bool = False) -> dict:
        """Skip, resume or (re)start one stage, inside a child MLflow run (``own_run``: the stage
        makes its own run, which is then attached to the parent)."""
        import mlflow

        folder = self.out / name
        status = "fresh" if self.req.force else stage_status(folder, key)
        start = time.perf_counter()
        if status == "complete":
            self.say(f"[{n}/4] {name}: skipped, inputs and config unchanged since {folder} was completed")
            with mlflow.start_run(run_name=self._run_name(name), nested=True, tags=source_tags()):
                mlflow.set_tags({"stage": name, "skipped": "true"})
            self.summary["stages"][name] = {"status": "skipped", "dir": str(folder)}
            return read_stage(folder)["summary"]
        if status == "fresh" and folder.exists():
            shutil.rmtree(folder)  # outputs of other inputs: never mixed with this run's
        self.say(f"[{n}/4] {name}: {'resuming' if status == 'resume' else 'running'} -> {folder}")
        _write_stage(folder, key, "running")
        if own_run:
            result = fn(folder)
            run_id = result.get("mlflow_run_id")
            if run_id:
                mlflow.MlflowClient().set_tag(run_id, "mlflow.parentRunId", self.parent_id)
        else:
            with mlflow.start_run(run_name=self._run_name(name), nested=True, tags=source_tags()):
                mlflow.set_tag("stage", name)
                result = fn(folder)
        _write_stage(folder, key, "complete", result)
        took = time.perf_counter() - start
        self.summary["stages"][name] = {"status": "done", "dir": str(folder), "wall_time_s": round(took, 1)}
        self.say(f"[{n}/4] {name}: done in {took:.0f} s")
        return result

    def _log_parent_metrics(self) -> None:
        """The evaluation's mean metrics on the parent run too, under the evaluate run's names, so the
        pipeline runs of an experiment can be compared in one table."""
        import mlflow

        mlflow.log_metrics(mean_metric_values(self.metrics), run_id=self.parent_id)

    def _run_name(self, stage: str) -> str:
        """``<config name>/<stage>``: which pipeline and which stage, in the MLflow UI's run list."""
        return f"{self.cfg.name}/{stage}"

    def _synth(self, folder: Path) -> dict:
        import mlflow

        manifest = run_synth(self.cfg.synth, self.req.data, folder, seed=self.cfg.seed)
        mlflow.log_params({f"synth.{k}": v for k, v in to_dict(self.cfg.synth).items()})
        mlflow.log_metrics({"samples": manifest["samples"], "shards": len(manifest["shards"])})
        return {k: manifest[k] for k in ("plan_id", "samples", "source_fingerprint", "categories")}

    def _train(self, folder: Path) -> dict:
        shards = self.out / "synth"
        return run_training(
            self.cfg.train_job(), shards, folder, instruct=self.req.instruct, workers=self.req.workers
        )

    def _evaluate(self, folder: Path) -> dict:
        return run_evaluation(self.out / "train", self.req.data, folder, config=self.cfg.evaluate)

    def _register(self, folder: Path) -> dict:
        tags = {
            "pipeline_run_id": self.parent_id,
            "config_name": self.cfg.name,
            "data": str(self.req.data),
            "normals_fingerprint": self.fps["normals"],
            "model_fingerprint": self.fps["model"],
            **(feedback_tags(self.req.feedback) if self.req.feedback is not None else {}),
            "feedback": str(self.req.feedback or ""),
            "feedback_fingerprint": self.fps.get("feedback", ""),
            "train_run_id": str(read_stage(self.out / "train")["summary"].get("mlflow_run_id") or ""),
        }
        return register_and_promote(
            self.out / "train",
            self.metrics,
            self.fps["eval"],
            self.cfg.registry,
            tags=tags,
            rescore=self._rescore,
            data=self._data_description(),
        )

    def _data_description(self) -> dict[str, Any]:
        """What the registered version was trained and evaluated on (its description's data part)."""
        synth = read_stage(self.out / "synth")["summary"]
        mean = self.metrics.get("mean") or {}
        return {
            "dataset root": str(self.req.data),
            "categories": list(synth.get("categories") or self.metrics.get("per_category") or []),
            "training samples (normal + synthetic)": synth.get("samples"),
            "test images": mean.get("n_images"),
            "pipeline run": self.parent_id,
        }

    def _rescore(self, model_uri: str) -> dict:
        """The champion evaluated on this run's data (it was scored on other data)."""
        import mlflow

        folder = self.out / "register" / ("champion-" + model_uri.rsplit("/", 1)[-1])
        with mlflow.start_run(run_name=self._run_name("evaluate-champion"), nested=True, tags=source_tags()):
            mlflow.set_tags({"stage": "evaluate", "model": model_uri})
            checkpoint = resolve_model(model_uri)
            return run_evaluation(
                checkpoint, self.req.data, folder, config=self.cfg.evaluate, model_ref=model_uri
            )


def _run_exists(run_id: str | None) -> bool:
    if not run_id:
        return False
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False
