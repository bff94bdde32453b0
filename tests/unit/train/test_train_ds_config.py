"""The DeepSpeed section: defaults, strict keys, batch arithmetic, DeepSpeed's own checks."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from train import ds_config
from train.config import TrainConfig


def build(section, workers=2, **kw):
    return ds_config.build(TrainConfig(deepspeed=section, **kw), workers)


def test_defaults_are_zero2_fp32_with_clipping_and_batch_sizes_derived():
    cfg = build({}, workers=2, global_batch_size=16, micro_batch_size=2)
    assert cfg["zero_optimization"] == {"stage": 2}
    assert cfg["gradient_clipping"] == 1.0
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"]) == (16, 2)
    assert cfg["gradient_accumulation_steps"] == 4
    assert ds_config.precision(cfg) == "fp32"


def test_same_global_batch_for_any_dividing_worker_count():
    for workers, accumulation in ((1, 8), (2, 4), (4, 2), (8, 1)):
        cfg = build({}, workers=workers, global_batch_size=16, micro_batch_size=2)
        assert cfg["gradient_accumulation_steps"] == accumulation
        assert accumulation * workers * 2 == cfg["train_batch_size"] == 16
    with pytest.raises(ConfigError, match="not a multiple"):
        build({}, workers=3, global_batch_size=16, micro_batch_size=2)


def test_user_section_merges_over_defaults():
    cfg = build({"zero_optimization": {"overlap_comm": False}, "bf16": {"enabled": True}})
    assert cfg["zero_optimization"] == {"stage": 2, "overlap_comm": False}
    assert ds_config.precision(cfg) == "bf16"
    assert cfg["data_types"] == {"buffer_dtype": "bf16"}  # buffers follow the precision ...
    kept = build({"fp16": {"enabled": True}, "data_types": {"buffer_dtype": "fp32"}})
    assert kept["data_types"] == {"buffer_dtype": "fp32"}  # ... unless set
    assert "data_types" not in build({})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"gradient_cliping": 1.0},
            "unknown key 'train.deepspeed.gradient_cliping' (did you mean 'gradient_clipping'",
        ),
        ({"optimizer": {"type": "AdamW"}}, "set it with train.optimizer"),
        ({"train_batch_size": 32}, "set it with train.global_batch_size"),
        ({"scheduler": {}}, "train.schedule"),
        ({"bfloat16": {"enabled": True}}, "bf16 section"),
        ({"activation_checkpointing": {"partition_activation": True}}, "partition_activations"),
        ({"gradient_clipping": "1.0"}, "must be a number"),
        ({"zero_optimization": 2}, "must be a mapping"),
    ],
)
def test_bad_keys_are_errors_naming_the_key(section, message):
    with pytest.raises(ConfigError) as err:
        build(section)
    assert message in str(err.value)


def test_deepspeed_schema_catches_the_reference_bf16_typo_and_nested_typos():
    with pytest.raises(ConfigError, match=r"train\.deepspeed\.bf16\.enable: Extra inputs"):
        ds_config.check_with_deepspeed(build({"bf16": {"enable": True}}))
    with pytest.raises(ConfigError, match=r"zero_optimization\.offload_optimizer\.devices"):
        ds_config.check_with_deepspeed(
            build({"zero_optimization": {"offload_optimizer": {"devices": "cpu"}}})
        )
    with pytest.raises(ConfigError, match="cannot be simultaneously enabled"):
        ds_config.check_with_deepspeed(build({"bf16": {"enabled": True}, "fp16": {"enabled": True}}))
    ds_config.check_with_deepspeed(build({"fp16": {"enabled": True}, "zero_optimization": {"stage": 3}}))


def test_offload_detection():
    assert ds_config.offloads_optimizer(
        build({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}})
    )
    assert not ds_config.offloads_optimizer(build({}))


def test_presets_are_valid(tiny_config):
    from pathlib import Path

    from pipeline.pipeline_config import load_pipeline_config

    root = Path(__file__).resolve().parents[3] / "configs"
    paper = load_pipeline_config(root / "anomalygpt_vicuna7b.yaml").train
    cfg = ds_config.build(paper, workers=2)
    ds_config.check_with_deepspeed(cfg)
    assert cfg["gradient_accumulation_steps"] == 8  # the reference's 8 micro-steps per GPU on 2 GPUs
    assert ds_config.precision(cfg) == "fp16" and ds_config.offloads_optimizer(cfg)
    assert paper.schedule.decay == "linear" and paper.optimizer.betas == (0.9, 0.95)
    ds_config.check_with_deepspeed(ds_config.build(tiny_config.train, workers=2))
