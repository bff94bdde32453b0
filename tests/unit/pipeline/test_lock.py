"""The workspace lock: a second run waits or fails naming the holder; a killed holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.lock import LOCK_NAME, LockBusy, holder, workspace_lock

HOLD = """
import sys, time
from pipeline.lock import workspace_lock
with workspace_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder_process(workspace, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workspace), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_fails_fast_naming_holder(tmp_path):
    proc = _holder_process(tmp_path, 30)
    try:
        start = time.monotonic()
        with pytest.raises(LockBusy, match=rf"pid {proc.pid}"), workspace_lock(tmp_path):
            pass
        assert time.monotonic() - start < 2
        with pytest.raises(LockBusy, match="--wait"), workspace_lock(tmp_path, wait=0.5, poll=0.1):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_waiter_gets_lock_when_holder_finishes(tmp_path):
    proc = _holder_process(tmp_path, 1.0)
    start = time.monotonic()
    try:
        with workspace_lock(tmp_path, wait=30, poll=0.1):
            assert time.monotonic() - start > 0.8  # it waited for the holder's 1 s
            assert holder(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    finally:
        proc.wait()


def test_killed_holder_leaves_no_stale_lock(tmp_path):
    proc = _holder_process(tmp_path, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the file stays, the OS lock does not
    with workspace_lock(tmp_path):
        pass
