"""MLflow model registry promotion: log a trained checkpoint, register it, promote it only when better.

Every new version gets the alias ``challenger``. It takes ``champion`` only when its mean evaluation
metric (``metrics.json["mean"][metric]``) beats the current champion's on the *same* evaluation data:
each version is tagged with the fingerprint of the data it was scored on, and a champion scored on
other data is re-scored by the caller before the comparison. The decision and both figures are
recorded as tags on the new version.

All comparisons and re-scoring happen before the first registry write, and a failure during the
writes deletes the half-made version and puts the aliases back, so a run that dies leaves the
registry as it was. Registering the same checkpoint twice returns the existing version.

Two pipelines may finish at the same time against one tracking server. The writes (the version and
its aliases) happen under a promotion lock (:mod:`pipeline.promotion_lock`: numbered tickets with a
renewed lease), and under it the champion is read again: when another run changed it since the
comparison, the comparison is made again against the new champion (compare-and-set).

The model is logged by :mod:`pipeline.pyfunc_logging`; references to registered versions are
resolved by :mod:`pipeline.model_download`. A store that cannot be reached or fails is
:class:`~pipeline.registry_errors.RegistryError` (exit 3).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.promotion_lock import promotion_lock
from pipeline.pyfunc_logging import CHECKPOINT_FILES, log_pyfunc
from pipeline.registry_errors import NOT_FOUND_CODES, RegistryError, store_errors, unavailable

log = logging.getLogger(__name__)


@dataclass
class RegistryConfig:
    """Where trained models are registered and when a new one replaces the champion."""

    model_name: str = "anomalygpt"
    """Registered model name (``models:/<model_name>@champion``)."""
    metric: str = "image_auroc"
    """Key of ``metrics.json["mean"]`` that decides promotion (higher is better)."""
    min_improvement: float = 0.0
    """The challenger must beat the champion by more than this to be promoted."""
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"


PROMOTION_ATTEMPTS = 5
"""Comparisons made again because the champion changed meanwhile, before giving up (exit 3)."""
DESCRIBED_METRICS = {"image_auroc": "Image-AUROC", "pixel_auroc": "Pixel-AUROC", "accuracy": "accuracy"}
"""The mean metrics a version's description names, with their printed names."""


@dataclass
class Decision:
    """Outcome of a promotion check; also what is written to the version's tags."""

    promote: bool
    reason: str
    challenger_value: float | None
    champion_value: float | None
    champion_version: str | None


def checkpoint_digest(checkpoint_dir: str | Path) -> str:
    """sha256 over the checkpoint files: the identity used to avoid registering a model twice."""
    root = Path(checkpoint_dir)
    digest = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {root}: missing {name}")
        digest.update(name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def decide(challenger: float | None, champion: float | None, min_improvement: float = 0.0) -> Decision:
    """Pure promotion rule: no champion -> promote; a missing/NaN challenger figure never wins."""
    if champion is None:
        return Decision(True, "no champion yet", challenger, None, None)
    if challenger is None or math.isnan(challenger):
        return Decision(False, "challenger has no figure", challenger, champion, None)
    if math.isnan(champion) or challenger > champion + min_improvement:
        return Decision(True, f"{challenger:.4f} beats {champion:.4f}", challenger, champion, None)
    return Decision(False, f"{challenger:.4f} does not beat {champion:.4f}", challenger, champion, None)


def find_version(client: Any, name: str, digest: str) -> Any | None:
    """The version already registered for this checkpoint digest, if any."""
    with store_errors(f"searching the versions of {name!r}"):
        found = client.search_model_versions(f"name = '{name}' and tag.checkpoint_sha256 = '{digest}'")
    return found[0] if found else None


def alias_version(client: Any, name: str, alias: str) -> Any | None:
    """The version holding ``alias``; None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND_CODES:
            return None
        raise unavailable(f"reading alias {alias!r} of {name!r}", exc) from exc


def register_and_promote(
    checkpoint_dir: str | Path,
    metrics: Mapping[str, Any],
    eval_fingerprint: str,
    cfg: RegistryConfig,
    *,
    tags: Mapping[str, str] | None = None,
    rescore: Callable[[str], Mapping[str, Any]] | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Log ``checkpoint_dir`` as a model in the active MLflow run, register it and maybe promote it.

    ``metrics`` is the challenger's ``metrics.json`` content; ``eval_fingerprint`` names the data it
    was computed on. ``rescore(model_uri)`` evaluates the champion on that same data when the
    champion was scored on other data; without it such a champion is kept. ``data`` (label ->
    value: dataset root, categories, sample counts) opens the version's description, which then
    gives the mean metrics and the promotion decision. Returns a summary dict.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    name = cfg.model_name
    digest = checkpoint_digest(checkpoint_dir)
    existing = find_version(client, name, digest)
    if existing is not None:
        log.info("checkpoint already registered as %s version %s", name, existing.version)
        return _summary(client, cfg, existing, already=True)

    value = _metric(metrics, cfg.metric)
    decision = _compare_with_champion(client, cfg, value, eval_fingerprint, rescore)
    with store_errors(f"logging {checkpoint_dir} as a model"):
        info = log_pyfunc(checkpoint_dir)
    for _ in range(PROMOTION_ATTEMPTS):
        with promotion_lock(client, name) as held:
            existing = find_version(client, name, digest)  # a run of the same checkpoint came first
            if existing is not None:
                return _summary(client, cfg, existing, already=True)
            champion = alias_version(client, name, cfg.champion_alias)
            if _version_number(champion) == decision.champion_version:  # compare-and-set
                version_tags = {
                    **(tags or {}),
                    **_decision_tags(cfg, digest, eval_fingerprint, value, decision),
                }
                description = describe_version(data or {}, metrics, decision, cfg)
                held.check()  # still the newest ticket: no run took the lock over a stalled lease
                version = _write_version(client, cfg, info.model_uri, version_tags, description, decision)
                break
        log.info(
            "the champion of %s became v%s while this run compared with v%s; comparing again",
            *(name, _version_number(champion), decision.champion_version),
        )
        decision = _compare_with_champion(client, cfg, value, eval_fingerprint, rescore)
    else:
        raise RegistryError(
            f"registered model {name!r}: the champion changed {PROMOTION_ATTEMPTS} times while this run "
            "compared with it (other runs are promoting); run again to register this model"
        )
    log.info("registered %s version %s (%s)", name, version.version, decision.reason)
    with store_errors(f"reading {name!r} version {version.version}"):
        return _summary(client, cfg, client.get_model_version(name, version.version), already=False)


def describe_version(
    data: Mapping[str, Any], metrics: Mapping[str, Any], decision: Decision, cfg: RegistryConfig
) -> str:
    """A version's description (markdown, shown in the registry UI): what the model was trained and
    evaluated on, its mean metrics, and whether it was promoted and why."""
    lines = []
    if data:
        lines += ["**Data**", ""]
        lines += [f"- {label}: {_as_text(value)}" for label, value in data.items()]
        lines.append("")
    mean = metrics.get("mean") or {}
    figures = ", ".join(f"{label} {_figure(mean.get(key))}" for key, label in DESCRIBED_METRICS.items())
    lines += [f"**Mean metrics**: {figures}", ""]
    if decision.promote:
        verdict = "promoted to champion"
    else:
        verdict = f"not promoted, v{decision.champion_version} stays champion"
    rule = f"by {cfg.metric}" + (f", by more than {cfg.min_improvement:g}" if cfg.min_improvement else "")
    lines.append(f"**Promotion**: {verdict}: {decision.reason} ({rule}).")
    return "\n".join(lines)


def _decision_tags(
    cfg: RegistryConfig, digest: str, eval_fingerprint: str, value: float | None, decision: Decision
) -> dict[str, str]:
    return {
        "checkpoint_sha256": digest,
        "eval_fingerprint": eval_fingerprint,
        f"eval_{cfg.metric}": _fmt(value),
        "promotion_decision": "promoted" if decision.promote else "kept_champion",
        "promotion_reason": decision.reason,
        f"promotion_challenger_{cfg.metric}": _fmt(decision.challenger_value),
        f"promotion_champion_{cfg.metric}": _fmt(decision.champion_value),
        "promotion_champion_version": decision.champion_version or "",
    }


def _write_version(
    client: Any,
    cfg: RegistryConfig,
    model_uri: str,
    tags: dict[str, str],
    description: str,
    decision: Decision,
) -> Any:
    """Register the version (tags, description), give it ``challenger`` and, if promoted, ``champion``.
    Any failure deletes the half-made version and gives ``challenger`` back to its old holder."""
    import mlflow

    name = cfg.model_name
    old_challenger = alias_version(client, name, cfg.challenger_alias)
    version = None
    with store_errors(f"registering a version of {name!r}"):
        try:
            version = mlflow.register_model(model_uri, name, tags=tags)
            client.update_model_version(name, version.version, description=description)
            client.set_registered_model_alias(name, cfg.challenger_alias, version.version)
            if decision.promote:
                client.set_registered_model_alias(name, cfg.champion_alias, version.version)
        except BaseException:
            if version is not None:
                log.warning("registration failed; removing %s version %s", name, version.version)
                client.delete_model_version(name, version.version)
                if old_challenger is not None:
                    client.set_registered_model_alias(name, cfg.challenger_alias, old_challenger.version)
            raise
    return version


def _compare_with_champion(
    client: Any,
    cfg: RegistryConfig,
    value: float | None,
    eval_fingerprint: str,
    rescore: Callable[[str], Mapping[str, Any]] | None,
) -> Decision:
    champion = alias_version(client, cfg.model_name, cfg.champion_alias)
    if champion is None:
        return decide(value, None, cfg.min_improvement)
    number = _version_number(champion)
    champ_value: float | None
    if champion.tags.get("eval_fingerprint") == eval_fingerprint:
        champ_value = _parse(champion.tags.get(f"eval_{cfg.metric}"))
    elif rescore is not None:
        uri = f"models:/{cfg.model_name}/{number}"
        log.info("champion version %s was scored on other data; re-evaluating it", number)
        champ_value = _metric(rescore(uri), cfg.metric)
    else:
        return Decision(
            False,
            f"champion v{number} was evaluated on other data and cannot be re-scored",
            value,
            None,
            number,
        )
    result = decide(value, champ_value, cfg.min_improvement)
    result.champion_version = number
    return result


def _version_number(version: Any | None) -> str | None:
    return None if version is None else str(version.version)


def _summary(client: Any, cfg: RegistryConfig, version: Any, already: bool) -> dict[str, Any]:
    champion = alias_version(client, cfg.model_name, cfg.champion_alias)
    return {
        "model_name": cfg.model_name,
        "version": str(version.version),
        "already_registered": already,
        "promoted": version.tags.get("promotion_decision") == "promoted",
        "champion_version": str(champion.version) if champion else None,
        "tags": dict(version.tags),
    }


def _metric(metrics: Mapping[str, Any], key: str) -> float | None:
    mean = metrics.get("mean")
    if not isinstance(mean, Mapping) or key not in mean:
        raise KeyError(f"metrics have no mean.{key} (keys: {sorted(mean or {})})")
    value = mean[key]
    return None if value is None else float(value)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _parse(text: str | None) -> float | None:
    return float(text) if text else None


def _figure(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4f}"


def _as_text(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
