"""The per-worker training function that Ray Train runs on every rank: setup, train, checkpoint.

torch, deepspeed and ray are imported inside the functions: ``train.job`` imports this module on the
driver, which must not pay for them before its input checks.

One optimizer step = ``accumulation`` micro-steps on this rank; each micro-step is an anomaly or an
instruction micro-batch (``train.schedule.is_instruction_step``). DeepSpeed owns the optimizer step,
gradient accumulation, ZeRO partitioning, clipping and mixed precision.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pipeline.core.runtime import configure_environment, quiet_train_worker
from train import ds_config
from train.config import TrainJobConfig
from train.context import WorkerContext
from train.data import BatchSource
from train.model.checkpoint import save_checkpoint
from train.schedule import WarmupDecay, micro_step_kind, parameter_groups
from train.tracking import MetricLogger

log = logging.getLogger(__name__)

DS_TAG = "ds"
STATE = "train_state.json"
LOSS_TERMS = ("loss", "ce", "focal", "dice")
"""The loss terms the model returns and each step averages (``loss`` is their weighted sum)."""


def train_loop(config: dict[str, WorkerContext]) -> None:
    """Entry point of each Ray Train worker; ``config["context"]`` is built by ``train.job.fit``."""
    ctx = config["context"]
    cfg = ctx.config
    if cfg.train.use_gpu:  # before deepspeed is imported: the local default is cpu
        os.environ["DS_ACCELERATOR"] = "cuda"
    configure_environment()
    quiet_train_worker()
    import ray.train
    import torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if not cfg.train.use_gpu:  # use what Ray reserved: more threads than CPUs thrash on a busy node
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    source = _batches(cfg, ctx, rank, world)
    engine, model, precision = _setup(cfg, ctx, source)
    start = _restore(engine)
    logger = MetricLogger(ctx.mlflow_uri, ctx.mlflow_run_id, ctx.total_steps) if rank == 0 else None
    total = ctx.total_steps
    if rank == 0:
        log.info("train: %s", start_line(engine.device, precision, ctx, world, cfg.train.global_batch_size))
        how = "resuming at" if start else "starting"
        log.info("train: %s step %d/%d on %d worker(s)", how, start, total, world)
    ctx = replace(ctx, precision=precision)
    window: dict[str, list[float]] = {}
    for step in range(start, total):
        metrics = _train_step(engine, source, step, ctx, world, cfg.train.global_batch_size)
        for key, value in metrics.items():
            window.setdefault(key, []).append(value)
        done = step + 1
        if logger and (done % cfg.train.log_every == 0 or done == total):
            logger.log(metrics, done, total)
        if done % cfg.train.checkpoint_every == 0 or done == total:
            summary = {k: sum(v) / len(v) for k, v in window.items()}
            _save(engine, model, cfg, ctx, done, summary, start, rank)
            window = {}
    if logger:
        logger.close()


def _train_step(
    engine, source, step: int, ctx: WorkerContext, world: int, global_batch: int
) -> dict[str, float]:
    """One optimizer step: ``accumulation`` micro-steps, each an anomaly or an instruction batch."""
    import torch

    began = time.perf_counter()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(ctx.precision, torch.float32)
    # Loss terms per kind, then counts; on the engine's device: NCCL reduces only CUDA tensors.
    sums = torch.zeros(2 * len(LOSS_TERMS) + 2, dtype=torch.float64, device=engine.device)
    for k in range(ctx.accumulation):
        instruction, j = micro_step_kind(step * ctx.accumulation + k, ctx.fraction)
        batch = _to(source.instruction(j) if instruction else source.anomaly(j), engine.device, dtype)
        losses = engine(batch)
        engine.backward(losses["loss"])
        engine.step()  # DeepSpeed steps the optimizer and the LR schedule at the last micro-step
        offset = len(LOSS_TERMS) if instruction else 0
        # Added on the device: a float() per term would wait for the GPU at every micro-step.
        terms = torch.stack([losses[name].detach().reshape(()) for name in LOSS_TERMS])
        sums[offset : offset + len(LOSS_TERMS)] += terms.to(sums)
        sums[2 * len(LOSS_TERMS) + int(instruction)] += 1
    return _step_metrics(sums, world, engine, global_batch, time.perf_counter() - began)


def _setup(cfg: TrainJobConfig, ctx: WorkerContext, source: BatchSource):
    import deepspeed
    import torch

    from train.model.build import build_model  # imports torch and transformers
    from train.pool_sharing import build_shared_pool  # torch.distributed: in the worker, not the driver

    # DeepSpeed JIT-compiles its shm all-reduce op (60-80 s) when it creates the comm backend, though
    # only inference uses it. `deepspeed.comm.torch` as an attribute path is the torch package, so
    # the module is taken from importlib.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    precision = _decide_precision(ctx.precision)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, seed=cfg.seed)
    if cfg.model.few_shot_train_prob > 0 and model.prompt_learner is not None and model.decoder is not None:
        began = time.perf_counter()
        images, sources = source.reference_images(cfg.model.few_shot_train_pool)
        model.reference_pool = build_shared_pool(model, images, sources, source.rank, source.world)
        if source.rank == 0:
            log.info("train: few-shot reference pool encoded in %.1f s", time.perf_counter() - began)
    o = cfg.train.optimizer
    params = parameter_groups(model, o)
    if ctx.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # JIT-builds cpu_adam once (~95 s)

        optimizer = DeepSpeedCPUAdam(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    else:  # a torch optimizer: nothing to compile
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    schedule = WarmupDecay(cfg.train.schedule, ctx.total_steps)
    engine, *_ = deepspeed.initialize(
        model=model,  # its forward() is training_losses()
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=ds_config.with_precision(ctx.deepspeed, precision),
    )
    return engine, model, precision


def _decide_precision(driver_choice: str) -> str:
    """``auto`` on GPUs: bf16 if every worker's GPU supports it, else fp16 (one MIN all-reduce,
    so that all ranks train in one dtype)."""
    if driver_choice != "auto":
        return driver_choice
    import ray.train.torch
    import torch

    from train.collectives import all_ranks_agree  # imports torch

    device = ray.train.torch.get_device()
    supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return ds_config.resolve_precision(driver_choice, all_ranks_agree(supported, device))


def start_line(device, precision: str, ctx: WorkerContext, world: int, global_batch: int) -> str:
    """What a reader of the log needs first: where and how the run trains."""
    import torch

    name = torch.cuda.get_device_name(device) if getattr(device, "type", "") == "cuda" else None
    ds = ctx.deepspeed
    zero = ds.get("zero_optimization", {}).get("stage", 0)
    offload = ", optimizer offloaded to CPU" if ctx.offload_optimizer else ""
    return (
        f"device {device}{f' ({name})' if name else ''}, {precision}, ZeRO {zero}{offload}, "
        f"world {world}, global batch {global_batch} (micro {ds['train_micro_batch_size_per_gpu']}"
        f" x accumulation {ctx.accumulation} x {world} worker(s))"
    )


def _restore(engine) -> int:
    """Load the latest reported checkpoint (after a worker failure or a rerun); returns its step."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        path, _ = engine.load_checkpoint(d, tag=DS_TAG, load_module_strict=False)
        if path is None:
            raise RuntimeError(f"checkpoint {d} holds no DeepSpeed state under {DS_TAG}/")
        return int(json.loads((Path(d) / STATE).read_text())["step"])


def _batches(cfg: TrainJobConfig, ctx: WorkerContext, rank: int, world: int) -> BatchSource:
    return BatchSource(
        ctx.index,
        ctx.instructions,
        image_size=cfg.model.image_size,
        micro=cfg.train.micro_batch_size,
        rank=rank,
        world=world,
        seed=cfg.seed,
        augment=cfg.train.augment,
    )


def _to(batch, device, dtype):
    def move(t):
        return None if t is None else t.to(device=device, dtype=dtype, non_blocking=True)

    return replace(batch, images=move(batch.images), masks=move(batch.masks))


def _step_metrics(sums, world: int, engine, global_batch: int, seconds: float) -> dict[str, float]:
    """Loss terms averaged over micro-steps and ranks (one small all-reduce), lr and throughput."""
    from train.collectives import all_reduce_sum  # imports torch

    if world > 1:
        all_reduce_sum(sums, engine.device, "the step's loss sums")
    sums = sums.cpu()
    n = len(LOSS_TERMS)
    counts = sums[2 * n :]
    metrics: dict[str, float] = {}
    for offset, kind, count in ((0, "anomaly", counts[0]), (n, "instruction", counts[1])):
        if count > 0:
            for i, name in enumerate(LOSS_TERMS):
                if kind == "instruction" and name in ("focal", "dice"):
                    continue  # no masks: always 0
                metrics[f"{kind}/{name}"] = float(sums[offset + i] / count)
    total_count = counts.sum()
    metrics["loss"] = float((sums[0] + sums[n]) / total_count)
    metrics["lr"] = float(engine.get_lr()[0])
    metrics["samples_per_s"] = global_batch / seconds
    return metrics


def _save(
    engine,
    model,
    cfg: TrainJobConfig,
    ctx: WorkerContext,
    step: int,
    summary: dict[str, float],
    start: int,
    rank: int,
) -> None:
    """Every rank writes its DeepSpeed shard; rank 0 adds the weights, config and state; Ray merges."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="ckpt-") as d:
        engine.save_checkpoint(d, tag=DS_TAG, exclude_frozen_parameters=True)
        if rank == 0:
            if model.reference_pool is not None:  # the decoder moved: measure its one-shot calibration again
                cfg.model.memory_bank.one_shot = model.reference_pool.one_shot_calibrations(model)
            save_checkpoint(model, cfg.model, d)
            state = {
                "step": step,
                "total_steps": ctx.total_steps,
                "samples": step * cfg.train.global_batch_size,
                "fingerprint": ctx.fingerprint,
                "mlflow_run_id": ctx.mlflow_run_id,
                "started_at_step": start,
                "precision": ctx.precision,
                "metrics": summary,
            }
            (Path(d) / STATE).write_text(json.dumps(state, indent=1))
        ray.train.report(
            {"step": step, "started_at_step": start, **summary}, checkpoint=Checkpoint.from_directory(d)
        )
