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
