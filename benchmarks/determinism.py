"""Are two trainings on the same shards the same? Trains twice and compares the weights bit for bit.

Runs ``python -m pipeline train`` twice (separate processes, separate Ray sessions, different
PYTHONHASHSEED) with the same config, shards, instruction data and worker count, then compares the
exported ``model.safetensors``: their SHA-256 and, per tensor, the largest absolute difference.
Prints one JSON object; exits 1 when the weights differ.

    python benchmarks/determinism.py [--config configs/demo.yaml] [--shards runs/demo/synth] \\
        [--instruct runs/demo/instruct] [--steps 30] [--workers 2]

Defaults use the demo's shards and instruction data (run ``make demo`` first). Every random choice
of training comes from the run seed and the step (data order, augmentation, few-shot banks, map
gains, the trainable weights' initial values), and each worker runs a fixed number of torch
threads, so on one machine the answer should be ``"identical": true``. Across machines with other
CPU kernels (other SIMD widths, other oneDNN paths) float results may differ in the last bits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--shards", type=Path, default=ROOT / "runs" / "demo" / "synth")
    parser.add_argument("--instruct", type=Path, default=ROOT / "runs" / "demo" / "instruct")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per training")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    args = parser.parse_args()
    if not (args.shards / "manifest.json").is_file():
        parser.error(f"no shards at {args.shards} (run `make demo` first, or pass --shards)")
    with tempfile.TemporaryDirectory(prefix="determinism-") as tmp:
        runs = [_train(args, Path(tmp) / f"run{i}", hash_seed=str(i + 1)) for i in range(2)]
        report = _compare([Path(r["out"]) / "model.safetensors" for r in runs])
    report.update(
        config=str(args.config),
        steps=args.steps,
        workers=args.workers,
        wall_s=[r["wall_s"] for r in runs],
    )
    print(json.dumps(report, indent=1))
    return 0 if report["identical"] else 1


def _train(args: argparse.Namespace, out: Path, hash_seed: str) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "pipeline", "train", "--config", str(args.config), "--shards", str(args.shards),
        "--out", str(out), "--workers", str(args.workers), "--set", f"train.max_steps={args.steps}",
        "--set", f"train.checkpoint_every={args.steps}",
    ]  # fmt: skip
    if args.instruct and args.instruct.exists():
        command += ["--instruct", str(args.instruct)]
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "MLFLOW_TRACKING_URI": f"sqlite:///{out}.mlflow.db"}
    began = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return {"out": str(out), "wall_s": round(time.perf_counter() - began, 1)}


def _compare(paths: list[Path]) -> dict[str, Any]:
    from safetensors.torch import load_file

    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    first, second = (load_file(str(p)) for p in paths)
    differ = {
        name: float((first[name].float() - second[name].float()).abs().max())
        for name in sorted(first)
        if not first[name].equal(second[name])
    }
    return {
        "identical": digests[0] == digests[1],
        "sha256": digests,
        "tensors": len(first),
        "tensors_that_differ": differ,
    }


if __name__ == "__main__":
    sys.exit(main())
