"""Strict YAML -> dataclass configs.

Every stage describes its settings as a dataclass (docstrings there are the documentation).
Loading is strict: an unknown key is an error naming the key and the file, so a misspelled
option never silently falls back to a default. ``--set a.b=value`` overrides any key; the value
is parsed as YAML (``--set train.lr=3e-4``, ``--set synth.categories=[brick,grass]``).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.core.errors import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A config file or override that does not match the dataclass schema (bad input: exit 2)."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file; every way the file can be wrong is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(path, exc)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:  # e.g. no read permission: not an output problem, so not exit 4
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """``FILE, line L, column C: invalid YAML: <problem>`` (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return f"{path}{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")


def split_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML); errors name ``--set ITEM``."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"--set {item}: the value is not valid YAML: {problem}") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` override applied (value parsed as YAML)."""
    result = _deep_copy(data)
    for item in overrides:
        parts, value = split_override(item)
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def check_override(cls: type, item: str) -> None:
    """Check one ``--set`` against the schema of ``cls``, so a bad key or value names the ``--set``
    (not the config file it is merged into)."""
    parts, value = split_override(item)
    source = f"--set {item}"
    tp: Any = cls
    for i, part in enumerate(parts):
        tp = _section_type(tp)
        prefix = ".".join(parts[:i])
        if dataclasses.is_dataclass(tp):
            fields = sorted(f.name for f in dataclasses.fields(tp) if f.init)
            if part not in fields:
                raise ConfigError(
                    f"{source}: unknown key {'.'.join(parts[: i + 1])!r} "
                    f"(allowed under {prefix or 'top level'}: {', '.join(fields)})"
                )
            tp = typing.get_type_hints(tp)[part]
        elif typing.get_origin(tp) in (dict, Mapping):
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        elif tp is Any or typing.get_origin(tp) in (typing.Union, types.UnionType):
            return  # free-form, or a union of sections: the full config check decides
        else:
            raise ConfigError(f"{source}: {prefix!r} is a single value, not a section")
    _coerce(tp, value, source, ".".join(parts))


def _section_type(tp: Any) -> Any:
    """``X | None`` -> ``X`` (a section may be optional); any other type as is."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: Mapping[str, Any] | None, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types; errors name ``source``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix or 'top level'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        allowed = ", ".join(sorted(fields))
        raise ConfigError(
            f"{source}: unknown key {where!r} (allowed under {prefix or 'top level'}: {allowed})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, source, key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {prefix or 'config'}: {exc}") from exc


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """``cls`` from the YAML file at ``path`` with ``overrides`` applied.

    Each override is checked on its own first, so its errors name ``--set KEY=VALUE``; what fails
    after merging is the file's (or, for checks across keys, the file's together with the overrides).
    """
    data = load_yaml(path) if path else {}
    for item in overrides:
        check_override(cls, item)
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, source=_merged_source(path, overrides))


def _merged_source(path: str | Path | None, overrides: Sequence[str]) -> str:
    """What an error in the merged config names: the file, the overrides, or both."""
    sets = " ".join(f"--set {item}" for item in overrides)
    if not path:
        return sets or "the defaults"
    return f"{path} (with {sets})" if sets else str(path)


LATER_KEYS: dict[tuple[str, ...], Any] = {
    ("model", "memory_bank", "layer_weighting"): "normal_spread",
    ("model", "memory_bank", "decoder_cap"): None,
    ("evaluate", "baseline"): True,
    ("model", "memory_bank", "fusion_guard"): True,
    ("model", "memory_bank", "guard_probes"): 16,
    ("model", "memory_bank", "guard_probe_kinds"): ["nsa"],
    ("model", "memory_bank", "unseen_fusion"): "amplified",
    ("evaluate", "bank_budget"): None,
    ("evaluate", "feedback"): None,
}
"""Run-config keys added after run folders existed, each with a default that leaves training as it
was (the fusion guard acts at bank build, after training): a stage key or resume fingerprint hashes
them only when set away from it, so adding one neither re-runs nor refuses to resume any existing
run."""


def without_later_defaults(data: dict[str, Any], section: str | None = None) -> dict[str, Any]:
    """``data`` (plain, from :func:`to_dict`: a whole run config, or with ``section`` that section of
    it) less the :data:`LATER_KEYS` that hold their default."""
    out = copy.deepcopy(data)
    for path, default in LATER_KEYS.items():
        if section is not None:
            if path[0] != section:
                continue
            path = path[1:]
        *parents, key = path
        node = out
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node and node[key] == default:
            del node[key]
    return out


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-safe structure of a (nested) dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the form MLflow params and fingerprints use."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def dump_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, source, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: {key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, key)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{source}: {key} must have {len(args)} items, got {value!r}")
            return tuple(
                _coerce(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(vt, v, source, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value).expanduser()
        raise ConfigError(f"{source}: {key} must be a path, got {value!r}")
    return value


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data
