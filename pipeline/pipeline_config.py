"""The whole pipeline's config: one YAML file with a section per stage (see configs/)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from evaluate.config import EvaluateConfig
from pipeline.core.config import load_config, to_dict
from pipeline.registry import RegistryConfig
from synth.config import SynthConfig
from train.config import TrainConfig, TrainJobConfig
from train.model.config import ModelConfig


@dataclass
class PipelineConfig:
    """Top level of configs/*.yaml."""

    name: str = "anomalygpt"
    """Run name: used for the run folder and MLflow experiment."""
    seed: int = 0
    """Seed for every random choice of every stage."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def train_job(self) -> TrainJobConfig:
        """The train stage's config; the whole config rides along, as the run records it."""
        return TrainJobConfig(self.name, self.seed, self.model, self.train, run_config=to_dict(self))


def load_pipeline_config(path: str | Path | None, overrides: Sequence[str] = ()) -> PipelineConfig:
    return load_config(PipelineConfig, path, overrides)
