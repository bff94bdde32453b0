"""One of two pipelines that finish at the same time (used by test_registry_postgres.py).

For each round of its plan: make the round's checkpoint known as ready, wait for the test to open
the round's gate, then register and maybe promote the checkpoint; finally write what
``register_and_promote`` returned for every round. Run as ``python registry_race_worker.py PLAN``
with MLFLOW_TRACKING_URI pointing at the shared server.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(plan_file: str) -> None:
    plan = json.loads(Path(plan_file).read_text())
    import mlflow

    from pipeline.core.mlflow_store import configure_mlflow
    from pipeline.registry import RegistryConfig, register_and_promote

    configure_mlflow(plan["run_root"], plan["experiment"])
    results = []
    for step in plan["rounds"]:
        Path(step["ready"]).touch()
        deadline = time.monotonic() + 300
        while not Path(step["gate"]).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {step['gate']} never opened")
            time.sleep(0.01)
        metrics = {"mean": {"image_auroc": step["value"]}}
        with mlflow.start_run():
            summary = register_and_promote(
                step["checkpoint"], metrics, "eval-data", RegistryConfig(model_name=step["model_name"])
            )
        results.append(summary)
    Path(plan["result"]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
