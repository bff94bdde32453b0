"""The evaluate job: read the data on the driver, score on Ray actors, merge, report.

Recipe: ``read`` (read and check the data; nothing starts before it passes), ``start actors``
(each loads the model once), then per category ``bank`` (k-shot: built once by one actor, put in
the object store, shared by all), ``score`` (fixed batches spread over the actors; rows come back,
pixel histograms stay in the actors), ``merge`` (histograms gathered and added), and ``report``.

Batches are cut the same way whatever the number of actors and every actor runs the same number of
torch threads, so each image gets the same bits and the metrics of 1 and N workers are identical
(the histograms hold integers, so merging order does not matter either).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from evaluate import report
from evaluate.config import EvaluateConfig
from evaluate.data import (
    CategoryTestSet,
    EvalItem,
    EvaluationDataError,
    read_evaluation_set,
    trained_categories,
)
from evaluate.worker import EvalWorker
from pipeline.core.runtime import init_ray, require_gpus, worker_env
from synth.text import question_for
from train.model.checkpoint import checkpoint_config, verify_checkpoint

log = logging.getLogger(__name__)

_ACTOR_START_TIMEOUT_S = 900  # a demo model converts its LLM on first load (~40 s); a cluster may queue


def run_evaluation(
    checkpoint: str | Path,
    data_root: str | Path,
    out: str | Path,
    fmt: str | None = None,
    shots: int | str | None = None,
    workers: int | None = None,
    categories: list[str] | None = None,
    use_llm: bool | None = None,
    config: EvaluateConfig | None = None,
    model_ref: str | None = None,
) -> dict[str, Any]:
    """Evaluate a local checkpoint folder (``model.safetensors`` + ``config.yaml``) on a dataset.

    A registered model (``models:/...``, ``runs:/...``) is the caller's to download first
    (``pipeline.model_download.resolve_model``); ``model_ref`` is then what the user named, recorded as
    metrics.json's ``model`` (default: the checkpoint folder). Arguments left ``None`` come from
    ``config`` (default ``EvaluateConfig()``). Writes metrics.json, metrics.md, answers.jsonl and
    maps/ under ``out`` and returns the metrics.json content.
    """
    settings = {"format": fmt, "shots": shots, "workers": workers, "use_llm": use_llm}
    settings = {k: v for k, v in settings.items() if v is not None}
    if categories is not None:
        settings["categories"] = list(categories)
    cfg = dataclasses.replace(config or EvaluateConfig(), **settings)
    started = time.perf_counter()
    out = Path(out)
    checkpoint = Path(checkpoint)
    eval_set = read_evaluation_set(data_root, cfg, trained_categories(checkpoint))
    verify_checkpoint(checkpoint)  # here, naming the file: in the actors it is a bare ActorDiedError
    bank_config = checkpoint_config(checkpoint).memory_bank  # whose 1-shot boundary is borrowed
    n_images = sum(len(c.items) for c in eval_set.categories)
    log.info(
        "evaluate: %d test images in %d categories, %s, %d worker(s)",
        n_images,
        len(eval_set.categories),
        cfg.setting.replace("_", "-") if cfg.shots in (0, "all") else f"{cfg.shots}-shot",
        cfg.workers,
    )
    lo, hi = cfg.resolved_score_range()
    actors = _start_actors(checkpoint, cfg, {"bins": cfg.pixel_bins, "lo": lo, "hi": hi})
    scoring_started = time.perf_counter()
    info = actors[0][1]
    generate = cfg.use_llm and info["has_llm"]
    if cfg.use_llm and not info["has_llm"]:
        log.info("evaluate: the model has no LLM; accuracy by the max-normal-score threshold rule")
    if not (info["has_map"] or cfg.uses_bank or generate):
        _stop(actors)
        raise EvaluationDataError("the model has no decoder and answers are off: nothing to measure")
    if cfg.write_maps and (out / "maps").is_dir():
        shutil.rmtree(out / "maps")  # overlays of an earlier run in the same folder would mislead
    rows: list[dict[str, Any]] = []
    per_category: dict[str, dict[str, Any]] = {}
    decoder_only: dict[str, dict[str, Any]] = {}
    baseline: dict[str, dict[str, Any]] = {}
    try:
        for category in eval_set.categories:
            cat_rows, states, bank_figures = _score_category(category, actors, cfg, generate, out)
            rows += cat_rows
            for part, table in (("decoder", decoder_only), ("baseline", baseline)):
                if states[part] is not None or any(r.get(f"{part}_score") is not None for r in cat_rows):
                    table[category.category] = report.part_metrics(
                        cat_rows, f"{part}_score", states[part], cfg.aupro_max_fpr
                    )
            per_category[category.category] = report.category_metrics(
                cat_rows,
                states["main"],
                generate,
                cfg.aupro_max_fpr,
                len(category.missing_masks),
                category.n_unreadable,
            )
            per_category[category.category]["seen_in_training"] = category.seen_in_training
            per_category[category.category]["boundary_borrowed"] = (
                cfg.shots == 1 and bank_config.borrows_one_shot(category.category)
            )
            per_category[category.category].update(bank_figures)
            _log_category(category.category, per_category[category.category])
            borrowed = per_category[category.category]["boundary_borrowed"]
            for note in report.decision_notes(per_category[category.category], borrowed):
                log.warning("evaluate: %s: %s", category.category, note)
        scoring_s = time.perf_counter() - scoring_started
    finally:
        _stop(actors)
    unreadable = eval_set.unreadable + [
        {"path": r["image"], "split": "test", "reason": r["error"]} for r in rows if r["error"]
    ]
    result = {
        "setting": cfg.setting,
        "shots": cfg.shots,
        "model": str(checkpoint) if model_ref is None else model_ref,
        "checkpoint": str(checkpoint),
        "data": str(data_root),
        "format": cfg.format,
        "image_size": info["image_size"],
        "accuracy_rule": "llm_answer_strict" if generate else "max_normal_score_threshold",
        "per_category": per_category,
        "mean": report.mean_metrics(per_category),
        "decoder_only": (
            {"per_category": decoder_only, "mean": report.mean_metrics(decoder_only)}
            if decoder_only
            else None
        ),
        "baseline": report.baseline_section(per_category, baseline) if baseline else None,
        "references": {c.category: c.references for c in eval_set.categories if c.references},
        "feedback": cfg.feedback,
        "cover": {c.category: c.cover_paths for c in eval_set.categories if c.cover_paths},
        "without_mask": {c.category: c.missing_masks for c in eval_set.categories if c.missing_masks},
        "unreadable": unreadable,
        "workers": cfg.workers,
        "devices": sorted({a[1]["device"] for a in actors}),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "scoring_time_s": round(scoring_s, 2),
        "images_per_s": round(len(rows) / scoring_s, 3),
        "config": dataclasses.asdict(cfg),
    }
    for category in (result["baseline"] or {}).get("below", []):
        log.warning(
            "evaluate: %s: the model's Image-AUROC %.4f is below the plain nearest-neighbour baseline's %.4f",
            category,
            per_category[category]["image_auroc"],
            baseline[category]["image_auroc"],
        )
    report.write_outputs(out, result, rows)
    report.log_to_mlflow(out, result, rows, cfg.mlflow_overlays)
    log.info("evaluate: wrote %s (%.1f s)", out / "metrics.json", result["wall_time_s"])
    return result


def _start_actors(checkpoint: Path, cfg: EvaluateConfig, pixel: dict[str, Any]) -> list[tuple[Any, dict]]:
    """``cfg.workers`` actors, each with the model loaded; fails with a clear message if the cluster
    cannot place them."""
    import ray

    init_ray()
    if cfg.use_gpu:
        need = cfg.workers * cfg.gpus_per_worker
        require_gpus(need, f"evaluate.use_gpu with {cfg.workers} actor(s) x {cfg.gpus_per_worker:g} GPU")
    total = ray.cluster_resources().get("CPU", 1.0)
    resources = actor_resources(cfg, total)
    cpus = resources["num_cpus"]
    # worker_env: the driver's verbosity (model-loading progress bars, library warnings) in the actors
    remote = ray.remote(**resources, max_restarts=0, runtime_env={"env_vars": worker_env()})(EvalWorker)
    pixel = {**pixel, "threshold": cfg.mask_threshold}
    device = "cuda" if cfg.use_gpu else "cpu"
    actors = [
        remote.remote(str(checkpoint), cfg.threads_per_worker, pixel, cfg.write_maps, device, cfg.bank_budget)
        for _ in range(cfg.workers)
    ]
    refs = [a.info.remote() for a in actors]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=_ACTOR_START_TIMEOUT_S)
    if pending:
        for actor in actors:
            ray.kill(actor)
        raise RuntimeError(
            f"only {len(ready)} of {cfg.workers} evaluation actors started within "
            f"{_ACTOR_START_TIMEOUT_S} s ({cpus:g} CPU each, cluster has {total:g})"
        )
    return list(zip(actors, ray.get(refs), strict=True))


def actor_resources(cfg: EvaluateConfig, cluster_cpus: float) -> dict[str, float]:
    """Ray resources of one actor: its threads' CPUs (never more than the cluster's share: the actors
    would wait forever) and, with ``use_gpu``, ``gpus_per_worker`` GPUs (fractions share a GPU)."""
    return {
        "num_cpus": min(float(cfg.threads_per_worker), cluster_cpus / cfg.workers),
        "num_gpus": cfg.gpus_per_worker if cfg.use_gpu else 0,
    }


def _stop(actors: list[tuple[Any, dict]]) -> None:
    import ray

    for actor, _ in actors:
        ray.kill(actor)


def _batches(items: list[EvalItem], size: int) -> list[list[EvalItem]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _score_category(
    category: CategoryTestSet, actors: list[tuple[Any, dict]], cfg: EvaluateConfig, generate: bool, out: Path
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Rows of every test image of the category, its merged pixel histograms (or None) by map:
    ``main`` (the reported map) and, with references, ``decoder`` and ``baseline``; and what the
    bank's map guard measured (``fusion_guard``; None: no bank, or not guarded) and how the decoder's
    map joined the bank's (``fusion``, ``MemoryBankConfig.fusion_for``; None: the bank's map alone)."""
    import ray
    from tqdm import tqdm

    bank = baseline = None
    bank_figures: dict[str, Any] = {"fusion_guard": None, "fusion": None}
    if category.reference_paths:  # each built once by one actor, shared through the object store
        name, paths = category.category, category.reference_paths
        bank_ref = actors[0][0].build_bank.remote(name, paths, category.cover_paths)
        if cfg.baseline:  # on the last actor, beside the bank
            baseline = ray.put(ray.get(actors[-1][0].build_baseline.remote(name, paths)))
        built = ray.get(bank_ref)
        fusion = built.fusion if built.decoder_calibration is not None else None
        bank_figures = {"fusion_guard": _log_guard(name, built.guard), "fusion": fusion}
        bank = ray.put(built)
    question = question_for(category.category)
    batches = _batches(category.items, cfg.batch_size)
    pending = {
        actors[i % len(actors)][0].predict.remote(batch, bank, question, generate, baseline): batch
        for i, batch in enumerate(batches)
    }
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(category.items), desc=f"evaluate {category.category}", unit="img") as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            batch_rows = ray.get(done[0])
            bar.update(len(pending.pop(done[0])))
            for row in batch_rows:
                picture = row.pop("overlay", None)
                if picture is not None:
                    path = report.map_path(out, row)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(picture)
            rows += batch_rows
    maps = ("main", "decoder", "baseline")
    states = {which: _merged_state(actors, category.category, which) for which in maps}
    return rows, states, bank_figures


def _log_guard(category: str, guard: Any) -> dict[str, Any] | None:
    """The map guard's figures for metrics.json, said on the console where it dropped the bank's
    refinements or the decoder."""
    if guard is None:
        return None
    if guard.refinements_dropped:
        log.info(
            "evaluate: %s: the bank's map is the plain one, unsmoothed with equal layers (on the "
            "references held out against %d synthetic anomalies the refinements lower its "
            "Image-AUROC from %.4f to %.4f)",
            *(category, guard.anomalies, guard.plain_auroc, guard.refined_auroc),
        )
    if guard.fused_auroc is not None and not guard.decoder_kept:
        log.info(
            "evaluate: %s: the decoder is left out of the map (on the references held out against %d "
            "synthetic anomalies it lowers the bank's Image-AUROC from %.4f to %.4f)",
            *(category, guard.anomalies, guard.bank_auroc, guard.fused_auroc),
        )
    return guard.to_dict()


def _merged_state(actors: list[tuple[Any, dict]], category: str, which: str) -> Any:
    """The actors' pixel histograms of one category and map, added up (None if none has any)."""
    import ray

    state = None
    for part in ray.get([actor.take_state.remote(category, which) for actor, _ in actors]):
        if part is not None:
            state = part if state is None else state.merge(part)
    return state


def _log_category(name: str, m: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    log.info(
        "evaluate: %s: image AUROC %s, pixel AUROC %s, accuracy %s, AUPRO %s, F1-max %s (%d images)",
        name,
        *(fmt(m[k]) for k in report.HEADLINE),
        m["n_images"],
    )
