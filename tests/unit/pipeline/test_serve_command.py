"""`python -m pipeline serve` refuses what it cannot serve at once, with the exit codes of the CLI,
before it starts Ray (the full start, page and Ctrl-C: tests/integration/test_serve_page.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def serve(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "serve", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - start


def test_a_model_that_is_not_there_exits_2_before_ray_starts(tmp_path):
    done, _ = serve("--model", str(tmp_path / "missing"), "--port", "0")
    assert done.returncode == 2, done.stderr
    assert "error: model" in done.stderr and "missing" in done.stderr and "Traceback" not in done.stderr
    assert "Started a local Ray instance" not in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done, _ = serve("--model", str(empty), "--port", "0")
    assert done.returncode == 2 and "error:" in done.stderr


def test_bad_settings_and_a_busy_port_are_refused(tmp_path):
    done, _ = serve("--replicas", "0")
    assert done.returncode == 2 and "error: replicas must be at least 1" in done.stderr
    done, _ = serve("--model", str(tmp_path), "--references-dir", str(tmp_path / "nope"), "--port", "0")
    assert done.returncode == 2 and "references folder not found" in done.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done, _ = serve("--port", str(port))
    assert done.returncode == 3 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
