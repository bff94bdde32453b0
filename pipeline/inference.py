"""Single-image inference shared by ``ask`` and the MLflow pyfunc: load, read, predict, chat.

Images are read as the training data is (RGB, resized to the model's input size, [0, 1]); the
question defaults to the class description + "Is there any anomaly in the image?" as in training.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evaluate.data import load_image
from evaluate.overlay import encode_png, render_overlay
from pipeline.core.config import ConfigError
from pipeline.core.errors import InputError
from synth.datasets import load_rgb
from synth.text import question_for
from train.model.checkpoint import load_checkpoint
from train.model.conversation import render, tables

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else CPU. ``cuda`` without a GPU is an error naming why."""
    import torch

    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device cuda: torch sees no CUDA GPU here (check CUDA_VISIBLE_DEVICES); use cpu or auto"
        )
    return device


def load_model(checkpoint: str | Path, device: str = "auto") -> tuple[Any, Any]:
    """The model in eval mode on ``device`` (auto, cpu, cuda) and its ModelConfig, from a checkpoint."""
    model, cfg = load_checkpoint(checkpoint, device=resolve_device(device))
    model.eval()
    return model, cfg


def model_device(model: Any) -> Any:
    """Where the model's weights live (inputs go there)."""
    return next(model.parameters()).device


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


def to_tensor(images: Sequence[Any]) -> Any:
    """float32 (B, 3, H, W) in [0, 1] from uint8 HxWx3 arrays (the model's Batch.images contract)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)


def write_overlay(rgb: Any, prediction: Any, path: str | Path, title: str) -> Path:
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


def build_bank(model: Any, cfg: Any, references: Sequence[str | Path], category: str) -> Any:
    """The few-shot memory bank of ``references`` (normal images of ``category``); build it once."""
    import torch

    images = to_tensor([read_image(r, cfg.image_size) for r in references]).to(model_device(model))
    with torch.no_grad():
        return model.build_memory_bank(images, category)


def predict_one(
    model: Any,
    cfg: Any,
    image: str | Path,
    category: str = "object",
    question: str | None = None,
    references: Sequence[str | Path] = (),
    generate: bool = True,
    history: Sequence[dict[str, str]] = (),
    memory_bank: Any = None,
) -> Any:
    """One :class:`train.model.batch.Prediction` (map, score, answer) for one image.

    ``references`` (or a ``memory_bank`` built from them) are normal images of the same category:
    with them the map is the few-shot map. ``history`` is the earlier turns of a chat about this image.
    """
    import torch

    images = to_tensor([read_image(image, cfg.image_size)]).to(model_device(model))
    bank = memory_bank
    if bank is None and references:
        bank = build_bank(model, cfg, references, category)
    text = chat_question(history, question or default_question(category))
    with torch.no_grad():
        return model.predict(images, [category], memory_bank=bank, question=text, generate=generate)[0]
