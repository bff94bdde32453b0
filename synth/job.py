"""The synth job: plan samples into shards, write missing shards as Ray tasks, then the manifest.

The plan depends only on the dataset, config and seed, so any number of workers (or a cluster via
``RAY_ADDRESS``) writes the same bytes. A shard counts as done when its tar and its small stats
file in ``_parts/`` both exist and the tar has the recorded size (and sha256 with ``verify``); a
killed run therefore resumes with the missing shards only. A rerun of a finished output checks its
shards against the manifest the same way and rewrites only the damaged ones. A category none of
whose images can be decoded is an error, not a category quietly missing from the manifest.
Shards are written by the tasks straight into the output folder: on a cluster it must be shared.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.core.config import ConfigError
from pipeline.core.files import atomic_write, json_sha256, write_json_atomic
from pipeline.core.runtime import init_ray
from synth.config import SynthConfig
from synth.datasets import DatasetError, Skipped, read_dataset
from synth.fingerprint import records_fingerprint
from synth.shard_format import (
    MANIFEST,
    MANIFEST_FORMAT,
    PAIRING_UNIT,
    ShardError,
    shard_name,
    shard_problem,
    unchecked_fields,
    write_tar,
)
from synth.shard_samples import SampleMaker, Source, sources_from_records

log = logging.getLogger(__name__)

PARTS_DIR = "_parts"
"""The folder of a run in progress: its plan id and each finished shard's record."""


def run_synth(
    cfg: SynthConfig,
    data_root: str | Path,
    out: str | Path,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    verify: bool = False,
) -> dict[str, Any]:
    """Write shards + manifest.json for the normals under ``data_root``; returns the manifest.

    The dataset is read (and refused, DatasetError) before anything is written. ``verify`` hashes
    every finished shard instead of comparing sizes only. The returned dict also carries ``status``
    (``written``, ``repaired`` or ``up_to_date``) and run figures under ``run`` (not stored in the
    manifest, so manifests compare equal across runs).
    """
    data_root, out = Path(data_root).expanduser(), Path(out).expanduser()
    skipped: list[Skipped] = []
    records = read_dataset(data_root, cfg.format, split="train", categories=cfg.categories, skipped=skipped)
    records = [r for r in records if r.label == 0]
    sources = sources_from_records(records)
    fingerprint = records_fingerprint(records)
    settings = cfg.identity()
    plan_id = shard_plan_id(cfg, seed, fingerprint)
    shards = plan_shards(len(sources), cfg.per_image, cfg.samples_per_shard)
    job = _Job(cfg, sources, shards, seed, out, progress)

    if force and out.exists():
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    existing = _finished_manifest(out, plan_id)
    if existing is not None:
        return _recheck(job, existing, verify)
    _start_plan(out, plan_id)
    pending = [i for i in range(len(shards)) if not _done(out, i, verify)]
    if len(pending) < len(shards):
        log.info("synth: resuming, %d of %d shards already written", len(shards) - len(pending), len(shards))
    elapsed = job.run(pending)

    stats = [_read_stats(out, i) for i in range(len(shards))]
    _require_every_category(sources, stats, skipped, data_root)
    manifest = _manifest(cfg, settings, seed, data_root, fingerprint, plan_id, stats, skipped)
    write_json_atomic(out / MANIFEST, manifest)
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    written = sum(stats[i]["samples"] for i in pending)
    rate = written / elapsed if elapsed > 0 else 0.0
    print(
        f"synth: {manifest['samples']} samples in {len(shards)} shards -> {out} "
        f"({len(pending)} shards written now, {written} samples in {elapsed:.1f} s, {rate:.1f} samples/s; "
        f"{manifest['fallback_normal']} synthesis fallbacks, {len(manifest['skipped'])} files skipped)"
    )
    run = {"elapsed_s": elapsed, "samples_written": written, "samples_per_s": rate}
    return {**manifest, "status": "written", "run": run}


def shard_plan_id(cfg: SynthConfig, seed: int, source_fingerprint: str) -> str:
    """What the shards depend on: the synth settings that change them (``cfg.identity()``), the
    seed, the normal images' content and the shard format. A run resumes only the same plan."""
    return json_sha256(
        {"seed": seed, "config": cfg.identity(), "source": source_fingerprint, "format": MANIFEST_FORMAT}
    )


@dataclasses.dataclass
class _Job:
    """What the shard tasks need, bundled so the write, resume and repair paths share one call."""

    cfg: SynthConfig
    sources: list[Source]
    shards: list[list[PlanItem]]
    seed: int
    out: Path
    progress: bool

    def run(self, pending: list[int]) -> float:
        """Write the ``pending`` shards (and their ``_parts`` stats); returns seconds spent."""
        (self.out / PARTS_DIR).mkdir(exist_ok=True)
        return _run_tasks(
            pending, self.shards, self.sources, self.cfg, self.seed, str(self.out), self.progress
        )


def _finished_manifest(out: Path, plan_id: str) -> dict[str, Any] | None:
    """The manifest of a finished run of this plan, None if there is none; another plan's is an error."""
    manifest_path = out / MANIFEST
    if not manifest_path.exists():
        return None
    try:
        existing = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{manifest_path}: unreadable ({exc}); use --force to rebuild") from exc
    if existing.get("plan_id") != plan_id:
        raise ConfigError(
            f"{out} holds shards of another dataset/config/seed or synth version; use --force to rebuild"
        )
    return existing


def _start_plan(out: Path, plan_id: str) -> None:
    """Claim ``_parts/`` for this plan (refusing another plan's partial run); drop a killed run's temps."""
    parts = out / PARTS_DIR
    parts.mkdir(exist_ok=True)
    plan_file = parts / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text()).get("plan_id") != plan_id:
        raise ConfigError(f"{out} holds a partial run of another dataset/config/seed; use --force to rebuild")
    atomic_write(plan_file, json.dumps({"plan_id": plan_id}).encode())
    _remove_temps(out)


def _recheck(job: _Job, existing: dict[str, Any], verify: bool) -> dict[str, Any]:
    """A finished output: check its shards against the manifest, rewrite the damaged ones (only)."""
    damaged = _damaged_shards(job.out, existing["shards"], verify)
    if not damaged:
        checked = "sizes and sha256" if verify else "sizes"
        log.info("synth: %s is complete and up to date (%s checked); nothing to do", job.out, checked)
        return {**existing, "status": "up_to_date"}
    _remove_temps(job.out)
    elapsed = job.run(sorted(damaged))
    manifest = _patched_manifest(job.out, existing, sorted(damaged))
    shutil.rmtree(job.out / PARTS_DIR, ignore_errors=True)
    names = ", ".join(shard_name(i) for i in sorted(damaged))
    print(f"synth: rewrote {len(damaged)} damaged of {len(existing['shards'])} shards in {job.out}: {names}")
    written = sum(existing["shards"][i]["samples"] for i in damaged)
    run = {"elapsed_s": elapsed, "samples_written": written, "rewritten": sorted(damaged)}
    return {**manifest, "status": "repaired", "run": run}


def _damaged_shards(out: Path, entries: list[dict[str, Any]], verify: bool) -> dict[int, str]:
    """Index -> why, for each listed shard that is missing or differs from its manifest record."""
    damaged = {}
    unchecked = [e["name"] for e in entries if unchecked_fields(e, verify)]
    if unchecked:
        log.warning(
            "synth: %s records no size/sha256 for %d shards (older synth), e.g. %s: checking that they "
            "exist only (--force rewrites them all)",
            out / MANIFEST,
            len(unchecked),
            unchecked[0],
        )
    for i, entry in enumerate(entries):
        if entry["name"] != shard_name(i):
            raise ShardError(f"{out / MANIFEST}: shard {i} is named {entry['name']!r}, not {shard_name(i)!r}")
        problem = shard_problem(out / entry["name"], entry, verify)
        if problem:
            log.warning("synth: rewriting %s: %s", out / entry["name"], problem)
            damaged[i] = problem
    return damaged


def _patched_manifest(out: Path, existing: dict[str, Any], rewritten: list[int]) -> dict[str, Any]:
    """The manifest after rewriting shards: unchanged when they came out as recorded (the usual case)."""
    manifest = json.loads(json.dumps(existing))
    for i in rewritten:
        stats, entry = _read_stats(out, i), manifest["shards"][i]
        if stats["samples"] != entry["samples"]:
            raise ShardError(
                f"{out / entry['name']}: rewritten with {stats['samples']} samples, the manifest says "
                f"{entry['samples']} (the libraries changed since?); rerun with --force to rebuild all"
            )
        if (stats["sha256"], stats["bytes"]) != (entry.get("sha256"), entry.get("bytes")):
            log.warning(
                "synth: %s came out different from its manifest record; record updated", entry["name"]
            )
            entry.update(sha256=stats["sha256"], bytes=stats["bytes"])
    if manifest != existing:
        write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _require_every_category(
    sources: list[Source], stats: list[dict[str, Any]], skipped: list[Skipped], data_root: Path
) -> None:
    """A category none of whose images could be decoded is an error, not a category left out."""
    made = {cat for s in stats for cat, c in s["counts"].items() if c["normal"] > 0}
    undecodable = {x["path"]: x["reason"] for s in stats for x in s["skipped"]}
    for category in sorted({s.category for s in sources} - made):
        bad = [s.relpath for s in sources if s.category == category]
        bad += [s.path for s in skipped if s.path.startswith(f"{category}/")]
        raise DatasetError(
            f"{data_root}: category {category!r} has no decodable train images: all {len(bad)} files are "
            f"unreadable (e.g. {bad[0]}: {undecodable.get(bad[0], 'unreadable')}); fix or remove them, or "
            "leave the category out with --categories, then rerun with --force"
        )


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
    atomic_write(Path(out) / PARTS_DIR / f"{name}.json", json.dumps(stats, sort_keys=True).encode())
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


def _done(out: Path, shard: int, verify: bool) -> bool:
    """A shard of a partial run is done when its stats exist and its tar matches them (else rewritten)."""
    name = shard_name(shard)
    stats_file = out / PARTS_DIR / f"{name}.json"
    if not (out / name).is_file() or not stats_file.is_file():
        return False
    problem = shard_problem(out / name, json.loads(stats_file.read_text()), verify)
    if problem:
        log.warning("synth: rewriting %s: %s", out / name, problem)
    return problem is None


def _read_stats(out: Path, shard: int) -> dict[str, Any]:
    return json.loads((out / PARTS_DIR / f"{shard_name(shard)}.json").read_text())


def _remove_temps(out: Path) -> None:
    """Temporary files a killed run left behind."""
    for stale in [*out.glob(".shard-*.tmp"), *(out / PARTS_DIR).glob(".*.tmp")]:
        stale.unlink(missing_ok=True)


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


def _clear(out: Path) -> None:
    """--force: remove what a previous synth run wrote (and only that)."""
    for path in [*out.glob("shard-*.tar"), *out.glob(".shard-*.tmp"), out / MANIFEST]:
        path.unlink(missing_ok=True)
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
