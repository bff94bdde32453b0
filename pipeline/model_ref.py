"""The model a user names on the command line (`ask`, `serve`): the two options and their resolution.

``--model`` is a checkpoint folder or an MLflow ``models:/`` / ``runs:/`` URI; such a URI is resolved
against ``MLFLOW_TRACKING_URI`` or, when that is unset, the MLflow store of the run folder ``--store``
(where ``make demo`` registered its model).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_MODEL = "models:/anomalygpt@champion"
DEFAULT_STORE = "runs/demo"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--store``, worded the same for every command that loads a model."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="PATH_OR_URI",
        help=f"checkpoint folder or models:/ / runs:/ URI (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="DIR",
        help="run folder whose MLflow store resolves models:/ URIs when MLFLOW_TRACKING_URI is unset "
        f"(default: {DEFAULT_STORE})",
    )


def resolve_checkpoint(model: str, store: str) -> Path:
    """A local checkpoint folder for ``model``. A reference that does not resolve (or a store that
    does not exist) is a ModelReferenceError (exit 2); an unreachable server a RegistryError (3)."""
    # Deferred: mlflow costs a second of start-up, and a checkpoint folder needs none of it.
    from pipeline.model_download import resolve_model
    from pipeline.registry_errors import ModelReferenceError, ensure_reachable

    if model.startswith(("models:/", "runs:/")):
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            db = Path(store).expanduser().resolve() / "mlflow.db"
            if not db.is_file():
                raise ModelReferenceError(
                    f"no MLflow store at {db} to resolve {model}: run `make demo` first, or pass "
                    "--store RUN_FOLDER, --model CHECKPOINT_DIR, or set MLFLOW_TRACKING_URI"
                )
            uri = f"sqlite:///{db}"
        ensure_reachable(uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    return resolve_model(model)
