"""The synth job: plan samples into shards, write missing shards as Ray tasks, then the manifest.

The plan depends only on the dataset, config and seed, so any number of workers (or a cluster via
``RAY_ADDRESS``) writes the same bytes. A shard counts as done when its tar and its small stats
file in ``_parts/`` both exist; a killed run therefore resumes with the missing shards only.
Shards are written by the tasks straight into the output folder: on a cluster it must be shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, to_dict
from pipeline.fingerprint import records_fingerprint
from synth.config import SynthConfig
from synth.datasets import Skipped, read_dataset
from synth.samples import SampleMaker, Source, sources_from_records
from synth.shards import MANIFEST, MANIFEST_FORMAT, PAIRING_UNIT, atomic_write, shard_name, write_tar

log = logging.getLogger(__name__)

PARTS = "_parts"


def run_synth(
    cfg: SynthConfig,
    data_root: str | Path,
    out: str | Path,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write shards + manifest.json for the normals under ``data_root``; returns the manifest.

    The returned dict also carries ``status`` (``written`` or ``up_to_date``) and run figures
    under ``run`` (not stored in the manifest, so manifests compare equal across runs).
    """
    data_root, out = Path(data_root).expanduser(), Path(out).expanduser()
    skipped: list[Skipped] = []
    records = read_dataset(data_root, cfg.format, split="train", categories=cfg.categories, skipped=skipped)
    records = [r for r in records if r.label == 0]
    sources = sources_from_records(records)
    fingerprint = records_fingerprint(records)
    settings = {k: v for k, v in to_dict(cfg).items() if k != "workers"}  # workers never change output
    plan_id = _hash({"seed": seed, "config": settings, "source": fingerprint, "format": MANIFEST_FORMAT})
    parts = out / PARTS

    if force and out.exists():
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        try:
            existing = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{manifest_path}: unreadable ({exc}); use --force to rebuild") from exc
        if existing.get("plan_id") == plan_id:
            log.info("synth: %s is complete and up to date; nothing to do (--force rebuilds)", out)
            return {**existing, "status": "up_to_date"}
        raise ConfigError(
            f"{out} holds shards of another dataset/config/seed or synth version; use --force to rebuild"
        )
    parts.mkdir(exist_ok=True)
    plan_file = parts / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text()).get("plan_id") != plan_id:
        raise ConfigError(f"{out} holds a partial run of another dataset/config/seed; use --force to rebuild")
    atomic_write(plan_file, json.dumps({"plan_id": plan_id}).encode())
    for stale in [*out.glob(".shard-*.tmp"), *parts.glob(".*.tmp")]:  # left by a killed run
        stale.unlink(missing_ok=True)

    shards = plan_shards(len(sources), cfg.per_image, cfg.samples_per_shard)
    pending = [i for i in range(len(shards)) if not _done(out, i)]
    if len(pending) < len(shards):
        log.info("synth: resuming, %d of %d shards already written", len(shards) - len(pending), len(shards))
    elapsed = _run_tasks(pending, shards, sources, cfg, seed, str(out), progress)

    stats = [json.loads((parts / f"{shard_name(i)}.json").read_text()) for i in range(len(shards))]
    manifest = _manifest(cfg, settings, seed, data_root, fingerprint, plan_id, stats, skipped)
    atomic_write(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    shutil.rmtree(parts, ignore_errors=True)
    written = sum(stats[i]["samples"] for i in pending)
    rate = written / elapsed if elapsed > 0 else 0.0
    print(
        f"synth: {manifest['samples']} samples in {len(shards)} shards -> {out} "
        f"({len(pending)} shards written now, {written} samples in {elapsed:.1f} s, {rate:.1f} samples/s; "
        f"{manifest['fallback_normal']} synthesis fallbacks, {len(manifest['skipped'])} files skipped)"
    )
    run = {"elapsed_s": elapsed, "samples_written": written, "samples_per_s": rate}
    return {**manifest, "status": "written", "run": run}


PlanItem = tuple[int, int, int, int]
"""(sample index, source index, k, index of the pair's normal sample) of one planned sample."""


def plan_shards(n_sources: int, per_image: int, per_shard: int) -> list[list[PlanItem]]:
    """The samples of each shard: each image gives k=0 (normal) and k=1..per_image (synthetic).

    All samples of one source image land in the same shard, so a normal image and its synthetic
    twins are never split: ``per_shard`` is a target, the largest whole number of images that fits
    (at least one image per shard).
    """
    group = per_image + 1
    images_per_shard = max(1, per_shard // group)
    shards = []
    for first in range(0, n_sources, images_per_shard):
        images = range(first, min(first + images_per_shard, n_sources))
        shards.append([(i * group + k, i, k, i * group) for i in images for k in range(group)])
    return shards


def write_shard(
    shard: int,
    items: list[PlanItem],
    sources: list[Source],
    cfg: SynthConfig,
    seed: int,
    out: str,
) -> dict[str, Any]:
    """Make and write one shard plus its stats file; what each Ray task runs."""
    import cv2

    cv2.setNumThreads(1)  # one task per CPU: OpenCV's own threads would only oversubscribe
    maker = SampleMaker(sources, cfg, seed)
    members: list[tuple[str, bytes]] = []
    counts: dict[str, dict[str, int]] = {}
    for index, source_index, k, pair_index in items:
        sample = maker.make(index, source_index, k, pair_index)
        if sample is None:
            continue
        members += [(f"{sample.key}.{ext}", data) for ext, data in sample.files]
        per_cat = counts.setdefault(sample.category, {"normal": 0, "anomalous": 0, "fallback_normal": 0})
        per_cat[
            {"normal": "normal", "synthetic": "anomalous", "fallback": "fallback_normal"}[sample.kind]
        ] += 1
    name = shard_name(shard)
    sha, size = write_tar(Path(out) / name, members)
    stats = {
        "name": name,
        "planned": len(items),
        "samples": len(members) // 3,
        "sha256": sha,
        "bytes": size,
        "counts": counts,
        "skipped": maker.stats.skipped,
    }
    atomic_write(Path(out) / PARTS / f"{name}.json", json.dumps(stats, sort_keys=True).encode())
    return stats


def _run_tasks(
    pending: list[int],
    shards: list[list[PlanItem]],
    sources: list[Source],
    cfg: SynthConfig,
    seed: int,
    out: str,
    progress: bool,
) -> float:
    """Run the pending shards, at most ``cfg.workers`` at once; returns seconds spent (Ray start excluded)."""
    if not pending:
        return 0.0
    import ray
    from tqdm import tqdm

    from pipeline.runtime import init_ray

    init_ray()
    workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1, max_retries=2)(write_shard)
    sources_ref, cfg_ref = ray.put(sources), ray.put(cfg)
    queue, running = list(pending), []
    start = time.perf_counter()
    bar = tqdm(total=sum(len(shards[i]) for i in pending), unit="sample", desc="synth", disable=not progress)
    try:
        while queue or running:
            while queue and len(running) < workers:
                i = queue.pop(0)
                running.append(remote.remote(i, shards[i], sources_ref, cfg_ref, seed, out))
            done, running = ray.wait(running, num_returns=1)
            for stats in ray.get(done):
                bar.update(stats["planned"])
    finally:
        bar.close()
    return time.perf_counter() - start


def _done(out: Path, shard: int) -> bool:
    name = shard_name(shard)
    return (out / name).is_file() and (out / PARTS / f"{name}.json").is_file()


def _manifest(
    cfg: SynthConfig,
    settings: dict[str, Any],
    seed: int,
    data_root: Path,
    fingerprint: str,
    plan_id: str,
    stats: list[dict[str, Any]],
    skipped: list[Skipped],
) -> dict[str, Any]:
    categories: dict[str, dict[str, int]] = {}
    for s in stats:
        for cat, c in s["counts"].items():
            total = categories.setdefault(cat, {"normal": 0, "anomalous": 0, "fallback_normal": 0})
            for key, value in c.items():
                total[key] += value
    dropped = [dataclasses.asdict(s) for s in skipped] + [x for s in stats for x in s["skipped"]]
    return {
        "format": MANIFEST_FORMAT,
        "seed": seed,
        "config": settings,
        "dataset": {"root": str(data_root), "format": cfg.format},
        "source_fingerprint": fingerprint,
        "plan_id": plan_id,
        "samples": sum(s["samples"] for s in stats),
        "shards": [{k: s[k] for k in ("name", "samples", "sha256", "bytes")} for s in stats],
        "categories": dict(sorted(categories.items())),
        "fallback_normal": sum(c["fallback_normal"] for c in categories.values()),
        "pairing": _pairing(categories),
        "skipped": sorted(dropped, key=lambda d: d["path"]),
    }


def _pairing(categories: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The training unit: each synthetic (or fallback) sample with the normal sample of its image.

    A source image is written whole or not at all (an undecodable one gives no sample), so every
    written non-normal sample has its normal twin.
    """
    return {
        "unit": PAIRING_UNIT,
        "pairs": sum(c["anomalous"] + c["fallback_normal"] for c in categories.values()),
        "fallback_pairs": sum(c["fallback_normal"] for c in categories.values()),
    }


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _clear(out: Path) -> None:
    """--force: remove what a previous synth run wrote (and only that)."""
    for path in [*out.glob("shard-*.tar"), *out.glob(".shard-*.tmp"), out / MANIFEST]:
        path.unlink(missing_ok=True)
    shutil.rmtree(out / PARTS, ignore_errors=True)
