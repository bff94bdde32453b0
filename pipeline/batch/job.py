"""``inspect`` as a Ray Data pipeline: list -> read and decode (tasks) -> score (an actor pool, one
Predictor each) -> rows appended to the results as they arrive.

The driver only lists, writes and counts; images never pass through it. The same code runs on a
local Ray and under ``ray job submit`` (RAY_ADDRESS): the actors write overlays and the driver the
results into ``out``, which must then be on storage every node sees.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.batch.results import ResultsLog, summarise, write_summary, write_unreadable
from pipeline.batch.scoring import BatchScorer, read_images
from pipeline.batch.sources import Source
from pipeline.core.runtime import init_ray, require_gpus, verbose, worker_env

log = logging.getLogger(__name__)

READ_CPUS = 0.25
"""Ray CPUs of one read task: decoding is light next to scoring, and the actors must leave room."""


@dataclass
class InspectRequest:
    checkpoint: Path
    model: str
    """What the user named (a folder or a models:/ URI), recorded in every row."""
    model_version: str
    sources: list[Source]
    out: Path
    reference_roots: list[Path] = field(default_factory=list)
    """Folders of normal images per category (the user's references, then confirmed normals)."""
    max_references: int | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    batch_size: int = 4
    threads_per_worker: int | None = None
    """Torch threads of each actor; None: its share of the cluster's CPUs (all of them for one)."""
    generate: bool = True
    overlays: str = "anomalous"
    progress: bool = True
    bank_budget: int | None = None
    """Patches per layer of each memory bank; None: the checkpoint's ``memory_bank.max_patches``."""


def run_inspection(req: InspectRequest) -> dict[str, Any]:
    """Score every image of ``req.sources`` not already in ``req.out``'s results; returns the summary
    of all rows there (this run's and earlier ones')."""
    import ray

    from train.model.checkpoint import checkpoint_config

    size = int(checkpoint_config(req.checkpoint).image_size)
    results = ResultsLog(req.out)
    done = results.done()
    expected = sum(1 for s in req.sources if s.path not in done)
    skipping = len(req.sources) - expected
    if skipping:
        log.info("inspect: %d image(s) already in %s are skipped when unchanged", skipping, results.path)
    init_ray()
    if req.gpus_per_worker:
        require_gpus(req.workers * req.gpus_per_worker, f"inspect with {req.workers} worker(s)")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose()  # ours below counts images, theirs blocks
    context.print_on_execution_start = verbose()
    if not verbose():  # its start/finish lines and the note that its bars are off
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    cpus = _actor_cpus(float(ray.cluster_resources().get("CPU", 1.0)), req.workers)
    options = {
        "device": "cuda" if req.gpus_per_worker else "cpu",
        "threads": req.threads_per_worker or max(1, round(cpus)),
        "generate": req.generate,
        "reference_roots": [str(p) for p in req.reference_roots],
        "max_references": req.max_references,
        "overlays": req.overlays,
        "bank_budget": req.bank_budget,
        "out": str(req.out),
        "model": req.model,
        "model_version": req.model_version,
    }
    items = [{"path": s.path, "category": s.category} for s in req.sources]
    dataset = (
        ray.data.from_items(items)
        .map_batches(
            read_images,
            fn_kwargs={"size": size, "done": done},
            batch_size=req.batch_size,
            num_cpus=READ_CPUS,
            runtime_env={"env_vars": worker_env()},
        )
        .map_batches(
            BatchScorer,
            fn_constructor_args=(str(req.checkpoint), options),
            batch_size=req.batch_size,
            compute=ray.data.ActorPoolStrategy(size=req.workers),
            num_cpus=cpus,
            num_gpus=req.gpus_per_worker,
            runtime_env={"env_vars": worker_env()},
        )
    )
    unreadable: list[dict[str, str]] = []
    started = time.perf_counter()
    scored = 0
    arrivals: list[tuple[float, int]] = []  # (when, rows): the steady rate leaves out start-up
    try:
        with _progress(expected, req.progress) as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                rows = [json.loads(text) for text in batch["row"]]
                good = [r for r in rows if "error" not in r]
                unreadable += [{"path": r["path"], "reason": r["error"]} for r in rows if "error" in r]
                results.append(good)
                scored += len(good)
                arrivals.append((time.perf_counter(), len(rows)))
                bar.update(len(rows))
    finally:
        results.close()
        results.write_table()
        write_unreadable(req.out, unreadable)
    took = time.perf_counter() - started
    summary = summarise(results.rows, len(unreadable))
    summary.update(
        this_run={
            "scored": scored,
            "skipped": skipping,
            "unreadable": len(unreadable),
            "wall_time_s": round(took, 2),
            "images_per_s": round(scored / took, 3) if took > 0 else None,
            "steady_images_per_s": _steady_rate(arrivals),
        },
        model=req.model,
        model_version=req.model_version,
        out=str(req.out),
        workers=req.workers,
    )
    write_summary(req.out, summary)
    for note in summary["notes"]:
        log.warning("inspect: %s", note)
    return summary


def _steady_rate(arrivals: list[tuple[float, int]]) -> float | None:
    """Images per second from the first batch's arrival to the last's: the pipeline's rate once every
    actor has loaded its model and built its first bank (None with fewer than two batches)."""
    if len(arrivals) < 2 or arrivals[-1][0] <= arrivals[0][0]:
        return None
    rows = sum(n for _, n in arrivals[1:])
    return round(rows / (arrivals[-1][0] - arrivals[0][0]), 3)


def _actor_cpus(cluster_cpus: float, workers: int) -> float:
    """Ray CPUs per scoring actor: the cluster's share, less room for a read task to run beside."""
    return max(READ_CPUS, (cluster_cpus - READ_CPUS) / workers)


def _progress(total: int, show: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="inspect", disable=not show, dynamic_ncols=True)
