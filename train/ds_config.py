"""The DeepSpeed config of a run: defaults, the user's section, batch sizes; checked strictly.

DeepSpeed ignores unknown top-level keys and misspelled keys in several sections, so a typo such
as the reference's ``"bf16": {"enable": true}`` would silently train in another precision. Here
every key is checked against train/deepspeed.yaml and then against DeepSpeed's own schema, in the
driver, before any worker starts.
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import ConfigError
from train.config import TrainConfig

SECTION = "train.deepspeed"
PRECISION_SECTIONS = ("bf16", "fp16")
_TYPES = {"bool": (bool,), "integer": (int,), "number": (int, float), "string": (str,)}


@functools.cache
def schema() -> dict[str, Any]:
    return yaml.safe_load(Path(__file__).with_name("deepspeed.yaml").read_text())


def validate_section(section: dict[str, Any]) -> None:
    """Reject keys DeepSpeed would ignore and keys owned by other train settings."""
    if not isinstance(section, dict):
        raise ConfigError(f"{SECTION} must be a mapping, got {section!r}")
    keys, owned = schema()["keys"], schema()["owned"]
    for key, value in section.items():
        where = f"{SECTION}.{key}"
        if key in owned:
            raise ConfigError(f"{where} is not accepted here; set it with {owned[key]}")
        kind = keys.get(key)
        if kind is None:
            raise ConfigError(f"unknown key {where!r}{_suggest(key, keys)}")
        if kind == "model" or isinstance(kind, list):
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a mapping, got {value!r}")
            if key in PRECISION_SECTIONS and "enabled" in value:
                raise ConfigError(
                    f"{where}.enabled is not accepted here; set train.precision (auto, fp32, bf16 or fp16)"
                )
            if isinstance(kind, list):
                for sub in value:
                    if sub not in kind:
                        raise ConfigError(f"unknown key '{where}.{sub}'{_suggest(sub, kind)}")
        elif not isinstance(value, _TYPES[kind]) or (kind != "bool" and isinstance(value, bool)):
            raise ConfigError(f"{where} must be a {kind}, got {value!r}")


def driver_precision(train: TrainConfig) -> str:
    """``train.precision`` as far as the driver can decide it: ``auto`` stays ``auto`` on GPUs,
    where the workers choose (the driver of a cluster may have no GPU to ask)."""
    if train.precision != "auto":
        return train.precision
    return "auto" if train.use_gpu else "fp32"


def resolve_precision(driver_choice: str, bf16_everywhere: bool) -> str:
    """The precision a GPU worker trains in: ``auto`` is bf16 if every worker's GPU has it, else fp16."""
    if driver_choice != "auto":
        return driver_choice
    return "bf16" if bf16_everywhere else "fp16"


def with_precision(config: dict[str, Any], chosen: str) -> dict[str, Any]:
    """A copy of ``config`` that trains in ``chosen`` (fp32, bf16 or fp16)."""
    if chosen not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16 here, got {chosen!r}")
    config = copy.deepcopy(config)
    for section in PRECISION_SECTIONS:
        if section in config or section == chosen:
            config.setdefault(section, {})["enabled"] = section == chosen
    if chosen != "fp32":  # buffers too (e.g. the encoder's normalisation), or fp32 buffers upcast the input
        config.setdefault("data_types", {}).setdefault("buffer_dtype", chosen)
    return config


def build(train: TrainConfig, workers: int) -> dict[str, Any]:
    """The full DeepSpeed config for ``workers`` data-parallel workers (validated section inside).
    With ``train.precision`` auto on GPUs the precision sections stay off: the workers set them."""
    validate_section(train.deepspeed)
    config = _merge(copy.deepcopy(schema()["defaults"]), train.deepspeed)
    driver_choice = driver_precision(train)
    if driver_choice != "auto":
        config = with_precision(config, driver_choice)
    try:
        accumulation = train.accumulation_steps(workers)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    config.update(
        train_batch_size=train.global_batch_size,
        train_micro_batch_size_per_gpu=train.micro_batch_size,
        gradient_accumulation_steps=accumulation,
    )
    return config


def check_with_deepspeed(config: dict[str, Any]) -> None:
    """Let DeepSpeed parse ``config``: each schema-checked section alone (so an error names its key),
    then the whole (cross-key rules such as bf16 with fp16)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    base = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}
    models = [k for k, kind in schema()["keys"].items() if kind == "model" and k in config]
    for key in models:
        try:
            DeepSpeedConfig({**base, key: config[key]})
        except Exception as exc:
            raise ConfigError(_describe(exc, f"{SECTION}.{key}")) from exc
    probe = {k: v for k, v in config.items() if k != "train_batch_size"}  # no process group yet: 1 rank
    try:
        DeepSpeedConfig(probe)
    except Exception as exc:  # AssertionError, DeepSpeedConfigError, ValueError
        raise ConfigError(_describe(exc, SECTION)) from exc


def precision(config: dict[str, Any]) -> str:
    """ "bf16", "fp16" or "fp32": the dtype the engine keeps the model in."""
    if config.get("bf16", {}).get("enabled"):
        return "bf16"
    if config.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


def offloads_optimizer(config: dict[str, Any]) -> bool:
    offload = config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") not in ("none", None)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _suggest(key: str, allowed: Any) -> str:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(sorted(allowed))})"


def _describe(exc: Exception, where: str) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic: name the exact key
        first = errors()[0]
        parts = [str(p) for p in first.get("loc", ())]
        if parts and parts[0] == where.rsplit(".", 1)[-1]:  # monitor sections repeat their own name
            parts = parts[1:]
        loc = ".".join(parts)
        key = f"{where}.{loc}" if loc else where
        return f"{key}: {first.get('msg')} (DeepSpeed rejects it; got {first.get('input')!r})"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{where}: DeepSpeed rejects the config: {text}"
