"""Single-image inference shared by ``ask`` and the MLflow pyfunc: read, predict, chat.

The model is a :class:`train.model.predictor.Predictor`; this module adds what a file- or URI-based
caller needs around it. Images are read as the training data is (RGB, resized to the model's input
size); the question defaults to the class description + "Is there any anomaly in the image?" as in
training.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluate.data import load_image
from evaluate.overlay import encode_png, render_overlay
from pipeline.core.errors import InputError
from synth.datasets import load_rgb
from synth.text import question_for
from train.model.conversation import render, tables

if TYPE_CHECKING:  # torch loads with the predictor, not with this module
    from train.model.batch import Prediction
    from train.model.predictor import Predictor


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


def _image_source(source: str | Path) -> tuple[Path | io.BytesIO, str]:
    """What the reader opens (a path or the bytes of a data: URI) and how messages name it."""
    text = str(source)
    if text.startswith("data:"):
        _, _, payload = text.partition(",")
        try:
            return io.BytesIO(base64.b64decode(payload)), "the data: URI image"
        except ValueError as exc:
            raise InputError(f"the data: URI image is not valid base64 ({exc})") from exc
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return path, str(path)


def _decoded(read: Callable[[], Any], label: str) -> Any:
    """``read()``, with what PIL raises on a truncated, garbled or non-image file turned into an
    InputError that names the file (PIL's own messages name neither path nor fix)."""
    from PIL import Image

    try:
        return read()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{label} is not a readable image ({exc}); check or replace the file") from exc


def write_overlay(rgb: Any, prediction: Prediction, path: str | Path, title: str) -> Path:
    """The anomaly-map overlay PNG (evaluate.overlay's picture) for one prediction."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(render_overlay(rgb, prediction.anomaly_map, None, title, prediction.answer)))
    return path


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
