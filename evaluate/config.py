"""Settings of the evaluate stage (the ``evaluate:`` section of a pipeline config).

No torch or Ray here, so the CLI validates configs without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pipeline.core.config import to_dict, without_later_defaults


@dataclass
class EvaluateConfig:
    """How a trained model is scored on a test set (paper protocol, section 3 of the reference)."""

    OUTPUT_NEUTRAL_KEYS: ClassVar[tuple[str, ...]] = (
        "workers",
        "threads_per_worker",
        "write_maps",
        "mlflow_overlays",
        "baseline",
    )
    """Keys that change how fast or what else is written, never the figures: left out of
    :meth:`identity`, so figures of runs that differ only in them stay comparable."""

    format: Literal["mvtec", "visa", "folder"] = "mvtec"
    """Dataset layout of the evaluation data (see synth.datasets)."""
    categories: list[str] = field(default_factory=list)
    """Categories to evaluate; empty: every category the data has."""
    shots: int | Literal["all"] = "all"
    """``all`` (default): a memory bank of every normal image of the category's train split,
    coreset-reduced, fused with the decoder's map; a category without train normals falls back to
    the decoder's map. k > 0: k-shot, a bank of k normal references (the paper's few-shot
    protocol). 0: unsupervised, the decoder's map alone. With a bank, the decoder's own figures are
    reported beside (``decoder_only`` in metrics.json)."""
    reference_start: int = 0
    """k-shot references are the train images at sorted positions reference_start ...
    reference_start + k - 1 of the category (deterministic; recorded in metrics.json)."""
    use_llm: bool = True
    """Generate answers (accuracy from the parsed yes/no). False, or a model without an LLM: the
    paper's rule, threshold = highest score of a normal test image of the category."""
    workers: int = 1
    """Ray actors; each loads the model once. Metrics do not depend on this number."""
    threads_per_worker: int = 1
    """torch threads per actor. Fixed (not derived from the worker count) so that a run with one
    worker computes every batch bit-for-bit like a run with several."""
    use_gpu: bool = False
    """Actors on GPUs (the paper preset): the model and the batches go to cuda."""
    gpus_per_worker: float = 1.0
    """GPUs per actor with ``use_gpu``. A fraction lets several actors share a GPU (Ray packs them);
    each loads its own copy of the model, so leave it room (the demo-size model needs about 1 GiB,
    the paper preset about 16 GiB in fp16). Above 1 it must be a whole number."""
    batch_size: int = 8
    """Images per forward pass (and per task sent to an actor)."""
    mask_threshold: float = 0.1
    """Ground truth at the evaluation size: the mask is resized bilinearly (0..1) and a pixel is
    anomalous above this value (the reference's MVTec rule: Resize then > 0.1)."""
    allow_missing_masks: bool = False
    """An anomalous test image without its mask is an error naming it; true leaves such images out
    of the pixel metrics (they still count for image metrics) and counts them in the output. A
    category with no masks at all always gets image metrics only."""
    score_range: list[float] | None = None
    """[lo, hi] that every anomaly-map value must lie in (the pixel histograms span it); null:
    [0, 1], where the decoder's and the calibrated bank maps lie."""
    pixel_bins: int = 1 << 22
    """Bins of the mergeable pixel-score histograms (see evaluate.pixel_state)."""
    aupro_max_fpr: float = 0.3
    """Upper FPR limit of AUPRO (the MVTec AD convention)."""
    write_maps: bool = True
    """Write maps/<category>/<stem>.png overlays for every test image."""
    baseline: bool = True
    """With references (k-shot or all-shot), also score the plain nearest-neighbour memory of the
    same encoder and references (``baseline`` in metrics.json): the floor the model must clear.
    Costs about one more bank's distances per image; false skips it."""
    bank_budget: int | None = None
    """Patches per layer of each memory bank (greedy coreset above it); null: the checkpoint's
    ``memory_bank.max_patches``. Lower it for large categories on CPUs: build and search time grow
    with it."""
    feedback: str | None = None
    """A feedback folder (``pipeline feedback``): with references, each category's confirmed normals
    join its bank as cover, in the bank but not in its calibration, as ``serve`` and ``inspect
    --feedback`` bank them. A confirmed normal that the train folder also holds (a link to it, as
    ``retrain --feedback``'s merged data has) is cover only, not a reference. A confirmed normal
    that is also a test image is scored against a bank holding it: leave such images out of the
    test split."""
    mlflow_overlays: int = 2
    """Overlays per category logged to an active MLflow run (the worst-scored anomalous and the
    highest-scored normal images first)."""

    def __post_init__(self) -> None:
        if self.shots != "all" and (isinstance(self.shots, bool) or not isinstance(self.shots, int)):
            raise ValueError(f"shots must be an integer >= 0 or 'all', got {self.shots!r}")
        if (self.shots != "all" and self.shots < 0) or self.reference_start < 0:
            raise ValueError("shots and reference_start must be >= 0")
        if self.workers < 1 or self.threads_per_worker < 1 or self.batch_size < 1:
            raise ValueError("workers, threads_per_worker and batch_size must be >= 1")
        if self.gpus_per_worker <= 0 or (self.gpus_per_worker > 1 and self.gpus_per_worker % 1):
            raise ValueError(
                f"gpus_per_worker must be in (0, 1] or a whole number, got {self.gpus_per_worker}"
            )
        if not 0.0 <= self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in [0, 1), got {self.mask_threshold}")
        if self.score_range is not None and (
            len(self.score_range) != 2 or not self.score_range[1] > self.score_range[0]
        ):
            raise ValueError(f"score_range must be [lo, hi] with hi > lo, got {self.score_range}")
        if not 0.0 < self.aupro_max_fpr <= 1.0:
            raise ValueError(f"aupro_max_fpr must be in (0, 1], got {self.aupro_max_fpr}")
        if self.bank_budget is not None and self.bank_budget < 1:
            raise ValueError(f"bank_budget must be >= 1 or null, got {self.bank_budget}")
        if self.pixel_bins < 2:
            raise ValueError("pixel_bins must be >= 2")

    def identity(self) -> dict[str, Any]:
        """This section as plain data less ``OUTPUT_NEUTRAL_KEYS`` and the keys added later that hold
        their defaults (``pipeline.core.config.LATER_KEYS``): what the evaluation identity and the
        evaluate stage key hash."""
        plain = without_later_defaults(to_dict(self), section="evaluate")
        return {k: v for k, v in plain.items() if k not in self.OUTPUT_NEUTRAL_KEYS}

    def resolved_score_range(self) -> tuple[float, float]:
        if self.score_range is not None:
            return float(self.score_range[0]), float(self.score_range[1])
        return (0.0, 1.0)

    @property
    def uses_bank(self) -> bool:
        """Whether the maps come from a memory bank (k-shot or all-shot)."""
        return self.shots == "all" or self.shots > 0

    @property
    def setting(self) -> str:
        """``unsupervised``, ``all_shot`` or ``few_shot`` (metrics.json's ``setting``)."""
        if self.shots == "all":
            return "all_shot"
        return "few_shot" if self.shots else "unsupervised"
