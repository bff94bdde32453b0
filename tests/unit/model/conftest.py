"""Shared fixtures of the model tests: the tiny preset and small generated images."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model_cache")


@pytest.fixture(scope="session")
def tiny_cfg(model_cache):
    from pipeline.pipeline_config import load_pipeline_config

    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml").model
    cfg.llm.cache_dir = model_cache
    return cfg


@pytest.fixture
def make_cfg(tiny_cfg):
    """A fresh copy of the tiny ModelConfig with attributes replaced (dotted names allowed)."""

    def make(**changes):
        cfg = copy.deepcopy(tiny_cfg)
        for key, value in changes.items():
            obj, *path = key.split("__")
            target = cfg
            for part in [obj, *path][:-1]:
                target = getattr(target, part)
            setattr(target, [obj, *path][-1], value)
        cfg.__post_init__()
        return cfg

    return make


def conversation(answer: str = "Yes, there is an anomaly in the image, at the top left of the image."):
    return [
        {"from": "human", "value": "Is there any anomaly in the image?"},
        {"from": "gpt", "value": answer},
    ]


@pytest.fixture
def tiny_batch():
    from train.model import Batch

    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g)
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, :, 8:24, 8:24] = 1.0
    return Batch(
        images, masks, ["grass", "grass"], [conversation(), conversation("No, there is no anomaly.")]
    )
