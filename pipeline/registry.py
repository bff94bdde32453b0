"""MLflow model registry: log a trained checkpoint, register it, promote it only when it is better.

Every new version gets the alias ``challenger``. It takes ``champion`` only when its mean evaluation
metric (``metrics.json["mean"][metric]``) beats the current champion's on the *same* evaluation data:
each version is tagged with the fingerprint of the data it was scored on, and a champion scored on
other data is re-scored by the caller before the comparison. The decision and both figures are
recorded as tags on the new version.

All comparisons and re-scoring happen before the first registry write, and a failure during the
writes deletes the half-made version and puts the aliases back, so a run that dies leaves the
registry as it was. Registering the same checkpoint twice returns the existing version.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import UnavailableError

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
"""Name of the checkpoint folder inside the logged MLflow model (``<model>/artifacts/checkpoint``)."""
PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
"""The pyfunc, logged as code (MLflow "models from code"): a path, not an import (importing it would
run its ``set_model`` here, and it imports this module)."""
CHECKPOINT_FILES = ("model.safetensors", "config.yaml")


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


class RegistryError(UnavailableError):
    """The tracking server cannot be reached, or a model reference does not resolve."""


@dataclass
class Decision:
    """Outcome of a promotion check; also what is written to the version's tags."""

    promote: bool
    reason: str
    challenger_value: float | None
    champion_value: float | None
    champion_version: str | None


def ensure_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (before any work) when the tracking store cannot be used."""
    if uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise RegistryError(f"MLflow store {uri}: folder {parent} does not exist or is not writable")
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                if resp.status == 200:
                    return
                raise RegistryError(f"MLflow server {uri} answered /health with HTTP {resp.status}")
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(
                f"MLflow server {uri} is unreachable ({exc}); check MLFLOW_TRACKING_URI"
            ) from exc


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


def pip_requirements() -> list[str]:
    """The project's own pins (from its installed metadata), so logging never infers them (slow)."""
    from importlib import metadata

    try:
        reqs = metadata.requires("anomalygpt-pipeline") or []
    except metadata.PackageNotFoundError:
        reqs = []
    return [r for r in reqs if "extra ==" not in r] or ["torch==2.13.0", "mlflow==3.17.2"]


def log_pyfunc(checkpoint_dir: str | Path) -> Any:
    """Log the checkpoint as pyfunc model ``model`` of the active run (code stored, nothing pickled).

    Only the checkpoint files are logged (a training folder also holds Ray Train checkpoints)."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / CHECKPOINT_ARTIFACT
        staged.mkdir()
        for name in CHECKPOINT_FILES:
            shutil.copy2(Path(checkpoint_dir) / name, staged / name)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_MODEL_FILE),
            artifacts={CHECKPOINT_ARTIFACT: str(staged)},
            model_config={"device": "auto"},  # declared, so that a loader may choose cpu or cuda
            pip_requirements=pip_requirements(),
        )


def find_version(client: Any, name: str, digest: str) -> Any | None:
    """The version already registered for this checkpoint digest, if any."""
    found = client.search_model_versions(f"name = '{name}' and tag.checkpoint_sha256 = '{digest}'")
    return found[0] if found else None


def alias_version(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register_and_promote(
    checkpoint_dir: str | Path,
    metrics: Mapping[str, Any],
    eval_fingerprint: str,
    cfg: RegistryConfig,
    *,
    tags: Mapping[str, str] | None = None,
    rescore: Callable[[str], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Log ``checkpoint_dir`` as a model in the active MLflow run, register it and maybe promote it.

    ``metrics`` is the challenger's ``metrics.json`` content; ``eval_fingerprint`` names the data it
    was computed on. ``rescore(model_uri)`` evaluates the champion on that same data when the
    champion was scored on other data; without it such a champion is kept. Returns a summary dict.
    """
    import mlflow
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

    info = log_pyfunc(checkpoint_dir)
    version_tags = {
        **(tags or {}),
        "checkpoint_sha256": digest,
        "eval_fingerprint": eval_fingerprint,
        f"eval_{cfg.metric}": _fmt(value),
        "promotion_decision": "promoted" if decision.promote else "kept_champion",
        "promotion_reason": decision.reason,
        f"promotion_challenger_{cfg.metric}": _fmt(decision.challenger_value),
        f"promotion_champion_{cfg.metric}": _fmt(decision.champion_value),
        "promotion_champion_version": decision.champion_version or "",
    }
    old_challenger = alias_version(client, name, cfg.challenger_alias)
    version = None
    try:
        version = mlflow.register_model(info.model_uri, name, tags=version_tags)
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
    log.info(
        "registered %s version %s (%s: %s)",
        name,
        version.version,
        version_tags["promotion_decision"],
        decision.reason,
    )
    return _summary(client, cfg, client.get_model_version(name, version.version), already=False)


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
    champ_value: float | None
    if champion.tags.get("eval_fingerprint") == eval_fingerprint:
        champ_value = _parse(champion.tags.get(f"eval_{cfg.metric}"))
    elif rescore is not None:
        uri = f"models:/{cfg.model_name}/{champion.version}"
        log.info("champion version %s was scored on other data; re-evaluating it", champion.version)
        champ_value = _metric(rescore(uri), cfg.metric)
    else:
        return Decision(
            False,
            f"champion v{champion.version} was evaluated on other data and cannot be re-scored",
            value,
            None,
            champion.version,
        )
    result = decide(value, champ_value, cfg.min_improvement)
    result.champion_version = champion.version
    return result


def resolve_model(ref: str | Path, dst: str | Path | None = None) -> Path:
    """A local checkpoint folder for ``ref``: a folder as is; ``models:/`` or ``runs:/`` downloaded.

    Downloads go to ``dst`` or a per-version cache folder (``$ANOMALYGPT_CACHE``, default
    ``~/.cache/anomalygpt``), so a second call for the same version does not download again.
    """
    text = str(ref)
    if not text.startswith(("models:/", "runs:/")):
        path = Path(text).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model {ref}: not a checkpoint folder nor a models:/ or runs:/ URI")
        return _checkpoint_in(path, text)
    import mlflow

    uri, expected = _pin_version(text)
    if dst is None:
        # Keyed by the store as well as the name: two stores may each have an "anomalygpt" v1.
        store = mlflow.get_registry_uri() if uri.startswith("models:/") else mlflow.get_tracking_uri()
        key = hashlib.sha256(f"{store}\0{uri}\0{expected}".encode()).hexdigest()[:16]
        label = uri.replace(":/", "_").replace("/", "_").strip("_")
        dst = Path(os.environ.get("ANOMALYGPT_CACHE", "~/.cache/anomalygpt")).expanduser() / f"{label}-{key}"
    dst = Path(dst)
    try:
        return _checkpoint_in(dst, text)
    except FileNotFoundError:
        pass
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(partial))
        found = _checkpoint_in(partial, text)
        if expected and checkpoint_digest(found) != expected:
            raise RegistryError(f"model {ref}: downloaded weights do not match the registered sha256")
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, RegistryError):
            raise
        raise RegistryError(f"model {ref}: download failed: {exc}") from exc
    shutil.rmtree(dst, ignore_errors=True)
    partial.rename(dst)
    return _checkpoint_in(dst, text)


def _pin_version(ref: str) -> tuple[str, str]:
    """``models:/name@alias`` -> ``models:/name/N`` and the version's checkpoint sha256 tag
    (a version URI keeps its number; ``runs:/`` URIs pass through with no expected digest)."""
    if not ref.startswith("models:/"):
        return ref, ""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    name, _, rest = ref.removeprefix("models:/").partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        version = alias_version(client, name, alias)
        if version is None:
            raise RegistryError(f"model {ref}: no version of {name!r} has alias {alias!r}")
    else:
        try:
            version = client.get_model_version(name, rest)
        except MlflowException as exc:
            raise RegistryError(f"model {ref}: no such registered version ({exc.message})") from exc
    return f"models:/{name}/{version.version}", version.tags.get("checkpoint_sha256", "")


def _checkpoint_in(path: Path, ref: str) -> Path:
    """``path`` itself when it is a checkpoint, else the checkpoint inside a logged MLflow model."""
    candidates = [path]
    mlmodel = path / "MLmodel"
    if mlmodel.is_file():  # the pyfunc names where it stored the checkpoint artifact
        import yaml

        flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
        entry = (flavor.get("artifacts") or {}).get(CHECKPOINT_ARTIFACT) or {}
        if entry.get("path"):
            candidates.append(path / entry["path"])
    for candidate in candidates:
        if all((candidate / f).is_file() for f in CHECKPOINT_FILES):
            return candidate
    raise FileNotFoundError(f"model {ref}: {path} holds no {' + '.join(CHECKPOINT_FILES)}")


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
