"""What the driver hands every Ray Train worker: one picklable record, built by ``train.job.fit``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from train.config import TrainJobConfig
from train.instruct import InstructionSample
from train.shard_reader import ShardIndex


@dataclass(repr=False)  # repr=False: the index and instruction list would print megabytes
class WorkerContext:
    """The prepared (checked) training run, as each worker needs it."""

    config: TrainJobConfig
    deepspeed: dict[str, Any]
    """The DeepSpeed config (batch sizes, ZeRO); the precision is filled in on the workers."""
    index: ShardIndex
    instructions: list[InstructionSample]
    fraction: float
    """Share of micro-steps on instruction data (0 when there is none)."""
    total_steps: int
    accumulation: int
    """Micro-steps per optimizer step on each worker."""
    offload_optimizer: bool
    """ZeRO offloads the optimizer to CPU: DeepSpeed's CPU Adam instead of torch's AdamW."""
    precision: str
    """``ds_config.driver_precision``: ``auto`` until the workers agree on bf16 or fp16."""
    fingerprint: str
    """What a checkpoint must match to be resumed (written into each checkpoint's state)."""
    mlflow_run_id: str
    mlflow_uri: str
