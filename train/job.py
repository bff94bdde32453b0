"""The train job: check everything, run Ray Train's TorchTrainer over the shards, write the outputs.

Three steps, as a recipe: ``prepare`` (all input checks, before any worker starts), ``fit`` (Ray
Train + DeepSpeed, resuming from the latest checkpoint of the same ``--out``) and ``finish``
(``model.safetensors``, ``config.yaml``, ``train_summary.json`` and the MLflow run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.core.config import ConfigError, dump_yaml, to_dict, without_later_defaults
from pipeline.core.files import file_sha256, json_sha256
from pipeline.core.runtime import configure_environment, init_ray, library_log_level, require_gpus, worker_env
from train import ds_config, tracking
from train.config import TrainConfig, TrainJobConfig
from train.context import WorkerContext
from train.instruct import InstructionSample, read_instruction_set, resolve
from train.loop import STATE, train_loop
from train.model.checkpoint import CONFIG, WEIGHTS
from train.schedule import total_steps
from train.shard_reader import ShardIndex, index_shards, shard_hashes

log = logging.getLogger(__name__)

SUMMARY = "train_summary.json"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train 2.60's record of registered checkpoints


@dataclass
class PreparedRun:
    """One training run as :func:`prepare` checked it: inputs, settings and the checkpoint to resume."""

    cfg: TrainJobConfig
    out: Path
    workers: int
    index: ShardIndex
    instructions: list[InstructionSample]
    fraction: float
    deepspeed: dict[str, Any]
    total_steps: int
    storage: str
    name: str
    fingerprint: str
    previous: dict[str, Any] | None
    """train_state.json of the latest checkpoint of this run, if any (a rerun resumes from it)."""
    previous_dir: Path | None = None


def run_training(
    config: TrainJobConfig,
    shards: str | Path,
    out: str | Path,
    instruct: str | Path | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Train ``config`` on the shards with ``workers`` Ray Train workers; returns the summary."""
    started = time.perf_counter()
    prepared = prepare(config, shards, out, instruct, workers)
    if prepared.cfg.train.use_gpu:  # before the MLflow run: Ray Train would wait for GPUs, then retry
        init_ray()
        require_gpus(workers, f"train.use_gpu with --workers {workers} (one GPU per worker)")
    run_id, uri = tracking.open_run(
        prepared.out,
        prepared.cfg.name,
        run_record(prepared.cfg),
        (prepared.previous or {}).get("mlflow_run_id"),
        {
            "workers": prepared.workers,
            "total_steps": prepared.total_steps,
            "accumulation_steps": prepared.deepspeed["gradient_accumulation_steps"],
            "instruction_fraction": prepared.fraction,
            "anomaly_samples": len(prepared.index),
            "categories": ",".join(prepared.index.categories()),
            "instruction_samples": len(prepared.instructions),
        },
    )
    try:
        if prepared.previous and prepared.previous["step"] >= prepared.total_steps:
            log.info(
                "train: %s already finished (%d steps); writing its outputs",
                prepared.out,
                prepared.total_steps,
            )
            checkpoint_dir = prepared.previous_dir
        else:
            checkpoint_dir = fit(prepared, run_id, uri)
        summary = finish(prepared, checkpoint_dir, run_id, uri, time.perf_counter() - started)
    except BaseException:
        tracking.fail_run(uri, run_id)
        raise
    return summary


def run_record(cfg: TrainJobConfig) -> dict[str, Any]:
    """The config a run records (``pipeline_config.yaml``, MLflow params, resume fingerprint): the
    caller's whole config, with this job's own name, seed, model and train in it (a fresh copy)."""
    record = to_dict(cfg.run_config)
    record.update(name=cfg.name, seed=cfg.seed, model=to_dict(cfg.model), train=to_dict(cfg.train))
    return record


def prepare(
    cfg: TrainJobConfig, shards: str | Path, out: str | Path, instruct: str | Path | None, workers: int
) -> PreparedRun:
    """Every check that can fail on bad input, before a worker starts."""
    configure_environment()
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    out = Path(out).expanduser().resolve()
    index = index_shards(shards)
    instructions: list[InstructionSample] = []
    fraction = cfg.train.instruction_fraction
    if instruct is not None and not cfg.model.use_llm:
        log.warning("train: model.use_llm is false: instruction data has nothing to train; ignoring it")
        fraction = 0.0
    elif instruct is not None:
        instructions = read_instruction_set(instruct, cfg.train.instruction_turns)
    elif fraction > 0:
        log.warning(
            "train: no instruction data (--instruct): training on anomaly data only. The reference "
            "alternates with PandaGPT's instruction data to keep the LLM's general answers."
        )
        fraction = 0.0
    if cfg.model.few_shot_train_prob > 0:
        normals = index.normals_by_category()
        lacking = sorted(c for c in index.categories() if len(normals.get(c, [])) < 2)
        if lacking:
            log.warning(
                "train: few-shot training needs 2 normal images per category (one to hold out); "
                "%s train on the decoder map only",
                ", ".join(lacking),
            )
    deepspeed = ds_config.build(cfg.train, workers)
    ds_config.check_with_deepspeed(deepspeed)
    total = total_steps(replace(cfg.train, instruction_fraction=fraction), len(index))
    storage = cfg.train.storage(out)
    name = f"{cfg.name}-{hashlib.sha1(str(out).encode()).hexdigest()[:10]}"
    fingerprint = _fingerprint(cfg, shards, instruct, workers, fraction)
    previous, previous_dir = latest_checkpoint(storage, name)
    if previous and previous.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{Path(storage) / name} holds checkpoints of a different run (config, data, instruction set "
            f"or worker count changed). Use another --out, or delete that folder to start over."
        )
    if os.environ.get("RAY_ADDRESS") not in (None, "", "local"):
        if cfg.train.storage_path is None:
            log.warning("train: on a cluster, checkpoints go to %s; every node must reach it", storage)
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            log.warning("train: on a cluster, set MLFLOW_TRACKING_URI to a server rank 0 can reach")
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"train: {len(index)} anomaly samples, {len(instructions)} instruction samples, {total} steps of "
        f"{cfg.train.global_batch_size} samples on {workers} worker(s) "
        f"(accumulation {deepspeed['gradient_accumulation_steps']}, {_precision_text(cfg.train)}, "
        f"ZeRO {deepspeed['zero_optimization'].get('stage', 0)})"
        + (f"; resuming at step {previous['step']}" if previous else ""),
        flush=True,
    )
    return PreparedRun(
        cfg, out, workers, index, instructions, fraction, deepspeed, total, storage, name, fingerprint,
        previous, previous_dir,
    )  # fmt: skip


def fit(prepared: PreparedRun, run_id: str, uri: str) -> Path:
    """Run the workers; returns the final checkpoint folder."""
    import ray.train
    from ray.train.torch import TorchTrainer

    init_ray()
    t = prepared.cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}
    ctx = WorkerContext(
        config=prepared.cfg,
        deepspeed=prepared.deepspeed,
        index=prepared.index,
        instructions=prepared.instructions,
        fraction=prepared.fraction,
        total_steps=prepared.total_steps,
        accumulation=prepared.deepspeed["gradient_accumulation_steps"],
        offload_optimizer=ds_config.offloads_optimizer(prepared.deepspeed),
        precision=ds_config.driver_precision(t),
        fingerprint=prepared.fingerprint,
        mlflow_run_id=run_id,
        mlflow_uri=uri,
    )
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"context": ctx},  # Ray Train passes a dict to the loop
        scaling_config=ray.train.ScalingConfig(
            num_workers=prepared.workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=prepared.name,
            storage_path=prepared.storage,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            # Ray Train's own INFO lines (its controller's, each worker's checkpoint line) only when
            # verbose; worker_env: the driver's verbosity in the workers, on a cluster too
            logging_config=ray.train.LoggingConfig(log_level=logging.getLevelName(library_log_level())),
            worker_runtime_env={"env_vars": worker_env()},
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint in {prepared.storage}/{prepared.name}")
    return Path(result.checkpoint.path)


def _precision_text(train: TrainConfig) -> str:
    driver_choice = ds_config.driver_precision(train)
    return "bf16 or fp16 (auto, chosen on the GPUs)" if driver_choice == "auto" else driver_choice


def finish(prepared: PreparedRun, checkpoint_dir: Path, run_id: str, uri: str, wall: float) -> dict[str, Any]:
    """Copy the final weights and config to ``out``, write the summary, close the MLflow run."""
    state = json.loads((checkpoint_dir / STATE).read_text())
    for name in (WEIGHTS, CONFIG):
        shutil.copy2(checkpoint_dir / name, prepared.out / name)
    dump_yaml(run_record(prepared.cfg), prepared.out / "pipeline_config.yaml")
    (prepared.out / "deepspeed.json").write_text(json.dumps(prepared.deepspeed, indent=1))
    summary = {
        "steps": state["step"],
        "samples": state["samples"],
        "wall_time_s": round(wall, 2),
        "workers": prepared.workers,
        "global_batch_size": prepared.cfg.train.global_batch_size,
        "accumulation_steps": prepared.deepspeed["gradient_accumulation_steps"],
        "precision": state.get("precision", ds_config.driver_precision(prepared.cfg.train)),
        "zero_stage": prepared.deepspeed["zero_optimization"].get("stage", 0),
        "instruction_fraction": prepared.fraction,
        "anomaly_samples": len(prepared.index),
        "categories": sorted(prepared.index.categories()),
        "instruction_samples": len(prepared.instructions),
        "resumed_from_step": state["started_at_step"],
        "final_losses": state["metrics"],
        "mlflow_run_id": run_id,
        "mlflow_tracking_uri": uri,
        "checkpoint": str(checkpoint_dir),
    }
    (prepared.out / SUMMARY).write_text(json.dumps(summary, indent=1))
    files = (WEIGHTS, CONFIG, "pipeline_config.yaml", "deepspeed.json", SUMMARY)
    tracking.close_run(uri, run_id, [prepared.out / name for name in files])
    loss = state["metrics"].get("loss", float("nan"))
    print(f"train: {summary['steps']} steps, final loss {loss:.4f} -> {prepared.out}")
    return summary


def latest_checkpoint(storage: str, name: str) -> tuple[dict[str, Any] | None, Path | None]:
    """State and folder of the run's latest checkpoint that Ray Train registered (None if none yet).

    Read from Ray Train's own snapshot, the record it restores from: a checkpoint folder can exist
    on disk before every rank has uploaded its part, and such a folder must not count.
    """
    if "://" in storage:  # remote storage: Ray restores by itself; nothing to check up front
        return None, None
    run = Path(storage) / name
    snapshot = run / RAY_SNAPSHOT
    if not snapshot.is_file():
        return None, None
    latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    if not latest:
        return None, None
    folder = run / latest["checkpoint_dir_name"]
    return json.loads((folder / STATE).read_text()), folder


def _fingerprint(cfg: TrainJobConfig, shards, instruct, workers: int, fraction: float) -> str:
    """What a checkpoint must match to be resumed: the run's config (its train section as
    ``TrainConfig.identity()``: less what may change on a resume; keys added later at their
    defaults left out), data, workers."""
    config = without_later_defaults({**run_record(cfg), "train": cfg.train.identity()})
    identity = {
        "config": config,
        "workers": workers,
        "fraction": fraction,
        "shards": shard_hashes(shards),
        "instructions": file_sha256(resolve(instruct)[0]) if instruct else None,
    }
    return json_sha256(identity)[:16]
