"""One rank of tests/unit/train/test_pool_sharing.py: builds the few-shot reference pool shared
over a real gloo group and saves what it holds.

    python pool_sharing_worker.py RANK WORLD STORE_FILE OUT_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

CATEGORIES = {"grass": 4, "brick": 3, "coin": 3}


def pool_inputs() -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Seeded images per category (insertion order is not sorted order) and their sources."""
    g = torch.Generator().manual_seed(0)
    images = {c: torch.rand(n, 3, 64, 64, generator=g) for c, n in CATEGORIES.items()}
    return images, {c: [f"{c}/{i}.png" for i in range(n)] for c, n in CATEGORIES.items()}


def tiny_model():
    """The tiny preset's encoder and decoder (no LLM), seeded."""
    from pipeline.pipeline_config import load_pipeline_config
    from train.model.build import build_model

    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml").model
    cfg.use_llm, cfg.use_prompt_learner = False, False
    cfg.__post_init__()
    return build_model(cfg, seed=0).eval()


def flat(pool) -> dict[str, object]:
    """Everything the pool holds, by name: tensors and the calibrations' reprs."""
    out: dict[str, object] = {"order": list(pool.categories)}
    for category, entry in pool.categories.items():
        for i, m in enumerate(entry.patch_maps):
            out[f"{category}/map{i}"] = m
        out[f"{category}/sources"] = entry.sources
        for kind in ("one_shot", "all_shots"):
            measure = getattr(entry, kind)
            out[f"{category}/{kind}/calibration"] = repr(measure.calibration)
            out[f"{category}/{kind}/distances"] = measure.distances
            out[f"{category}/{kind}/scored"] = measure.scored
    return out


def main() -> None:
    import torch.distributed as dist

    from train.pool_sharing import build_shared_pool

    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        images, sources = pool_inputs()
        with torch.no_grad():
            pool = build_shared_pool(tiny_model(), images, sources, rank, world)
        torch.save(flat(pool), out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
