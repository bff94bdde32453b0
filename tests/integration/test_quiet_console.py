"""What `python -m pipeline train` prints: the project's own lines, and the libraries' only with --verbose.

Two workers of the tiny config for two steps, a checkpoint after each, with an empty cache: every rank
of Ray Train reports each checkpoint, transformers loads MiniLM in each worker (its prompt features are
not cached yet) and DeepSpeed's ZeRO-2 calls a deprecated torch collective, so each noisy line below is
printed without fail when it is not silenced.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.runtime import QUIET_ENV_DEFAULTS, VERBOSE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]

NOISE = {
    "Ray's start-up line": "Started a local Ray instance",
    "Ray Train's controller": "Requesting resources",
    "the preemption watcher's error line": "Actor with class name: 'PreemptionWatcher'",
    "Ray Train's checkpoint line of each worker": "Checkpoint successfully created",
    "Ray Train's report of each worker": "Reporting training result",
    "transformers' progress bar": "Loading weights",
    "torch's FutureWarning in each worker": "`torch.distributed.all_gather_into_tensor` is deprecated",
    "MLflow's INFO line": "Creating initial MLflow database tables",
}
OWN_LINES = ("train: starting step 0/2 on 2 worker(s)", "train: step 2/2 loss", "train: 2 steps, final loss")


def train_output(shards: Path, out: Path, *flags: str) -> str:
    config = ROOT / "configs" / "tiny.yaml"
    command = [sys.executable, "-m", "pipeline", *flags, "train", "--config", str(config)]
    command += ["--shards", str(shards), "--out", str(out), "--workers", "2"]
    command += ["--set", "train.max_steps=2", "--set", "train.checkpoint_every=1"]
    # As from a fresh shell: nothing this test process (or an earlier test) exported.
    inherited = {*QUIET_ENV_DEFAULTS, VERBOSE_ENV, "MLFLOW_TRACKING_URI", "RAY_ADDRESS"}
    inherited.add("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    env["XDG_CACHE_HOME"] = str(out.with_name(out.name + "-cache"))  # MiniLM's features not cached yet
    proc = subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=540
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def test_the_console_is_quiet_by_default_and_verbose_restores_the_libraries_lines(tiny_shards, tmp_path):
    quiet = train_output(tiny_shards, tmp_path / "quiet")
    for line in OWN_LINES:
        assert line in quiet
    assert quiet.count("train: few-shot reference pool encoded") == 1  # rank 0 only
    shown = {what: text for what, text in NOISE.items() if text in quiet}
    assert not shown, f"noise in the default output: {shown}\n{quiet[-4000:]}"

    verbose = train_output(tiny_shards, tmp_path / "verbose", "--verbose")
    for line in OWN_LINES:
        assert line in verbose
    missing = {what: text for what, text in NOISE.items() if text not in verbose}
    assert not missing, f"--verbose lacks: {missing}\n{verbose[-4000:]}"
