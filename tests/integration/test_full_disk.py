"""A full disk met inside a Ray task is the CLI's exit 4 with the file it could not write, as on the
driver: synth into a small tmpfs, whose shard tasks run out of space."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB tmpfs: room for synth's plan, not for its shards (needs root with CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def test_a_full_disk_inside_a_shard_task_exits_4(ray_session, sample_data_root, small_disk):
    out = small_disk / "shards"
    argv = [sys.executable, "-m", "pipeline", "synth", "--data", str(sample_data_root), "--out", str(out),
            "--size", "64", "--per-image", "3", "--workers", "1", "--no-progress"]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    expected = rf"error: cannot write {re.escape(str(out))}/shard-\d+\.tar: No space left on device"
    assert re.fullmatch(expected, last), last
    assert "Traceback" not in proc.stderr
