"""What the registered pyfunc takes and returns: its MLflow signature, its rows and its results.

Kept apart from ``pipeline.pyfunc_model`` because the registry logs the signature and must not
import the pyfunc (importing it registers the model with MLflow's ``set_model``).

Rows come as a list of dicts (``inputs``) or a pandas DataFrame (``dataframe_records`` /
``dataframe_split``); both are read the same way. Columns: ``image`` (a ``data:image/...;base64,``
URI, a bare base64 string, or a file path under the server's files root when it has one:
:func:`image_source`), optional ``category``, ``question``, ``references`` (a list of up to 32
normal images), ``generate`` and ``map``. ``map`` says how much of the
anomaly map comes back, as in ``pipeline serve``'s API: ``none``, ``small`` (64 x 64, the default:
a full 224 x 224 map is about 1 MB of JSON) or ``full`` (the model's input size). A row's own
``map`` wins over the request's ``params`` ``map``, which wins over the loader's ``model_config``.
Every result carries ``regions``, whatever ``map`` says: the map's defect regions
(``evaluate.regions``, boxes in the pixels of the image as sent).
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import InputError
from pipeline.inference import MAP_MODES, MIN_BASE64_CHARS

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Object

    from train.model.batch import Prediction

DEFAULT_MAP = "small"
COLUMNS = ("image", "category", "question", "references", "generate", "map")
MAX_REFERENCES = 32
"""Normal images one row may send for its memory bank."""
FILES_ROOT_ENV = "ANOMALYGPT_PYFUNC_FILES_ROOT"
"""A folder on the serving machine under which rows may name image files by path (also
``model_config={"files_root": ...}``). Unset: rows send image bytes (base64 or data: URIs) only, so
a client can neither read the server's files nor learn which exist."""


@dataclass
class Row:
    """One image to score, as the pyfunc reads it from a row."""

    image: str
    category: str = "object"
    question: str | None = None
    references: list[str] = field(default_factory=list)
    generate: bool = True
    map: str | None = None
    """None: the request's or the model's default."""


def signature() -> ModelSignature:
    """Named columns (not type hints), so that MLflow's server accepts ``dataframe_records`` as well
    as ``inputs``. ``references`` is AnyType: MLflow refuses an optional Array column with a row
    that leaves it out. ``map`` is also a request parameter, without a default so that the
    loader's ``model_config`` ``map`` applies when a request names none."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType, Array

    inputs = Schema(
        [
            ColSpec("string", "image"),
            ColSpec("string", "category", required=False),
            ColSpec("string", "question", required=False),
            ColSpec(AnyType(), "references", required=False),
            ColSpec("boolean", "generate", required=False),
            ColSpec("string", "map", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("double", "score", required=False),
            ColSpec("string", "answer", required=False),
            ColSpec(Array(Array("double")), "anomaly_map", required=False),
            ColSpec(Array(_region_type()), "regions", required=False),
        ]
    )
    return ModelSignature(inputs, outputs, params=ParamSchema([ParamSpec("map", "string", None)]))


def _region_type() -> Object:
    """One region of ``regions`` as the signature declares it: ``evaluate.regions.Region.to_dict()``."""
    from mlflow.types.schema import Array, Object, Property

    return Object(
        [
            Property("box", Array("long")),
            Property("area_px", "long"),
            Property("area_share", "double"),
            Property("peak", "double"),
            Property("mean", "double"),
            Property("position", "string"),
        ]
    )


def map_mode(value: Any, default: str) -> str:
    """``value`` when given (none, small or full), else ``default``; anything else is an InputError."""
    if _missing(value):
        return default
    mode = str(value).strip().lower()
    if mode not in MAP_MODES:
        raise InputError(f"map must be one of {', '.join(MAP_MODES)}, got {str(value)[:40]!r}")
    return mode


def read_rows(model_input: Any) -> list[Row]:
    """The rows of a DataFrame, a list of dicts or one dict; a cell left empty (None, NaN) takes the
    column's default."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):  # its empty cells (NaN, pd.NA) become None
        frame = model_input.astype(object)
        records: Iterable[Any] = frame.where(frame.notna(), None).to_dict(orient="records")
    elif isinstance(model_input, Mapping):
        records = [model_input]
    else:
        records = model_input
    return [_row(i, record) for i, record in enumerate(records)]


def result(prediction: Prediction, mode: str, image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """``score``, ``answer``, ``regions`` (a list of dicts, boxes in the pixels of ``image_size``,
    the original (width, height); None: the map's) and, unless ``mode`` is none, ``anomaly_map``
    (nested lists of floats)."""
    from evaluate.regions import region_dicts
    from pipeline.inference import map_for_mode

    out: dict[str, Any] = {
        "score": prediction.score,
        "answer": prediction.answer,
        "regions": region_dicts(prediction.anomaly_map, image_size),
    }
    sent = map_for_mode(prediction.anomaly_map, mode)
    if sent is not None:
        out["anomaly_map"] = sent.tolist()
    return out


def files_root(configured: str | None) -> Path | None:
    """The allowed folder for image paths: ``configured`` (model_config) or $ANOMALYGPT_PYFUNC_FILES_ROOT,
    resolved; None: paths are refused. A root that is not a folder fails the model's load."""
    value = configured or os.environ.get(FILES_ROOT_ENV)
    if not value:
        return None
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"files_root / ${FILES_ROOT_ENV} {value!r} is not a folder on this machine")
    return root


def image_source(text: str, root: Path | None, what: str) -> str:
    """What the model may open for an image a row names: a data: URI as is, bare base64 as a data:
    URI, a path only inside ``root`` (symlinks and ``..`` resolved first). The file system is not
    touched for a path outside the root, so a refusal says nothing about what exists there."""
    if text.startswith("data:"):
        return text
    if len(text) >= MIN_BASE64_CHARS:
        try:
            base64.b64decode(text, validate=True)
            return "data:application/octet-stream;base64," + text
        except ValueError:
            pass  # not base64: a path
    if root is None:
        raise InputError(
            f"{what}: send the image itself (base64 or a data: URI); this server takes no file paths "
            f"(an operator may allow paths under one folder with ${FILES_ROOT_ENV})"
        )
    path = Path(os.path.abspath(os.path.join(root, os.path.expanduser(text))))
    if not path.is_relative_to(root) or not path.resolve().is_relative_to(root):
        raise InputError(f"{what}: paths must lie under this server's files root; send the image itself")
    return str(path.resolve())


def _row(index: int, record: Any) -> Row:
    if not isinstance(record, Mapping):
        raise InputError(f"row {index}: expected an object with an image, got {type(record).__name__}")
    unknown = sorted(str(k) for k in record if k not in COLUMNS and not _missing(record[k]))
    if unknown:
        raise InputError(f"row {index}: unknown field(s) {', '.join(unknown)}; fields: {', '.join(COLUMNS)}")
    values = {k: _plain(record[k]) for k in COLUMNS if k in record and not _missing(record[k])}
    image = values.get("image")
    if not isinstance(image, str) or not image:
        raise InputError(f"row {index}: image must be a path, a data: URI or base64 text")
    for name in ("category", "question", "map"):
        if name in values and not isinstance(values[name], str):
            raise InputError(f"row {index}: {name} must be text, got {type(values[name]).__name__}")
    references = values.get("references", [])
    if not isinstance(references, (list, tuple)) or not all(isinstance(r, str) for r in references):
        raise InputError(f"row {index}: references must be a list of images (paths, data: URIs or base64)")
    if len(references) > MAX_REFERENCES:
        raise InputError(f"row {index}: {len(references)} references; send at most {MAX_REFERENCES}")
    generate = values.get("generate", True)
    if not isinstance(generate, bool):
        raise InputError(f"row {index}: generate must be true or false, got {generate!r}")
    return Row(
        image=image,
        category=values.get("category", "object"),
        question=values.get("question"),
        references=list(references),
        generate=generate,
        map=values.get("map"),
    )


def _plain(value: Any) -> Any:
    """A DataFrame cell as plain Python: a numpy array as a list, a numpy scalar as its value."""
    return value.tolist() if hasattr(value, "tolist") else value


def _missing(value: Any) -> bool:
    """An empty cell: None, or NaN where a DataFrame row lacks a column."""
    return value is None or (isinstance(value, float) and math.isnan(value))
