"""The DeepSpeed section: defaults, strict keys, batch arithmetic, DeepSpeed's own checks."""

from __future__ import annotations

import pytest

from pipeline.core.config import ConfigError
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
    cfg = build({"zero_optimization": {"overlap_comm": False}}, precision="bf16")
    assert cfg["zero_optimization"] == {"stage": 2, "overlap_comm": False}
    assert ds_config.precision(cfg) == "bf16"
    assert cfg["data_types"] == {"buffer_dtype": "bf16"}  # buffers follow the precision ...
    kept = build({"data_types": {"buffer_dtype": "fp32"}}, precision="fp16")
    assert kept["data_types"] == {"buffer_dtype": "fp32"}  # ... unless set
    assert "data_types" not in build({})


def test_precision_has_one_home_and_auto_is_fp32_on_cpu_and_decided_on_gpus():
    with pytest.raises(ConfigError, match=r"fp16\.enabled is not accepted here; set train\.precision"):
        build({"fp16": {"enabled": True}})
    assert ds_config.precision(build({})) == "fp32"  # auto without GPUs
    on_gpus = build({"fp16": {"initial_scale_power": 12}}, use_gpu=True)
    assert ds_config.precision(on_gpus) == "fp32" and "enabled" not in on_gpus["fp16"]  # workers decide
    assert ds_config.driver_precision(TrainConfig(use_gpu=True)) == "auto"
    assert ds_config.resolve_precision("auto", bf16_everywhere=True) == "bf16"
    assert ds_config.resolve_precision("auto", bf16_everywhere=False) == "fp16"
    assert ds_config.resolve_precision("fp32", bf16_everywhere=True) == "fp32"  # an explicit choice stays
    chosen = ds_config.with_precision(on_gpus, "fp16")
    assert chosen["fp16"] == {"initial_scale_power": 12, "enabled": True}  # the user's scaling kept
    assert chosen["data_types"] == {"buffer_dtype": "fp16"} and "enabled" not in on_gpus["fp16"]
    switched = ds_config.with_precision(chosen, "bf16")
    assert (switched["bf16"]["enabled"], switched["fp16"]["enabled"]) == (True, False)
    ds_config.check_with_deepspeed(chosen)
    ds_config.check_with_deepspeed(switched)


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
    ds_config.check_with_deepspeed(build({"zero_optimization": {"stage": 3}}, precision="fp16"))


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
    assert paper.precision == "auto" and ds_config.offloads_optimizer(cfg)
    assert ds_config.driver_precision(paper) == "auto"  # bf16 on GPUs that have it, else fp16
    assert paper.schedule.decay == "linear" and paper.optimizer.betas == (0.9, 0.95)
    ds_config.check_with_deepspeed(ds_config.build(tiny_config.train, workers=2))
