"""GPU memory per device for TRAINING the paper preset (ImageBind-Huge + Vicuna-7B), computed, not measured.

No GPU, no weights, no downloads, a few seconds on CPU. Parameter counts come from the architectures'
dimensions; the small trainable modules (decoder, prompt learner) are built from the repository's own
classes on torch's meta device (shapes only). Bytes follow the precision and the ZeRO stage; LLM
activations follow Korthikanti et al. 2022 without recomputation. The table covers 1, 2 and 8 GPUs
(one node) x ZeRO-2/3 x optimizer offload to CPU, with the GPU sizes (GiB) each plan fits.

    python benchmarks/memory_plan.py [--config configs/anomalygpt_vicuna7b.yaml]

Prints one JSON object: {"model": ..., "assumptions": ..., "plans": [...]}. It is an estimate: a
real run adds allocator fragmentation and library workspaces, so keep a few GiB of headroom.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

from pipeline.core.config import from_dict  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.model.config import WHERE_WORDS, ModelConfig  # noqa: E402

GIB = 2**30
LLAMA_7B = {"hidden": 4096, "layers": 32, "heads": 32, "intermediate": 11008, "vocab": 32000}
VIT_H14 = {"width": 1280, "depth": 32, "heads": 16, "mlp": 5120, "patch": 14, "grid": 16, "out": 1024}
CLIP_H_TEXT = {"vocab": 49408, "width": 1024, "depth": 24, "context": 77, "out": 1024}
TEXT_PREFIX_TOKENS = 10  # "### Human: <Img>" (6) + "</Img> " (4) in LLaMA's SentencePiece
LOGIT_BYTES = 10  # per labelled position and vocabulary entry: fp16 logits, fp32 copy, fp32 log-softmax
OPTIMIZER_BYTES = 12  # fp32 master weight + Adam m and v
CUDA_CONTEXT_GIB = 1.5
REDUCE_BUCKET = 500_000_000  # DeepSpeed's reduce_bucket_size: one contiguous 16-bit buffer (both stages)
PREFETCH_BUCKET = 50_000_000  # ZeRO-3 stage3_prefetch_bucket_size
POOL_CATEGORIES = 15  # MVTec AD: categories whose normal images the few-shot reference pool holds
GPU_SIZES_GIB = (24, 40, 48, 80, 141)
GPUS = (1, 2, 8)


def n_maps(cfg: ModelConfig) -> int:
    """Encoder maps the decoder reads (ImageBind's default: blocks 7, 15, 23, 31)."""
    return len(cfg.encoder.layers or (7, 15, 23, 31))


def llama_params(hidden: int, layers: int, intermediate: int, vocab: int, **_: int) -> int:
    """Attention (4 h x h), SwiGLU MLP (3 h x i), two RMSNorms per layer; untied embedding and head."""
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    return 2 * vocab * hidden + layers * per_layer + hidden


def block_params(width: int, mlp: int) -> int:
    """Pre-norm block: attention in/out projections with biases, two LayerNorms, MLP with biases."""
    return 4 * width * width + 4 * width + 4 * width + 2 * width * mlp + mlp + width


def vit_params(width: int, depth: int, mlp: int, patch: int, grid: int, out: int, **_: int) -> int:
    """ImageBind vision: Conv3d stem over 2 frames (no bias), cls, positions, pre-LN, blocks, head."""
    stem, tokens = 3 * 2 * patch * patch * width, (2 + grid * grid) * width  # cls and positions
    return stem + tokens + 2 * width + depth * block_params(width, mlp) + 2 * width + width * out


def text_tower_params(vocab: int, width: int, depth: int, context: int, out: int) -> int:
    """ImageBind text (OpenCLIP-H): token and position embeddings, blocks (MLP 4x), LN, projection."""
    return (vocab + context) * width + depth * block_params(width, 4 * width) + 2 * width + width * out


def lora_params(cfg: ModelConfig, hidden: int, intermediate: int, layers: int) -> int:
    """r x (in + out) per targeted linear map (A: in -> r, B: r -> out), in every layer."""
    mlp = dict.fromkeys(("gate_proj", "up_proj", "down_proj"), hidden + intermediate)
    per_layer = sum(cfg.lora.r * mlp.get(t, 2 * hidden) for t in cfg.lora.targets)  # q/k/v/o: h -> h
    return layers * per_layer if cfg.lora.enabled else 0


def small_trainables(cfg: ModelConfig, hidden: int, text_dim: int) -> dict[str, int]:
    """Decoder and prompt learner built from the repository's classes on the meta device: exact
    counts without allocating or initialising anything."""
    import torch

    from train.model.decoder import AnomalyDecoder
    from train.model.map_summary import MapSummary
    from train.model.prompt_learner import PromptLearner

    torch.set_num_threads(1)
    out = {}
    with torch.device("meta"):
        if cfg.use_decoder:
            out["decoder"] = AnomalyDecoder([VIT_H14["width"]] * n_maps(cfg), text_dim)
        if cfg.use_llm and cfg.use_prompt_learner:
            global_dim = VIT_H14["out"] if cfg.prompt_global else None
            rms = 1.0 if cfg.embedding_scale else None  # any value: it only switches the cell embeddings on
            summary = None
            if cfg.summary_tokens:
                words = torch.empty(9, WHERE_WORDS, hidden)
                summary = MapSummary(torch.empty(2, hidden), words, embed_rms=1.0)
            out["prompt_learner"] = PromptLearner(
                hidden,
                cfg.prompt_tokens,
                cfg.prompt_channels,
                global_dim,
                cfg.use_decoder,
                embed_rms=rms,
                summary=summary,
            )
    return {name: sum(p.numel() for p in module.parameters()) for name, module in out.items()}


def model_parts(cfg: ModelConfig) -> dict[str, dict[str, Any]]:
    """Each part: parameters, trainable or frozen, and where it lives during training."""
    h, layers, inter = LLAMA_7B["hidden"], LLAMA_7B["layers"], LLAMA_7B["intermediate"]
    text = cfg.text_encoder == "imagebind"
    text_dim = CLIP_H_TEXT["out"] if text else 384  # MiniLM's 384-d sentences otherwise

    def part(n: int, trainable: bool, device: str = "gpu", note: str = "") -> dict[str, Any]:
        return {"params": n, "trainable": trainable, "device": device} | ({"note": note} if note else {})

    parts = {
        "vision_encoder": part(vit_params(**VIT_H14), False, note="ViT-H/14, run under no_grad"),
        "llm": part(llama_params(**LLAMA_7B), False, note="Vicuna-7B; backward runs through it"),
        "lora": part(lora_params(cfg, h, inter, layers), cfg.lora.trainable),
        "image_proj": part(VIT_H14["out"] * h + h, cfg.train_image_proj),
    }
    if text and cfg.use_decoder:
        note = "fp32 on CPU outside the engine's module tree; runs once per category (features cached)"
        parts["text_encoder"] = part(text_tower_params(**CLIP_H_TEXT), False, "cpu", note)
    for name, n in small_trainables(cfg, h, text_dim).items():
        parts[name] = part(n, True)
    return parts


def llm_activation_bytes(b: int, s: int, labelled: int) -> tuple[int, int]:
    """All layers' saved activations in 16-bit, s*b*h*(34 + 5*a*s/h) each, plus the logits; and the
    share of the attention-score term 5*a*s/h (what fused SDPA/flash attention would not store)."""
    h, a, n = LLAMA_7B["hidden"], LLAMA_7B["heads"], LLAMA_7B["layers"]
    layers = n * s * b * (34 * h + 5 * a * s)
    return layers + b * labelled * LLAMA_7B["vocab"] * LOGIT_BYTES, n * s * b * 5 * a * s


def vision_activation_bytes(cfg: ModelConfig, b: int, w: int, text_dim: int) -> int:
    """Encoder (no grad: the largest live block only, plus the kept maps), decoder and prompt learner
    (saved for backward). Small next to the LLM's."""
    v, side = VIT_H14, cfg.image_size
    tokens, maps = (side // v["patch"]) ** 2 + 1, n_maps(cfg)
    encoder = b * (3 * tokens * v["width"] + tokens * v["mlp"] + v["heads"] * tokens**2)
    kept = maps * b * (tokens - 1) * v["width"]
    decoder = maps * b * ((tokens - 1) * text_dim + 4 * 2 * side * side)  # tokens, logits, upsampled, softmax
    prompt = b * sum(9 * c * (side >> i) ** 2 // 4 for i, c in enumerate(cfg.prompt_channels))
    return w * (encoder + kept + decoder + prompt)


def plan(gpus: int, zero: int, offload: bool, n: dict[str, int], act: int, w: int) -> dict[str, Any]:
    """One row: GPU bytes by kind (weights sharded by ZeRO-3 only), CPU bytes per node."""
    shard, t = (gpus if zero == 3 else 1), n["trainable"]
    gpu = {
        "weights": (n["frozen_on_gpu"] + t) * w / shard,
        "gradients": 0 if offload else t * w / gpus,
        "optimizer": 0 if offload else t * OPTIMIZER_BYTES / gpus,
        "activations": act,
        "buffers": REDUCE_BUCKET * w + (zero == 3) * (n["largest_module"] + PREFETCH_BUCKET) * w,
        "cuda_context": CUDA_CONTEXT_GIB * GIB,
    }
    total = sum(gpu.values()) / GIB
    cpu = gpus * n["cpu_per_worker"] + offload * t * (OPTIMIZER_BYTES + 4)
    row = {"gpus": gpus, "zero": zero, "offload": offload, "gpu_gib": round(total, 2)}
    return row | {
        "cpu_gib": round(cpu / GIB, 2),
        "fits": [size for size in GPU_SIZES_GIB if total <= size],
        "breakdown_gib": {k: round(v / GIB, 3) for k, v in gpu.items()},
        "cpu_build_peak_gib": round(gpus * n["build_bytes"] / GIB, 1),
    }


def report(cfg: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """Parameter counts, assumptions and the 12 plans, as one JSON-ready dict."""
    parts = model_parts(cfg)
    w = 4 if train.precision == "fp32" else 2

    def total(keep) -> int:
        return sum(p["params"] for p in parts.values() if keep(p))

    on_cpu = total(lambda p: p["device"] == "cpu")
    # Reference pool: fp32 maps of each category's normal images, 4 rotations each, kept on the CPU.
    image_maps = 4 * n_maps(cfg) * VIT_H14["grid"] ** 2 * VIT_H14["width"]
    pool = POOL_CATEGORIES * cfg.few_shot_train_pool * image_maps
    counts = {
        "trainable": total(lambda p: p["trainable"]),
        "frozen_on_gpu": total(lambda p: p["device"] == "gpu" and not p["trainable"]),
        "frozen_on_cpu": on_cpu,
        "largest_module": LLAMA_7B["vocab"] * LLAMA_7B["hidden"],  # embedding / LM head (ZeRO-3 gather)
        "cpu_per_worker": 4 * on_cpu + (4 * pool if cfg.few_shot_train_prob > 0 else 0),
        "build_bytes": 4 * total(lambda p: True),  # each worker builds in fp32 before DeepSpeed casts
    }
    b, text_dim = train.micro_batch_size, CLIP_H_TEXT["out"] if "text_encoder" in parts else 384
    summary = cfg.summary_tokens
    prompts = 2 * cfg.prompt_tokens + summary if "prompt_learner" in parts else 0
    prefix = 1 + TEXT_PREFIX_TOKENS + 1 + prompts
    seq = prefix + cfg.llm.max_tgt_len
    llm_act, scores = llm_activation_bytes(b, seq, cfg.llm.max_tgt_len)
    act = llm_act + vision_activation_bytes(cfg, b, w, text_dim)
    ds = train.deepspeed.get("zero_optimization", {})
    assumptions = {
        "precision": f"{train.precision}: {w} B per weight (auto = bf16 or fp16 on GPUs)",
        "trainable_bytes": f"{w} weight + {w} grad + {OPTIMIZER_BYTES} optimizer (fp32 master, Adam m, v)",
        "zero2": "trainable params' gradients and optimizer state partitioned; all weights replicated",
        "zero3": "all weights (frozen ones too) partitioned as well; + gather (largest module + prefetch)",
        "offload": "optimizer state and fp32 gradient partitions (4 B) in CPU RAM, both stages",
        "micro_batch": b,
        "prefix_tokens": f"{prefix} = bos + {TEXT_PREFIX_TOKENS} template + image + 2 x {cfg.prompt_tokens}"
        + (f" + {summary} summary" if summary else ""),
        "sequence": seq,
        "llm_activations": f"per layer s*b*h*(34 + 5*a*s/h) B, 16-bit, no recomputation (Korthikanti 2022),"
        f" s={seq} b={b} h={LLAMA_7B['hidden']} a={LLAMA_7B['heads']}; + logits b*{cfg.llm.max_tgt_len}"
        f"*vocab*{LOGIT_BYTES} B; + encoder (no grad), decoder, prompt learner",
        "activations_gib": round(act / GIB, 2),
        "attention_scores_gib": round(scores / GIB, 2),
        "buffers": f"reduce bucket {REDUCE_BUCKET:.0e} elements x {w} B (DeepSpeed default)",
        "cuda_context_gib": CUDA_CONTEXT_GIB,
        "cpu_gib": f"per node (all GPUs in one): per worker the fp32 text tower and reference pool"
        f" ({POOL_CATEGORIES} categories); + offloaded optimizer state and gradients",
        "preset_deepspeed": {"zero": ds.get("stage", 2), "offload": "offload_optimizer" in ds},
    }
    rows = [plan(g, z, o, counts, act, w) for g in GPUS for z in (2, 3) for o in (False, True)]
    return {"model": {"parts": parts, **counts}, "assumptions": assumptions, "plans": rows}


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "anomalygpt_vicuna7b.yaml")
    args = parser.parse_args(argv)
    raw = yaml.safe_load(args.config.read_text()) or {}
    cfg = from_dict(ModelConfig, raw.get("model"), str(args.config), "model")
    train = from_dict(TrainConfig, raw.get("train"), str(args.config), "train")
    print(json.dumps(report(cfg, train), indent=1))


if __name__ == "__main__":
    main()
