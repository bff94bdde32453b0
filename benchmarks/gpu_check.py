"""The GPU path, proven on the machine at hand: one JSON object, exit 0 when every check passed.

Without a CUDA GPU it prints ``{"gpu": false}`` and exits 0. With one or more:

1. the tiny preset end to end on GPU, as a user runs it: sample data -> synth -> Ray Train +
   DeepSpeed with ``train.use_gpu`` (NCCL, ``train.precision: auto``) -> evaluation by two actors
   sharing the GPUs (``evaluate.gpus_per_worker``) -> registry. The figures come from the run's
   own files (train_summary.json, metrics.json, run.json);
2. the demo-size model (EfficientNet-Lite0 + SmolLM2-135M) on ``cuda:0`` in the precision that
   ``auto`` picks there: the median wall time of a training step (forward + backward, micro-batch
   of 2 at 224 px) and of map + answer inference (a batch of 8, all-shot bank of 4 normals);
3. evidence that the work ran on CUDA: the device of the parameters, the batch and the loss, the
   actors' device, and the CUDA memory peak.

It needs only this project and its pinned dependencies: weights come from the installed packages,
nothing downloads. Written to finish in under 5 minutes on one GPU.

    python benchmarks/gpu_check.py [--keep DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

TINY = ROOT / "configs" / "tiny.yaml"
DEMO = ROOT / "configs" / "demo.yaml"
EVAL_WORKERS = 2


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="run folder to keep (default: a temporary one)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"gpu": False}))
        return 0
    report: dict[str, Any] = {"gpu": True, "devices": _devices(torch)}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = args.keep or Path(tmp)
        report["pipeline"] = _pipeline_on_gpu(folder, torch.cuda.device_count())
        report["demo_model"] = _demo_model_timings(folder / "run" / "synth", args.repeats)
    report["ok"] = report["pipeline"]["ok"] and report["demo_model"]["on_cuda"]
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


def _devices(torch) -> list[dict[str, Any]]:
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(
            {
                "index": i,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
                "bf16": torch.cuda.is_bf16_supported(),
            }
        )
    return out


def _pipeline_on_gpu(folder: Path, gpus: int) -> dict[str, Any]:
    """``python -m pipeline run`` on the tiny preset with GPU training and GPU evaluation actors."""
    from synth.demo_dataset import write_sample_dataset

    data = write_sample_dataset(folder / "data", size=64, n_train=6, n_test_good=4, n_per_defect=1)
    workers = 2 if gpus >= 2 else 1  # the tiny preset's global batch (4 = 2 x 2) splits over 1 or 2
    share = min(1.0, gpus / EVAL_WORKERS)
    command = [
        sys.executable, "-m", "pipeline", "run", "--config", str(TINY), "--data", str(data),
        "--out", str(folder / "run"), "--workers", str(workers),
        "--set", "train.use_gpu=true", "--set", "evaluate.use_gpu=true",
        "--set", f"evaluate.workers={EVAL_WORKERS}", "--set", f"evaluate.gpus_per_worker={share}",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    wall = time.perf_counter() - began
    result: dict[str, Any] = {"rc": proc.returncode, "wall_s": round(wall, 1), "train_workers": workers}
    if proc.returncode != 0:
        result.update(ok=False, output_tail=(proc.stdout + proc.stderr)[-4000:])
        return result
    run = folder / "run"
    summary = json.loads((run / "train" / "train_summary.json").read_text())
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    record = json.loads((run / "run.json").read_text())
    result.update(
        ok=summary["precision"] in ("bf16", "fp16"),
        train={k: summary[k] for k in ("steps", "precision", "zero_stage", "workers", "wall_time_s")},
        evaluate={
            "workers": EVAL_WORKERS,
            "gpus_per_worker": share,
            "devices": metrics.get("devices"),
            "image_auroc": metrics["mean"].get("image_auroc"),
            "pixel_auroc": metrics["mean"].get("pixel_auroc"),
        },
        registered=record.get("registry", {}).get("champion_version"),
    )
    result["ok"] = result["ok"] and all(str(d).startswith("cuda") for d in metrics.get("devices") or ["?"])
    return result


def _demo_model_timings(shards: Path, repeats: int) -> dict[str, Any]:
    """The demo-size model on cuda:0: a training step and map + answer inference, timed."""
    import torch

    from pipeline.pipeline_config import load_pipeline_config
    from train import ds_config
    from train.config import AugmentConfig
    from train.data import BatchSource
    from train.model import build_model
    from train.shard_reader import index_shards

    device = torch.device("cuda", 0)
    precision = ds_config.resolve_precision("auto", torch.cuda.is_bf16_supported())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    cfg = load_pipeline_config(DEMO)
    model = build_model(cfg.model, seed=0).to(device=device, dtype=dtype)
    source = BatchSource(
        index_shards(shards), [], image_size=cfg.model.image_size, micro=2, rank=0, world=1, seed=0,
        augment=AugmentConfig(enabled=False),
    )  # fmt: skip
    batch = source.anomaly(0)
    # On the GPU, in the training dtype; no sources: the few-shot path needs the reference pool.
    batch = replace(
        batch, images=batch.images.to(device, dtype), masks=batch.masks.to(device, dtype), sources=None
    )
    torch.cuda.reset_peak_memory_stats(device)

    def train_step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = model.training_losses(batch)["loss"]
        loss.backward()
        return loss

    loss = train_step()  # warm-up (kernels, allocator)
    step_s = _timed(train_step, repeats, torch)
    category = batch.categories[0]
    references = source.reference_images(4)[0][category].to(device, dtype)
    bank = model.build_memory_bank(references, category)
    queries = batch.images[:1].repeat(8, 1, 1, 1)
    predict = lambda: model.predict(queries, [category] * 8, memory_bank=bank)  # noqa: E731
    answers = predict()
    predict_s = _timed(predict, repeats, torch)
    on_cuda = {
        "parameters": str(next(model.parameters()).device),
        "batch": str(batch.images.device),
        "loss": str(loss.device),
        "bank": str(bank.features[0].device),
    }
    return {
        "precision": precision,
        "train_step_s": round(step_s, 4),
        "predict_batch_of_8_s": round(predict_s, 4),
        "answer_example": answers[0].answer,
        "cuda_peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
        "where": on_cuda,
        "on_cuda": all(v.startswith("cuda") for v in on_cuda.values()),
    }


def _timed(fn, repeats: int, torch) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, synchronised with the GPU."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        began = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
