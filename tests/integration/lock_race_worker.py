"""A process that takes a model's promotion lock (used by test_registry_postgres.py).

``python lock_race_worker.py MODEL JOURNAL LEASE hold``: take the lock, write ``hold`` to the journal
and hold it until killed. ``... rounds N``: take it N times; each time, write ``round PID START END``
(wall-clock seconds of the hold) to the journal after a short hold. Run with MLFLOW_TRACKING_URI set.
"""

from __future__ import annotations

import os
import sys
import time


def journal(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:  # one short append: whole lines, never interleaved
        f.write(line + "\n")


def main(model: str, path: str, lease: float, mode: str, rounds: int = 0) -> None:
    from mlflow import MlflowClient

    from pipeline.promotion_lock import promotion_lock

    client = MlflowClient()
    if mode == "hold":
        with promotion_lock(client, model, lease=lease, poll=0.05):
            journal(path, f"hold {os.getpid()} {time.time():.6f} inf")
            time.sleep(3600)
    for _ in range(rounds):
        with promotion_lock(client, model, lease=lease, poll=0.05) as held:
            start = time.time()
            time.sleep(0.05)
            held.check()
            end = time.time()
        journal(path, f"round {os.getpid()} {start:.6f} {end:.6f}")


if __name__ == "__main__":
    model, path, lease, mode, *rest = sys.argv[1:]
    main(model, path, float(lease), mode, int(rest[0]) if rest else 0)
