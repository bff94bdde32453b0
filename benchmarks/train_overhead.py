"""Training throughput: Ray Train + DeepSpeed against a plain single-process torch loop.

Same model (the preset's), same shards (synth output of the sample data), same global batch and
gradient accumulation, same optimizer and clipping. samples/s is measured per optimizer step after
--skip warm-up steps (total samples / total step time), so start-up is excluded and reported
separately: Ray start, worker start, model build and DeepSpeed setup are one-off costs.

    python benchmarks/train_overhead.py [--preset tiny|demo] [--steps 30] [--global-batch 8]

Goal: Ray Train + DeepSpeed with 1 worker reaches >= 0.85 of the plain loop. The 2-worker figure
on a 2-core machine shows how the same global batch splits over workers (each then runs 1 torch
thread). On a shared machine the figures are noisy; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=["tiny", "demo"])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of samples/s")
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--workers", default="1,2", help="Ray Train worker counts to time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from pipeline.core.runtime import configure_environment, init_ray

    configure_environment()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        tmp = Path(tmp)
        cfg = _config(args)
        init_ray()
        shards = _shards(cfg, tmp)
        result = {
            "preset": args.preset,
            "steps": args.steps,
            "measured_steps": args.steps - args.skip,
            "global_batch_size": args.global_batch,
            "micro_batch_size": args.micro_batch,
            "zero_stage": 2,
            "precision": "fp32",
            "cpus": os.cpu_count(),
        }
        plain = plain_loop(cfg, shards, args.skip)
        result["plain_torch_samples_per_s"] = round(plain, 2)
        for n in (int(w) for w in args.workers.split(",")):
            rate, startup = ray_deepspeed(cfg, shards, tmp / f"out{n}", n, args.skip)
            result[f"ray_deepspeed_{n}_worker_samples_per_s"] = round(rate, 2)
            result[f"ray_deepspeed_{n}_worker_setup_and_io_s"] = round(startup, 1)
        one = result.get("ray_deepspeed_1_worker_samples_per_s")
        if one:
            result["ratio_1_worker_vs_plain"] = round(one / plain, 3)
            two = result.get("ray_deepspeed_2_worker_samples_per_s")
            if two:
                result["speedup_1_to_2_workers"] = round(two / one, 3)
    result["load_average_1m"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=1))


def _config(args):
    from pipeline.core.config import apply_overrides, from_dict, to_dict
    from pipeline.pipeline_config import PipelineConfig, load_pipeline_config

    base = to_dict(load_pipeline_config(ROOT / "configs" / f"{args.preset}.yaml"))
    overrides = [
        f"train.max_steps={args.steps}",
        f"train.global_batch_size={args.global_batch}",
        f"train.micro_batch_size={args.micro_batch}",
        f"train.checkpoint_every={args.steps}",
        "train.instruction_fraction=0",
        "train.cpus_per_worker=1",  # 1 torch thread per worker, as the plain loop
        "train.deepspeed={zero_optimization: {stage: 2}, gradient_clipping: 1.0}",
    ]
    return from_dict(PipelineConfig, apply_overrides(base, overrides))


def _shards(cfg, tmp: Path) -> Path:
    from synth.demo_dataset import write_sample_dataset
    from synth.job import run_synth

    data = write_sample_dataset(
        tmp / "data", seed=0, size=cfg.synth.size, n_train=6, n_test_good=1, n_per_defect=1
    )
    run_synth(cfg.synth, data, tmp / "shards", seed=0, progress=False)
    return tmp / "shards"


def plain_loop(cfg, shards: Path, skip: int) -> float:
    """The same steps with plain torch in this process: AdamW, accumulation, clipping, schedule."""
    import torch

    from train.data import BatchSource
    from train.model import build_model
    from train.schedule import WarmupDecay
    from train.shard_reader import index_shards

    t, o = cfg.train, cfg.train.optimizer
    torch.set_num_threads(max(1, int(t.cpus_per_worker)))  # what a Ray Train worker gets
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupDecay(t.schedule, t.max_steps))
    source = BatchSource(
        index_shards(shards), [], image_size=cfg.model.image_size, micro=t.micro_batch_size,
        rank=0, world=1, seed=cfg.seed, augment=t.augment,
    )  # fmt: skip
    accumulation = t.accumulation_steps(1)
    model.train()
    times = []
    for step in range(t.max_steps):
        began = time.perf_counter()
        for k in range(accumulation):
            loss = model.training_losses(source.anomaly(step * accumulation + k))["loss"]
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
    return t.global_batch_size * len(times[skip:]) / sum(times[skip:])


def ray_deepspeed(cfg, shards: Path, out: Path, workers: int, skip: int) -> tuple[float, float]:
    """samples/s of the steps after ``skip`` (from the per-step MLflow metric) and the start-up time."""
    from mlflow import MlflowClient

    from train.job import run_training

    began = time.perf_counter()
    summary = run_training(cfg.train_job(), shards, out, workers=workers)
    wall = time.perf_counter() - began
    history = MlflowClient(summary["mlflow_tracking_uri"]).get_metric_history(
        summary["mlflow_run_id"], "samples_per_s"
    )
    rates = [m.value for m in sorted(history, key=lambda m: m.step)][skip:]
    step_time = sum(cfg.train.global_batch_size / r for r in rates)
    all_steps = sum(cfg.train.global_batch_size / m.value for m in history)
    return cfg.train.global_batch_size * len(rates) / step_time, wall - all_steps


if __name__ == "__main__":
    main()
