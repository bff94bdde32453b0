"""benchmarks/memory_plan.py: parameter counts against the architectures and the repository's own
modules (built on the meta device), and the ZeRO / offload arithmetic of the paper preset's plans."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.core.config import from_dict
from train.config import TrainConfig
from train.model.config import ModelConfig
from train.model.imagebind import ImageBindVisionEncoder
from train.model.imagebind_text import ImageBindTextEncoder

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "anomalygpt_vicuna7b.yaml"
torch.set_num_threads(1)


def _script():
    """benchmarks/memory_plan.py as a module (benchmarks/ is not a package)."""
    if "bench_memory_plan" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "bench_memory_plan", ROOT / "benchmarks" / "memory_plan.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_memory_plan"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_memory_plan"]


mp = _script()


def _report(edit=None) -> dict:
    raw = yaml.safe_load(PRESET.read_text())
    if edit is not None:
        raw = copy.deepcopy(raw)
        edit(raw)
    cfg = from_dict(ModelConfig, raw["model"], "test", "model")
    return mp.report(cfg, from_dict(TrainConfig, raw["train"], "test", "train"))


@pytest.fixture(scope="module")
def preset() -> dict:
    return _report()


def _row(report: dict, gpus: int, zero: int, offload: bool) -> dict:
    (row,) = [r for r in report["plans"] if (r["gpus"], r["zero"], r["offload"]) == (gpus, zero, offload)]
    return row


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_llama_7b_count_is_the_published_one():
    assert abs(mp.llama_params(**mp.LLAMA_7B) - 6.74e9) / 6.74e9 < 0.01


def test_frozen_tower_formulas_match_the_repository_modules():
    with torch.device("meta"):
        vision = ImageBindVisionEncoder(1280, 32, 16, 1024, 5120, grid=16, patch=14)
        text = ImageBindTextEncoder(49408, 1024, 24, 16, 1024, context=77)
    assert mp.vit_params(**mp.VIT_H14) == _params(vision)
    assert mp.text_tower_params(**mp.CLIP_H_TEXT) == _params(text)
    assert 6.2e8 < _params(vision) < 6.4e8  # ImageBind-Huge vision: ~630M


def test_preset_trains_only_the_decoder_and_prompt_learner(preset):
    parts = preset["model"]["parts"]
    assert {n for n, p in parts.items() if p["trainable"]} == {"decoder", "prompt_learner"}
    assert parts["decoder"]["params"] == 4 * (1280 * 1024 + 1024)  # 4 maps -> 1024-d text space
    conv5 = 1024 * 4096 * 25 + 4096  # the last conv (1024 -> hidden, 5x5) dominates
    assert conv5 < parts["prompt_learner"]["params"] < conv5 + 3e6
    assert preset["model"]["trainable"] == parts["decoder"]["params"] + parts["prompt_learner"]["params"]
    assert parts["lora"]["params"] == 32 * 4 * 32 * (4096 + 4096)  # frozen: loaded from the delta
    assert parts["text_encoder"]["device"] == "cpu"


def test_trainable_lora_and_projection_move_to_trainable(preset):
    def edit(raw):
        raw["model"]["lora"]["trainable"] = True
        raw["model"]["train_image_proj"] = True

    report = _report(edit)
    parts = preset["model"]["parts"]
    extra = parts["lora"]["params"] + parts["image_proj"]["params"]
    assert report["model"]["trainable"] == preset["model"]["trainable"] + extra
    assert report["model"]["frozen_on_gpu"] == preset["model"]["frozen_on_gpu"] - extra
    assert _row(report, 1, 2, False)["gpu_gib"] > _row(preset, 1, 2, False)["gpu_gib"]


def test_sequence_is_prefix_plus_text(preset):
    # bos + "### Human: <Img>" + image token + "</Img> " + 9 base prompts + 9 map tokens + the map
    # summary's verdict token and two where tokens, then the text
    assert preset["assumptions"]["sequence"] == 1 + 10 + 1 + 2 * 9 + 3 + 1024


def test_llm_activations_follow_the_stated_formula():
    s, b, h, a = 1000, 1, 4096, 32
    layers, scores = mp.llm_activation_bytes(b, s, labelled=0)
    assert layers == 32 * s * b * h * (34 + 5 * a * s / h)
    assert scores == 32 * s * b * 5 * a * s


def test_zero3_shards_the_weights_and_zero2_does_not(preset):
    for offload in (False, True):
        assert _row(preset, 8, 3, offload)["gpu_gib"] < _row(preset, 1, 3, offload)["gpu_gib"] - 10
        weights = [_row(preset, g, 2, offload)["breakdown_gib"]["weights"] for g in (1, 2, 8)]
        assert weights[0] == weights[1] == weights[2]


def test_offload_moves_optimizer_state_to_cpu(preset):
    for gpus in (1, 2, 8):
        for zero in (2, 3):
            on, off = _row(preset, gpus, zero, False), _row(preset, gpus, zero, True)
            assert off["gpu_gib"] < on["gpu_gib"]
            assert off["cpu_gib"] > on["cpu_gib"]


def test_zero2_and_zero3_agree_at_one_gpu(preset):
    for offload in (False, True):
        z2, z3 = _row(preset, 1, 2, offload), _row(preset, 1, 3, offload)
        for kind in ("weights", "gradients", "optimizer", "activations"):
            assert z2["breakdown_gib"][kind] == z3["breakdown_gib"][kind]
        gather = (mp.LLAMA_7B["vocab"] * mp.LLAMA_7B["hidden"] + mp.PREFETCH_BUCKET) * 2 / mp.GIB
        assert z3["gpu_gib"] - z2["gpu_gib"] == pytest.approx(gather, abs=0.02)


def test_main_prints_json_with_twelve_plans(capsys):
    mp.main(["--config", str(PRESET)])
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"model", "assumptions", "plans"}
    plans = out["plans"]
    assert len(plans) == 12
    assert len({(p["gpus"], p["zero"], p["offload"]) for p in plans}) == 12
    for p in plans:
        assert p["fits"] == [s for s in (24, 40, 48, 80, 141) if p["gpu_gib"] <= s]
        assert p["cpu_gib"] > 0
