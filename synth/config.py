"""Settings of the synth stage (the ``synth:`` section of a pipeline config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SynthConfig:
    """Simulated-anomaly generation and sharding."""

    size: int = 224
    """Side length in pixels of every written image and mask (the reference synthesises at 224)."""
