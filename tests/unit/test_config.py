"""Strict config loading: unknown keys, types, overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from pipeline.core.config import ConfigError, apply_overrides, flatten, from_dict, load_config, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    stage: Literal[0, 1, 2, 3] = 2
    layers: tuple[int, ...] = (1, 2)


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    enabled: bool = True
    path: Path | None = None
    inner: Inner = field(default_factory=Inner)


def test_unknown_key_names_key_and_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("inner:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'inner\.lrr'"):
        load_config(Outer, cfg)


def test_unknown_top_level_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match="'stepz'"):
        load_config(Outer, cfg)


def test_types_are_checked_and_coerced(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 5\ninner:\n  lr: 1e-4\n  layers: [3, 4, 5]\npath: ~/data\n")
    out = load_config(Outer, cfg)
    assert out.steps == 5
    assert out.inner.lr == pytest.approx(1e-4)  # YAML reads 1e-4 as a string; coerced
    assert out.inner.layers == (3, 4, 5)
    assert out.path == Path("~/data").expanduser()
    with pytest.raises(ConfigError, match="steps must be an integer"):
        from_dict(Outer, {"steps": "many"})
    with pytest.raises(ConfigError, match="enabled must be true or false"):
        from_dict(Outer, {"enabled": "yes please"})
    with pytest.raises(ConfigError, match=r"inner\.stage must be one of"):
        from_dict(Outer, {"inner": {"stage": 4}})


def test_set_overrides_any_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 5\n")
    out = load_config(Outer, cfg, ["inner.lr=0.5", "steps=7", "inner.layers=[9]", "name=run one"])
    assert (out.steps, out.inner.lr, out.inner.layers, out.name) == (7, 0.5, (9,), "run one")
    with pytest.raises(ConfigError, match=r"unknown key 'inner\.nope'"):
        load_config(Outer, cfg, ["inner.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["steps"])


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "absent.yaml")


def test_round_trip_and_flatten():
    out = from_dict(Outer, {"inner": {"lr": 0.25}})
    data = to_dict(out)
    assert from_dict(Outer, data) == out
    assert flatten(data)["inner.lr"] == 0.25


def test_presets_load():
    from pipeline.pipeline_config import load_pipeline_config

    for preset in sorted(Path("configs").glob("*.yaml")):
        cfg = load_pipeline_config(preset)
        assert cfg.name, preset
