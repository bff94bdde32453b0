"""The demo LLM: SmolLM2-135M-Instruct converted once from the packaged GGUF, then cached."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_smollm2_converts_once_caches_and_answers(tmp_path):
    from pipeline.pipeline_config import load_pipeline_config
    from train.model import build_model
    from train.model.llm import load_smollm2

    root = Path(__file__).resolve().parents[3]
    cfg = load_pipeline_config(root / "configs" / "demo.yaml", [f"model.llm.cache_dir={tmp_path}"]).model
    model = build_model(cfg)  # converts the GGUF into tmp_path (~30 s on 2 cores)
    cached = list(tmp_path.glob("smollm2-*/model.safetensors"))
    assert len(cached) == 1 and cached[0].stat().st_size > 400e6
    assert model.llm.config.hidden_size == 576 and model.llm.config.num_hidden_layers == 30

    start = time.perf_counter()
    again, tokenizer = load_smollm2(tmp_path)
    assert time.perf_counter() - start < 15  # a reload, not a second conversion
    with torch.no_grad():
        ids = tokenizer("What is a scratch on a metal surface?", return_tensors="pt")["input_ids"]
        a = model.llm(input_ids=ids).logits
        b = again(inputs_embeds=again.get_input_embeddings()(ids)).logits
    assert torch.equal(a, b)

    images = torch.rand(1, 3, 224, 224)
    first = model.predict(images, ["grass"])[0]
    second = model.predict(images, ["grass"])[0]
    assert first.answer == second.answer and isinstance(first.answer, str) and "###" not in first.answer
    assert first.anomaly_map.shape == (224, 224)


def _convert_as_rank(rank: int, world: int, init_file: str, cache: str) -> None:
    import torch.distributed as dist

    from train.model.llm import load_smollm2

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        if rank == 1:  # a Ray Train worker that is not rank 0 wins the cache lock
            load_smollm2(Path(cache))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_conversion_on_a_rank_other_than_0_writes_the_weights(tmp_path):
    """transformers' save_pretrained writes nothing on ranks > 0 under torch.distributed."""
    import torch.multiprocessing as mp

    cache = tmp_path / "cache"
    mp.spawn(_convert_as_rank, args=(2, str(tmp_path / "init"), str(cache)), nprocs=2, join=True)
    folder = next(p for p in cache.glob("smollm2-*") if p.is_dir())
    assert (folder / "model.safetensors").stat().st_size > 400e6
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
