"""Single-image inference shared by ``ask`` and the MLflow pyfunc: load, read, predict, chat.

Images are read as the training data is (RGB, resized to the model's input size, [0, 1]); the
question defaults to the class description + "Is there any anomaly in the image?" as in training.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_model(checkpoint: str | Path) -> tuple[Any, Any]:
    """The model in eval mode and its ModelConfig, from a checkpoint folder."""
    from train.model.checkpoint import load_checkpoint

    model, cfg = load_checkpoint(checkpoint)
    model.eval()
    return model, cfg


def read_image(source: str | Path, size: int) -> Any:
    """float32 (3, size, size) RGB in [0, 1] from a path or a ``data:image/...;base64,`` URI."""
    import numpy as np
    import torch
    from PIL import Image

    text = str(source)
    if text.startswith("data:"):
        _, _, payload = text.partition(",")
        handle: Any = io.BytesIO(base64.b64decode(payload))
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        handle = path
    with Image.open(handle) as im:
        rgb = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def default_question(category: str) -> str:
    from synth.text import question_for

    return question_for(category)


def chat_question(history: Sequence[dict[str, str]], question: str) -> str:
    """Earlier turns + a new question as the text the model's first human turn wraps.

    The model renders ``first_human.format(text)``; with the history rendered in front and the new
    question as a later human turn, the LLM sees exactly the multi-turn layout of training.
    """
    if not history:
        return question
    from train.model.conversation import render, tables

    return render(list(history)) + tables()["conversation"]["human"].split("{}")[0] + question


def predict_one(
    model: Any,
    cfg: Any,
    image: str | Path,
    category: str = "object",
    question: str | None = None,
    references: Sequence[str | Path] = (),
    generate: bool = True,
    history: Sequence[dict[str, str]] = (),
) -> Any:
    """One :class:`train.model.batch.Prediction` (map, score, answer) for one image.

    ``references`` are normal images of the same category: with them the map is the few-shot
    (memory-bank) map. ``history`` is the earlier turns of a chat about this image.
    """
    import torch

    size = cfg.image_size
    images = read_image(image, size).unsqueeze(0)
    bank = None
    if references:
        refs = torch.stack([read_image(r, size) for r in references])
        bank = model.build_memory_bank(refs, category)
    text = chat_question(history, question or default_question(category))
    with torch.no_grad():
        return model.predict(images, [category], memory_bank=bank, question=text, generate=generate)[0]
