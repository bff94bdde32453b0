"""Inspect a batch of unlabelled images: anomaly score, verdict, defect regions and (unless --no-llm)
the model's answer for each, on Ray Data (read and decode in tasks, one model per actor).

--images is a folder (every image under it), a glob ('/data/line3/*.png'), a text file of paths
(one per line), or an MVTec-style root (every category's test images). The category is --category,
else read from an MVTec-style path (<category>/test/<defect>/<file>), else 'object'.

The map is the memory bank's where normal images of the category are at hand: --references-dir
(DIR/<category>/train/good/ or DIR/<category>/), by default the dataset the model was trained on
when its registered version or run folder records it, plus the confirmed normals of --feedback (by
default, with the recorded dataset, those of the feedback folder the model was retrained with), in
the bank as cover: they match, but only the references set the boundary. Elsewhere it is the
decoder's map alone.

Writes to --out: results.jsonl (one line per image, appended as each is scored), results.parquet
(the same rows, with empty `feedback` and `feedback_note` columns to fill in for `pipeline
feedback`), summary.json, unreadable.jsonl (images that could not be read, with the reason) and
overlays/<category>/ (--overlays). A rerun skips every image already in the results with the same
content and appends the rest; a killed run loses nothing it wrote. The summary is printed and
logged to MLflow (a run with tag kind=inspect).

examples:
  python -m pipeline inspect --images runs/demo/data --out runs/inspect --no-llm
  python -m pipeline inspect --model runs/demo/train --images '/data/line3/2026-12-06/*.png' \\
      --category bottle --references-dir /data/bottle_normals --out /shared/inspect/line3 --workers 4
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.model_ref import add_model_arguments

if TYPE_CHECKING:
    from pipeline.batch.provenance import ModelOrigin

HELP = "score a folder of unlabelled images on Ray Data: scores, verdicts, regions, answers (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--images", required=True, metavar="SPEC", help="folder, glob, text file of paths or MVTec-style root"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="results folder (a rerun resumes it)")
    parser.add_argument(
        "--category",
        metavar="NAME",
        help="category of every image (default: from an MVTec-style path, else 'object')",
    )
    parser.add_argument(
        "--references-dir",
        metavar="DIR",
        help="normal images per category for the memory bank (default: the model's training data, "
        "when its registered version or run folder records it)",
    )
    parser.add_argument(
        "--no-references", action="store_true", help="no memory bank: the decoder's map alone"
    )
    parser.add_argument(
        "--feedback",
        metavar="DIR",
        help="a feedback folder (`pipeline feedback`): its confirmed normals join the memory bank as "
        "cover (default: the one the model was retrained with, when recorded)",
    )
    parser.add_argument(
        "--max-references",
        type=int,
        default=16,
        metavar="N",
        help="at most N reference images per category, evenly spaced in name order (default 16, as `ask`)",
    )
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="model actors (default 1)")
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="F",
        help="GPUs per actor (0.25: four share one; default 0)",
    )
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        metavar="N",
        help="torch threads of each actor (default: its share of the cluster's CPUs)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, metavar="N", help="images per model call (default 4)"
    )
    parser.add_argument(
        "--no-llm", action="store_true", help="map, score, verdict and regions only, no answers (much faster)"
    )
    parser.add_argument(
        "--overlays",
        choices=["anomalous", "all", "none"],
        default="anomalous",
        help="which images get an overlay PNG (default: the anomalous ones)",
    )
    parser.add_argument(
        "--bank-budget",
        type=int,
        metavar="N",
        help="patches per layer of each memory bank (default: the checkpoint's memory_bank.max_patches)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs, cron)")


def run(args: argparse.Namespace) -> int:
    import sys

    from pipeline.batch.job import InspectRequest, run_inspection
    from pipeline.batch.provenance import model_origin
    from pipeline.batch.sources import list_sources
    from pipeline.core.errors import InputError
    from pipeline.model_ref import resolve_checkpoint
    from train.model.checkpoint import verify_checkpoint

    for name, value, least in (
        ("--workers", args.workers, 1),
        ("--batch-size", args.batch_size, 1),
        ("--max-references", args.max_references, 1),
        ("--threads-per-worker", 1 if args.threads_per_worker is None else args.threads_per_worker, 1),
        ("--bank-budget", 1 if args.bank_budget is None else args.bank_budget, 1),
    ):
        if value < least:
            raise InputError(f"{name} must be at least {least}, got {value}")
    if args.gpus_per_worker < 0:
        raise InputError(f"--gpus-per-worker must not be negative, got {args.gpus_per_worker}")
    if args.references_dir and not Path(args.references_dir).is_dir():
        raise FileNotFoundError(f"--references-dir {args.references_dir}: no such folder")
    sources = list_sources(args.images, args.category)
    checkpoint = resolve_checkpoint(args.model, args.store)
    verify_checkpoint(checkpoint)
    origin = model_origin(args.model, checkpoint)
    roots = _reference_roots(args, origin)
    out = Path(args.out).expanduser().resolve()
    print(
        f"inspect: {len(sources)} image(s) with {origin.version}; references: "
        f"{', '.join(map(str, roots)) or 'none (the decoder map alone)'}",
        file=sys.stderr,
    )
    request = InspectRequest(
        checkpoint=checkpoint,
        model=args.model,
        model_version=origin.version,
        sources=sources,
        out=out,
        reference_roots=roots,
        max_references=args.max_references,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        batch_size=args.batch_size,
        threads_per_worker=args.threads_per_worker,
        generate=not args.no_llm,
        overlays=args.overlays,
        progress=not args.no_progress,
        bank_budget=args.bank_budget,
    )
    try:
        summary = run_inspection(request)
    finally:
        _stop_ray()
    _print_summary(summary, out)
    _log(summary, origin, out, args)
    return 0


def _stop_ray() -> None:
    """Disconnect (a local Ray stops with it) before the interpreter exits: Ray otherwise kills the
    pool's actors while its own processes are going away and logs a failed kill."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _reference_roots(args: argparse.Namespace, origin: ModelOrigin) -> list[Path]:
    """The references (``--references-dir``, else the dataset the model was trained on), then the
    confirmed normals (``--feedback``, else, with the recorded dataset, the feedback folder the
    model was retrained with: that dataset links its normals in, and they stay cover)."""
    from pipeline.batch.provenance import recorded_cover

    if args.no_references:
        return []
    references = None
    if args.references_dir:
        references = Path(args.references_dir).resolve()
    elif origin.data_root and Path(origin.data_root).is_dir():
        references = Path(origin.data_root).resolve()
    cover = Path(args.feedback).resolve() if args.feedback else recorded_cover(origin, references)
    return [root for root in (references, cover) if root is not None]


def _print_summary(summary: dict, out) -> None:
    run = summary["this_run"]
    rate = f", {run['images_per_s']:.2f} images/s" if run["images_per_s"] else ""
    print(
        f"scored {run['scored']} image(s) in {run['wall_time_s']:.1f} s{rate}; skipped {run['skipped']} "
        f"already inspected; {run['unreadable']} unreadable"
    )
    share = summary["anomalous_share"]
    print(
        f"results: {summary['images']} image(s), {summary['anomalous']} anomalous"
        + (f" ({100 * share:.1f} %)" if share is not None else "")
    )
    for category, counts in summary["per_category"].items():
        print(f"  {category}: {counts['anomalous']} of {counts['images']} anomalous")
    hist = summary["score_histogram"]
    print(
        "  scores: "
        + "  ".join(f"{lo:.1f}+ {n}" for lo, n in zip(hist["edges"], hist["counts"], strict=False))
    )
    if run["unreadable"]:
        print(f"unreadable images, with the reason: {out / 'unreadable.jsonl'}")
    print(f"written: {out / 'results.parquet'}, {out / 'results.jsonl'}, {out / 'overlays'}")


def _log(summary: dict, origin, out, args: argparse.Namespace) -> None:
    """MLflow: the store that resolved a models:/ URI, else MLFLOW_TRACKING_URI or --store's."""
    import os
    import sys

    import mlflow

    from pipeline.batch.tracking import log_inspection

    if not args.model.startswith("models:/") and not os.environ.get("MLFLOW_TRACKING_URI"):
        db = Path(args.store).expanduser().resolve() / "mlflow.db"
        if not db.is_file():
            print(
                f"MLflow: not logged (no store at {db}; set MLFLOW_TRACKING_URI or --store)", file=sys.stderr
            )
            return
        mlflow.set_tracking_uri(f"sqlite:///{db}")
    run_id = log_inspection(summary, origin, out)
    print(f"MLflow: inspect run {run_id} in {mlflow.get_tracking_uri()}", file=sys.stderr)
