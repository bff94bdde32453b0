"""Settings of the synth stage (the ``synth:`` section of a pipeline config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pipeline.core.config import to_dict


@dataclass
class SynthConfig:
    """Simulated-anomaly generation and sharding."""

    OUTPUT_NEUTRAL_KEYS: ClassVar[tuple[str, ...]] = ("workers",)
    """Keys that never change the shards (any worker count writes the same bytes): left out of
    :meth:`identity`, so changing them neither re-plans nor re-runs the stage."""

    format: Literal["mvtec", "visa", "folder"] = "mvtec"
    """Layout of the normal-image dataset (see docs/data.md)."""
    categories: list[str] = field(default_factory=list)
    """Categories to use; empty means every category found under the dataset root."""
    size: int = 224
    """Side length in pixels of every written image and mask (the reference synthesises at 224)."""
    per_image: int = 1
    """Anomalous samples made from each normal image (each normal image also gives one normal sample);
    training pairs each of them with that normal sample."""
    samples_per_shard: int = 256
    """Target samples per WebDataset tar shard (one Ray task writes one shard): a shard holds whole
    source images (normal + its ``per_image`` anomalies), as many as fit, at least one."""
    workers: int = 0
    """Ray tasks run at once; 0 means one per CPU that Ray reports."""
    source: Literal["same_category", "any"] = "same_category"
    """Where the pasted patch comes from: another normal image of the same category, or of any category."""
    clone: Literal["normal", "mixed"] = "normal"
    """cv2.seamlessClone mode: NORMAL_CLONE (Poisson, the reference) or MIXED_CLONE."""
    max_patches: int = 2
    """Patches per anomalous image: the first always, each further one with ``extra_patch_prob``."""
    extra_patch_prob: float = 0.5
    """Probability of adding each patch after the first (the reference adds a second with 0.5)."""
    augment: bool = True
    """Transform the source patch before pasting: rot90 (k in 0..3) then albumentations (flips, colour
    jitter, blur)."""
    label_mode: Literal["binary", "logistic"] = "binary"
    """``binary``: changed pixels form the mask; ``logistic``: the reference's soft label, thresholded."""
    soft_threshold: float = 0.3
    """Threshold on the logistic soft label (the reference uses 0.3) when ``label_mode`` is logistic."""
    retries: int = 8
    """Synthesis attempts per anomalous sample before it falls back to a normal sample (counted)."""
    placement_attempts: int = 200
    """Tries to find a patch on the object for object categories (the reference uses 200)."""
    png_compression: int = 1
    """PNG zlib level 0-9 for written images and masks (1 is fast and still lossless)."""
    bounds_file: str | None = None
    """YAML with per-category synthesis bounds; None uses the packaged synth/data/categories.yaml."""
    bare_question_share: float = 0.5
    """Share of samples whose question comes without the class description ("Is there any anomaly
    in the image?" alone; the rest, as the reference, "<description> Is there any ...?"), drawn per
    sample, so that the model also answers a user who asks without describing the product."""

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be >= 32, got {self.size}")
        if self.per_image < 0:
            raise ValueError(f"per_image must be >= 0, got {self.per_image}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.max_patches < 1:
            raise ValueError(f"max_patches must be >= 1, got {self.max_patches}")
        if not 0.0 <= self.extra_patch_prob <= 1.0:
            raise ValueError(f"extra_patch_prob must be in [0, 1], got {self.extra_patch_prob}")
        if not 0.0 < self.soft_threshold < 1.0:
            raise ValueError(f"soft_threshold must be in (0, 1), got {self.soft_threshold}")
        if self.retries < 1:
            raise ValueError(f"retries must be >= 1, got {self.retries}")
        if not 0.0 <= self.bare_question_share <= 1.0:
            raise ValueError(f"bare_question_share must be in [0, 1], got {self.bare_question_share}")
        if not 0 <= self.png_compression <= 9:
            raise ValueError(f"png_compression must be in 0..9, got {self.png_compression}")

    def identity(self) -> dict[str, Any]:
        """This section as plain data less ``OUTPUT_NEUTRAL_KEYS``: what the shard plan id, the
        manifest's ``config`` and the synth stage key hash."""
        return {k: v for k, v in to_dict(self).items() if k not in self.OUTPUT_NEUTRAL_KEYS}
