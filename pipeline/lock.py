"""One pipeline run at a time per workspace: ``run`` and ``retrain`` hold ``<out>/pipeline.lock``.

The lock is an OS file lock (filelock), so it is released when the holder exits, even by SIGKILL;
a stale lock file never blocks. Next to it, ``pipeline.lock.json`` names the holder (pid, host,
command, start time) for the message a second caller sees. Use a local or block-storage folder: OS
locks on NFS are not reliable (on Kubernetes the CronJob's ``concurrencyPolicy: Forbid`` covers it).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import UnavailableError

log = logging.getLogger(__name__)

LOCK_NAME = "pipeline.lock"


class LockBusy(UnavailableError):
    """Another run holds the workspace lock and did not release it in time."""


def _describe(who: dict | None) -> str:
    if not who:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who.get("started", 0)))
    return f"pid {who.get('pid', '?')} on {who.get('host', '?')}, `{who.get('command', '?')}`, since {since}"


def holder(lock_path: str | Path) -> dict | None:
    """Who holds (or last held) the lock, as recorded by them."""
    info = Path(str(lock_path) + ".json")
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def workspace_lock(workspace: str | Path, wait: float = 0.0, poll: float = 1.0) -> Iterator[Path]:
    """Hold the workspace lock; wait up to ``wait`` seconds (< 0: forever), else raise LockBusy."""
    from filelock import FileLock, Timeout

    workspace = Path(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    path = workspace / LOCK_NAME
    lock = FileLock(str(path))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if wait == 0:
                raise
            log.info("waiting for %s (held by %s)", path, _describe(holder(path)))
            lock.acquire(timeout=-1 if wait < 0 else wait, poll_interval=poll)
    except Timeout:
        raise LockBusy(
            f"{workspace} is in use by another pipeline run ({_describe(holder(path))}); "
            "wait for it to finish or pass --wait SECONDS"
        ) from None
    info = Path(str(path) + ".json")
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv),
        "started": time.time(),
    }
    info.write_text(json.dumps(record))
    try:
        yield path
    finally:
        lock.release()
