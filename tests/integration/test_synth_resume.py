"""A synth run killed midway (SIGKILL of its whole process group) resumes with the missing shards only."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from synth.config import SynthConfig
from synth.job import run_synth
from synth.shard_format import verify_shards

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PER_IMAGE, PER_SHARD = 3, 1  # 24 normals x 4 samples; a shard holds one whole image: 24 shards of 4


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver, its process group and every process it started, and wait until all are gone.

    Ray's workers need not share the driver's process group; one still alive after the kill could finish a
    shard after the test has counted the finished ones.
    """
    tree = [psutil.Process(proc.pid)]
    with contextlib.suppress(psutil.NoSuchProcess):
        tree += tree[0].children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"processes outlived SIGKILL: {alive}"


def test_killed_run_resumes_missing_shards_only(ray_session, sample_data_root, tmp_path):
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "pipeline", "synth", "--data", str(sample_data_root), "--out", str(out),
            "--size", "64", "--per-image", str(PER_IMAGE), "--samples-per-shard", str(PER_SHARD),
            "--workers", "1", "--seed", "1", "--no-progress"]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("shard-*.tar"))) < 3:
            assert proc.poll() is None, "synth finished or died before it could be killed"
            assert time.monotonic() < deadline, "no shard written within 120 s"
            time.sleep(0.02)
    finally:
        _kill_tree(proc)

    written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.tar")}
    finished = {name for name in written if (out / "_parts" / f"{name}.json").is_file()}
    assert not (out / "manifest.json").exists()
    assert 3 <= len(finished) < 24

    cfg = SynthConfig(size=64, per_image=PER_IMAGE, samples_per_shard=PER_SHARD, workers=2)
    result = run_synth(cfg, sample_data_root, out, seed=1, progress=False)
    assert result["status"] == "written"
    assert result["run"]["samples_written"] == 4 * (24 - len(finished))
    for name in finished:  # shards completed before the kill were kept, not rewritten
        path = out / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == written[name]
    assert not list(out.glob(".*.tmp")) and not (out / "_parts").exists()

    clean = tmp_path / "clean"
    run_synth(cfg, sample_data_root, clean, seed=1, progress=False)
    verify_shards(out)
    names = sorted(p.name for p in clean.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
