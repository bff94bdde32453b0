"""A model reference to a local checkpoint folder: a folder as is, ``models:/`` or ``runs:/`` downloaded.

``models:/NAME@ALIAS`` is pinned to the version holding the alias before the download, and the
downloaded weights must match the version's ``checkpoint_sha256`` tag. Downloads are cached per
store and version (``$ANOMALYGPT_CACHE``, default ``~/.cache/anomalygpt``); concurrent downloads of
one version each fill their own folder and the first to finish renames it into place.

Errors: a reference that does not resolve (unknown name, alias or version, a malformed ``models:/``
URI, a folder or run without a checkpoint) is :class:`ModelReferenceError` (exit 2); a store that
cannot be reached or fails is :class:`RegistryError` (exit 3).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.promotion_lock import is_ticket
from pipeline.pyfunc_logging import CHECKPOINT_ARTIFACT, CHECKPOINT_FILES
from pipeline.registry import alias_version, checkpoint_digest
from pipeline.registry_errors import (
    NOT_FOUND_CODES,
    ModelReferenceError,
    RegistryError,
    short_message,
    store_errors,
    unavailable,
)

CACHE_ENV = "ANOMALYGPT_CACHE"
"""Environment variable naming the download cache folder."""
DEFAULT_CACHE = "~/.cache/anomalygpt"
"""The download cache folder when ``$ANOMALYGPT_CACHE`` is unset."""
ABANDONED_AFTER_S = 6 * 3600.0
"""A ``.partial`` download folder none of whose files changed for this long was left by a killed
process and is removed by the next download into the same cache. Judged by age, not by process id:
the cache may be a volume that several machines share."""


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
        dst = Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).expanduser() / f"{label}-{key}"
    dst = Path(dst)
    cached = _checkpoint_in(dst)
    if cached is not None:
        return cached
    remove_abandoned_downloads(dst.parent)
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


def remove_abandoned_downloads(cache: Path, older_than_s: float = ABANDONED_AFTER_S) -> list[Path]:
    """Remove the ``*.partial`` folders in ``cache`` whose newest file is older than ``older_than_s``
    (downloads of killed processes); a download still writing keeps its folder. Returns them."""
    removed = []
    now = time.time()
    for partial in cache.glob("*.partial") if cache.is_dir() else ():
        try:
            newest = max((p.stat().st_mtime for p in [partial, *partial.rglob("*")]), default=0.0)
        except OSError:  # its owner renamed or removed it meanwhile
            continue
        if now - newest > older_than_s:
            shutil.rmtree(partial, ignore_errors=True)
            removed.append(partial)
    return removed


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
                f"model {ref}: {short_message(exc)}; check the run id and the path after it "
                "(runs:/RUN_ID/model)"
            ) from exc
        raise unavailable(f"downloading model {ref}", exc) from exc
    except Exception as exc:
        raise unavailable(f"downloading model {ref}", exc) from exc


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
                raise unavailable(f"reading {ref}", exc) from exc
            problem = f"{name!r} has no version {rest}"
            raise ModelReferenceError(_not_found(client, ref, name, problem)) from exc
    return f"models:/{name}/{version.version}", version.tags.get("checkpoint_sha256", "")


def _not_found(client: Any, ref: str, name: str, problem: str) -> str:
    """Why ``ref`` does not resolve (``problem`` when the model exists) and how to fix it, naming what
    the store does have."""
    import mlflow
    from mlflow.exceptions import MlflowException

    store = mlflow.get_registry_uri()
    with store_errors(f"reading registered model {name!r}"):
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
