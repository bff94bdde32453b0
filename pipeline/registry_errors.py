"""The errors of the MLflow model registry, shared by promotion (:mod:`pipeline.registry`) and model
download (:mod:`pipeline.model_download`), and how an MLflow failure becomes one of them.

A model reference that does not resolve (unknown name, alias or version, a malformed ``models:/``
URI, a folder without a checkpoint) is :class:`ModelReferenceError` (bad input, exit 2); a tracking
server that cannot be reached or fails is :class:`RegistryError` (exit 3).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import InputError, UnavailableError

NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
"""MLflow error codes that mean the thing asked for is not there (or the request names it wrongly)."""


class RegistryError(UnavailableError):
    """The tracking server cannot be reached, or fails, or is too busy (exit 3)."""


class ModelReferenceError(InputError):
    """A model reference that does not resolve: unknown model, alias or version, a malformed
    ``models:/`` URI, a folder or run without a checkpoint (bad input, exit 2)."""


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


@contextmanager
def store_errors(doing: str) -> Iterator[None]:
    """An MLflow failure while ``doing`` something becomes a :class:`RegistryError` (exit 3)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise unavailable(doing, exc) from exc


def unavailable(doing: str, exc: BaseException) -> RegistryError:
    """The :class:`RegistryError` for ``exc``, raised while ``doing`` something with the store."""
    import mlflow

    return RegistryError(
        f"MLflow store {mlflow.get_registry_uri()}: {doing} failed ({short_message(exc)}); check that "
        "the tracking server is up and that MLFLOW_TRACKING_URI names it"
    )


def short_message(exc: BaseException) -> str:
    """The first line of ``exc``'s message (MLflow's own when it has one), at most 300 characters."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
