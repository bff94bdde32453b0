"""Single-image inference shared by ``ask`` and the MLflow pyfunc: read, predict, chat.

The model is a :class:`train.model.predictor.Predictor`; this module adds what a file- or URI-based
caller needs around it. Images are read as the training data is (RGB, resized to the model's input
size); the question defaults to the class description + "Is there any anomaly in the image?" as in
training.

It imports no torch itself: ``ask`` reads and checks its images before the slow model load.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluate.data import image_size, load_image
from evaluate.overlay import encode_png, render_overlay
from pipeline.core.errors import InputError
from synth.datasets import load_rgb
from synth.text import question_for
from train.model.conversation import render, tables

if TYPE_CHECKING:  # torch loads with the predictor, not with this module
    from train.model.batch import Prediction
    from train.model.predictor import Predictor

MAP_MODES = ("none", "small", "full")
"""How much of the anomaly map a response carries (the pyfunc and ``pipeline serve``)."""
SMALL_MAP = 64
"""Side of the ``small`` map."""


def read_image(source: str | Path, size: int) -> Any:
    """uint8 (size, size, 3) RGB from a path or a ``data:image/...;base64,`` URI, resized as training
    and evaluation do (evaluate.data.load_image). A corrupt file is an InputError naming it."""
    src, label = _image_source(source)
    return _decoded(lambda: load_image(src, size), label)  # type: ignore[arg-type]


def check_image(source: str | Path) -> None:
    """Decode the image with the model's reader (synth.datasets.load_rgb, which load_image uses), so
    ``ask`` rejects a corrupt file before the slow model load rather than after it."""
    src, label = _image_source(source)
    _decoded(lambda: load_rgb(src), label)  # type: ignore[arg-type]


def original_size(source: str | Path) -> tuple[int, int]:
    """(width, height) of the image as stored (a path, data: URI or base64), from its header alone:
    the model sees it squashed to its square input, but its regions are reported in these pixels."""
    src, label = _image_source(source)
    return _decoded(lambda: image_size(src), label)


MIN_BASE64_CHARS = 64
"""Shorter text that is not a file is reported as a missing file, not decoded as base64."""


def _image_source(source: str | Path) -> tuple[Path | io.BytesIO, str]:
    """What the reader opens (a path, or the bytes of a data: URI or of bare base64 text, as an API
    client sends them) and how messages name it."""
    text = str(source)
    if text.startswith("data:"):
        _, _, payload = text.partition(",")
        try:
            return io.BytesIO(base64.b64decode(payload)), "the data: URI image"
        except ValueError as exc:
            raise InputError(f"the data: URI image is not valid base64 ({exc})") from exc
    path = Path(text).expanduser()
    if _is_file(path):
        return path, str(path)
    raw = _bare_base64(text)
    if raw is None:
        raise FileNotFoundError(f"image not found: {path}")
    return io.BytesIO(raw), "the base64 image"


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the OS refuses (base64 text is longer than a file name)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _bare_base64(text: str) -> bytes | None:
    """The bytes of ``text`` when it is strict base64, else None (a missing file's path hardly
    ever is: it has a dot or is short)."""
    if len(text) < MIN_BASE64_CHARS:
        return None
    try:
        return binascii.a2b_base64(text.strip(), strict_mode=True)
    except binascii.Error:
        return None


def _decoded(read: Callable[[], Any], label: str) -> Any:
    """``read()``, with what PIL raises on a truncated, garbled or non-image file turned into an
    InputError that names the file (PIL's own messages name neither path nor fix)."""
    from PIL import Image

    try:
        return read()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{label} is not a readable image ({exc}); check or replace the file") from exc


def write_overlay(
    rgb: Any,
    prediction: Prediction,
    path: str | Path,
    title: str,
    boxes: Sequence[tuple[int, int, int, int]] | None = None,
) -> Path:
    """The anomaly-map overlay PNG (evaluate.overlay's picture) for one prediction, with ``boxes``
    (at the map's size) outlined."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = render_overlay(rgb, prediction.anomaly_map, None, title, prediction.answer, boxes=boxes)
    path.write_bytes(encode_png(picture))
    return path


def resized_map(anomaly_map: Any, side: int) -> Any:
    """The float32 map at ``side`` x ``side`` (area-averaged when smaller, as ``pipeline serve``'s
    small map PNG); the map itself when it already has that size."""
    import cv2
    import numpy as np

    values = np.asarray(anomaly_map, dtype=np.float32)
    if values.shape == (side, side):
        return values
    shrink = side < values.shape[0]
    return cv2.resize(values, (side, side), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def map_for_mode(anomaly_map: Any, mode: str) -> Any:
    """The map a response carries for ``mode`` (one of MAP_MODES): None for ``none`` (or no map),
    SMALL_MAP x SMALL_MAP for ``small``, the model's own size for ``full``."""
    if mode == "none" or anomaly_map is None:
        return None
    return resized_map(anomaly_map, SMALL_MAP if mode == "small" else anomaly_map.shape[0])


def load_model(checkpoint: str | Path, device: str = "auto") -> Any:
    """Gone: models logged before ``Predictor`` stored a pyfunc that calls this on load. Their
    weights are fine; their stored code is not, so they must be logged again."""
    raise InputError(
        f"this MLflow model was logged by an older anomalygpt-pipeline: the pyfunc code stored in it "
        f"calls pipeline.inference.load_model, which no longer exists. Re-register its checkpoint "
        f"({checkpoint}) with this version: inside an MLflow run, "
        f"mlflow.register_model(pipeline.pyfunc_logging.log_pyfunc(CHECKPOINT).model_uri, NAME). "
        f"`python -m pipeline ask --model <this model's URI>` reads the checkpoint as it is"
    )


def default_question(category: str) -> str:
    return question_for(category)


def chat_question(history: Sequence[dict[str, str]], question: str) -> str:
    """Earlier turns + a new question as the text the model's first human turn wraps.

    The model renders ``first_human.format(text)``; with the history rendered in front and the new
    question as a later human turn, the LLM sees exactly the multi-turn layout of training.
    """
    if not history:
        return question
    return render(list(history)) + tables()["conversation"]["human"].split("{}")[0] + question


def predict_one(
    predictor: Predictor,
    image: str | Path,
    category: str = "object",
    question: str | None = None,
    references: Sequence[str | Path] = (),
    generate: bool = True,
    history: Sequence[dict[str, str]] = (),
) -> Prediction:
    """One :class:`train.model.batch.Prediction` (map, score, answer) for one image file or URI.

    ``references`` are normal images of the same category: with them the map is the few-shot map
    (their bank is built once, then the predictor's cache serves it). ``history`` is the earlier
    turns of a chat about this image.
    """
    size = predictor.image_size
    bank = None
    if references:
        bank = predictor.memory_bank(category, [read_image(r, size) for r in references])
    text = chat_question(history, question or default_question(category))
    rgb = read_image(image, size)
    return predictor.predict([rgb], [category], memory_bank=bank, questions=text, generate=generate)[0]
