"""Learning-rate schedule and which data each micro-step takes: pure functions of the step number,
so resuming is exact."""

from __future__ import annotations

import math

from train.config import OptimizerConfig, ScheduleConfig, TrainConfig


def total_steps(train: TrainConfig, anomaly_samples: int) -> int:
    """Optimizer steps of the run: ``max_steps``, else enough for ``epochs`` passes over the shards."""
    if train.max_steps is not None:
        return train.max_steps
    per_step = train.global_batch_size * (1.0 - train.instruction_fraction)
    return max(1, math.ceil(train.epochs * anomaly_samples / per_step))


def warmup_steps(schedule: ScheduleConfig, total: int) -> int:
    return round(schedule.warmup_ratio * total)


class WarmupDecay:
    """LR multiplier per optimizer step: linear warm-up from 0, then cosine or linear decay.

    A class rather than a closure so ``LambdaLR.state_dict`` can save it with the checkpoint.
    """

    def __init__(self, schedule: ScheduleConfig, total: int) -> None:
        self.total = total
        self.warmup = warmup_steps(schedule, total)
        self.decay = schedule.decay
        self.floor = schedule.min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup  # step 0 already trains, at lr/warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1.0 - progress
        return self.floor + (1.0 - self.floor) * shape


def is_instruction_step(micro_step: int, fraction: float) -> bool:
    """Whether global micro-step ``micro_step`` uses instruction data.

    Spreads instruction micro-steps evenly: fraction 0.5 gives A, I, A, I, ...; 0.25 gives A, A, A, I.
    """
    return math.floor((micro_step + 1) * fraction) > math.floor(micro_step * fraction)


def count_instruction_steps(micro_steps: int, fraction: float) -> int:
    """Instruction micro-steps among the first ``micro_steps`` (closed form of the rule above)."""
    return math.floor(micro_steps * fraction)


def micro_step_kind(micro_step: int, fraction: float) -> tuple[bool, int]:
    """(is it an instruction step, its index among the micro-steps of its kind)."""
    if fraction <= 0:
        return False, micro_step
    instruction = is_instruction_step(micro_step, fraction)
    before = count_instruction_steps(micro_step, fraction)
    return instruction, before if instruction else micro_step - before


def parameter_groups(model, optimizer: OptimizerConfig) -> list[dict]:
    """The trainable parameters as optimizer groups, each with its peak learning rate: LoRA
    adapters (names with ``lora_``) at ``lora_lr`` when it is set, everything else at ``lr``. The
    schedule's multiplier applies to every group alike."""
    lora, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (lora if optimizer.lora_lr is not None and "lora_" in name else rest).append(param)
    if not lora and not rest:
        raise ValueError("the model has no trainable parameters (check the model section)")
    groups = [{"params": rest, "lr": optimizer.lr}] if rest else []
    return groups + ([{"params": lora, "lr": optimizer.lora_lr}] if lora else [])
