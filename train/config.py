"""Settings of the train stage (the ``train:`` section of a pipeline config).

No torch here: the CLI validates configs without importing it. Docstrings document each key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pipeline.core.config import to_dict
from train.model.config import ModelConfig


@dataclass
class OptimizerConfig:
    """AdamW on the trainable parameters (decoder and prompt learner in the reference)."""

    lr: float = 1e-3
    """Peak learning rate, reached at the end of the warm-up (the reference: 1e-3)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1e-3
    """Decoupled weight decay on every trainable tensor (the reference: 1e-3)."""
    lora_lr: float | None = None
    """Peak learning rate of trainable LoRA adapters; null: ``lr``. LoRA on a pretrained LLM is
    usually trained 5-10x slower than the decoder and prompt learner, which start from scratch."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.lora_lr is not None and self.lora_lr <= 0:
            raise ValueError(f"optimizer.lora_lr must be > 0, got {self.lora_lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optimizer.betas must be in [0, 1), got {self.betas}")


@dataclass
class ScheduleConfig:
    """Learning rate per optimizer step: linear warm-up from 0, then one decay to ``min_lr_ratio``."""

    warmup_ratio: float = 0.1
    """Fraction of all optimizer steps spent warming up (the reference: 0.1)."""
    decay: Literal["cosine", "linear"] = "cosine"
    """Shape after the warm-up: one cosine half-cycle, or linear (the reference's WarmupDecayLR)."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of ``optimizer.lr``."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"schedule.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class AugmentConfig:
    """Photometric augmentation of training images (albumentations).

    Only photometric: a flip or crop would move the defect and make the answer's position words
    ("top left", ...) wrong.
    """

    enabled: bool = True
    brightness: float = 0.1
    """Maximum relative brightness change."""
    contrast: float = 0.1
    """Maximum relative contrast change."""
    saturation: float = 0.1
    """Maximum relative saturation change."""
    noise_std: float = 0.02
    """Maximum standard deviation of additive Gaussian noise (fraction of the 0-255 range)."""
    p: float = 0.5
    """Probability of applying each transform."""


@dataclass
class TrainConfig:
    """Training: data mix, batch sizes, optimizer, schedule, DeepSpeed, checkpoints, fault tolerance."""

    OUTPUT_NEUTRAL_KEYS: ClassVar[tuple[str, ...]] = (
        "max_failures",
        "log_every",
        "keep_checkpoints",
        "checkpoint_every",
        "storage_path",
    )
    """Keys that may change between a run and its resumption without changing what is trained
    (fault tolerance, logging, checkpoint cadence and place): left out of :meth:`identity`."""

    epochs: float = 1.0
    """Passes over the anomaly shards; gives the number of optimizer steps unless ``max_steps`` is set."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides ``epochs`` when set."""
    global_batch_size: int = 16
    """Samples per optimizer step over all workers; the same whatever the worker count
    (gradient accumulation = global / (micro x workers))."""
    micro_batch_size: int = 2
    """Samples per worker per forward/backward pass."""
    instruction_fraction: float = 0.5
    """Share of micro-steps that use instruction data (0.5: alternate one anomaly, one instruction
    micro-step, as the reference). Ignored, with a warning, when no instruction data is given."""
    instruction_turns: Literal["first", "all"] = "first"
    """Instruction conversations: only the first human/gpt pair (the reference) or all turns."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """DeepSpeed config, merged over the defaults (ZeRO stage 2, gradient clipping 1.0, fp32) and
    checked strictly: an unknown key is an error. Batch sizes, optimizer and scheduler come from the
    keys above and may not appear here. See train/deepspeed.yaml for the accepted keys."""
    checkpoint_every: int = 100
    """Optimizer steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in storage (the newest ones)."""
    max_failures: int = 3
    """Worker-group restarts allowed; each resumes from the latest checkpoint."""
    use_gpu: bool = False
    """One GPU per worker (NCCL); false trains on CPU with gloo."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """The dtype the engine trains in. auto: fp32 on CPU; on GPUs bf16 where every worker's GPU
    supports it, else fp16 (with DeepSpeed's dynamic loss scaling; tune it in train.deepspeed.fp16).
    The only way to set it: ``enabled`` under train.deepspeed.bf16/fp16 is refused."""
    cpus_per_worker: float = 1.0
    """Ray CPUs reserved per worker; on CPU also its torch thread count (at least 1). Fractions
    work: 0.5 lets 2 workers share a core with other Ray tasks on a small machine."""
    log_every: int = 1
    """Optimizer steps between MLflow metric logs."""
    storage_path: str | None = None
    """Where Ray Train keeps checkpoints: a folder or URI every node can reach (NFS, s3://...).
    Null: ``<out>/ray`` (fine for a single machine)."""

    def __post_init__(self) -> None:
        for name in ("global_batch_size", "micro_batch_size", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not 0.0 <= self.instruction_fraction < 1.0:
            raise ValueError(f"instruction_fraction must be in [0, 1), got {self.instruction_fraction}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"micro_batch_size ({self.micro_batch_size})"
            )

    def accumulation_steps(self, workers: int) -> int:
        """Micro-steps per optimizer step for ``workers`` workers; an error if it does not divide."""
        per_step = self.micro_batch_size * workers
        if self.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) is not a multiple of "
                f"train.micro_batch_size x workers ({self.micro_batch_size} x {workers}); "
                f"choose a worker count that divides {self.global_batch_size // self.micro_batch_size}"
            )
        return self.global_batch_size // per_step

    def storage(self, out: Path) -> str:
        return self.storage_path or str(Path(out).resolve() / "ray")

    def identity(self) -> dict[str, Any]:
        """This section as plain data less ``OUTPUT_NEUTRAL_KEYS``: what the model fingerprint and
        the resume fingerprint hash."""
        return {k: v for k, v in to_dict(self).items() if k not in self.OUTPUT_NEUTRAL_KEYS}


@dataclass
class TrainJobConfig:
    """What the train job reads of a run's config: its own sections plus the run's name and seed.

    The top layer builds it from its whole config (``PipelineConfig.train_job()``), so the train
    stage does not depend on the layer that drives it.
    """

    name: str = "anomalygpt"
    """Run name: the MLflow experiment and the prefix of the Ray Train run folder."""
    seed: int = 0
    """Seed of the trainable weights, the data order and the augmentations."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_config: dict[str, Any] = field(default_factory=dict)
    """The caller's whole config as plain data (other stages' sections too), recorded with the run:
    ``pipeline_config.yaml``, the MLflow params and the resume fingerprint. Its name, seed, model
    and train entries are replaced by the fields above; empty: those four alone."""
