"""The rules of ``POST /v1/inspect``, free of HTTP and Ray: read the form's values into a job, run a
batch of jobs through the predictor, and turn a prediction into the JSON answer.

Kept apart from the deployment so each rule is tested on its own and the route stays a few lines.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evaluate.regions import region_dicts
from pipeline.core.errors import InputError
from pipeline.inference import MAP_MODES, map_for_mode
from train.model.config import DECISION_POINT

if TYPE_CHECKING:
    from train.model.batch import Prediction
    from train.model.predictor import Predictor

MAX_REFERENCES = 32
MAX_HISTORY_TURNS = 32
MAX_TEXT = 2000
"""Characters in a question or in one turn of the history."""
MAX_PIXELS = 40_000_000
"""An upload decoding to more pixels than this is refused before decoding (a decompression bomb)."""
MAX_REQUEST_PIXELS = 120_000_000
"""Pixels of a request's image and references together, checked from their headers before any is
decoded: one request cannot hold a replica for minutes of decoding."""
MAX_PROMPT_TOKENS = 1024
"""Tokens of a request's prompt (the chat history and the question): a longer history is trimmed from
its oldest turns, so one request cannot hold a replica for a long prefill while the others wait."""
CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_ -]{0,63}")
"""Letters, digits, ``_``, ``-`` and spaces: it goes into the prompt and names a references folder."""
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class RequestError(InputError):
    """A request the service refuses, with its HTTP status (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InspectJob:
    """One image to inspect, as the batch runner needs it."""

    image: Any
    """uint8 (S, S, 3) RGB at the model's input size."""
    category: str
    question: str
    """What was asked (the class's default question when the request names none)."""
    prompt: str
    """What the model reads: the earlier turns of the chat, then ``question``."""
    generate: bool = True
    references: list[Any] = field(default_factory=list)
    """uint8 normals of ``category`` for the few-shot bank; empty: the zero-shot map."""
    references_pinned: bool = False
    """The references are the server's own folder's (one bank per category, kept), not uploads."""
    cover: list[Any] = field(default_factory=list)
    """uint8 normals a person confirmed (the feedback folder's): in the bank, not its calibration."""
    history_dropped: int = 0
    """Oldest turns of the sent history left out to keep the prompt within ``MAX_PROMPT_TOKENS``."""
    original_size: tuple[int, int] | None = None
    """The uploaded image's own (width, height), the pixels region boxes are given in; None: the
    map's size."""
    sha256: str | None = None
    """Hex SHA-256 of the uploaded bytes: names the image an answer is about (feedback refers to it)."""

    @functools.cached_property
    def bank_key(self) -> str | None:
        """Jobs with the same key share one bank (and one model call)."""
        if not (self.references or self.cover):
            return None
        digest = hashlib.sha256(f"{self.category}/{len(self.references)}".encode())
        for image in [*self.references, *self.cover]:
            digest.update(image.tobytes())
        return digest.hexdigest()


def decode_image(data: bytes, size: int, label: str) -> Any:
    """uint8 (size, size, 3) RGB from uploaded bytes, read as training and ``ask`` read files."""
    from PIL import Image

    from evaluate.data import load_image

    if not data:
        raise RequestError(f"{label} is empty: upload an image file (PNG, JPEG, ...)")
    try:
        width, height = upload_size(data)
        if width * height > MAX_PIXELS:
            raise RequestError(
                f"{label} is {width}x{height} pixels, more than {MAX_PIXELS:,}: scale it down", 413
            )
        return load_image(io.BytesIO(data), size)  # type: ignore[arg-type]
    except Image.UnidentifiedImageError as exc:
        raise RequestError(f"{label} is not an image file; upload a PNG, JPEG, BMP, TIFF or WebP") from exc
    except RequestError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(f"{label} is not a readable image ({exc}); check or replace the file") from exc


def check_pixel_budget(uploads: Sequence[tuple[str, bytes]]) -> None:
    """Refuse (413) a request whose images (label, bytes) hold more than ``MAX_REQUEST_PIXELS`` in
    all, from their headers alone; an unreadable one is left for its own decode to name."""
    total = 0
    for _, data in uploads:
        try:
            width, height = upload_size(data)
        except Exception:  # not an image: decode_image says so, naming which
            continue
        total += width * height
    if total > MAX_REQUEST_PIXELS:
        raise RequestError(
            f"the request's {len(uploads)} images hold {total:,} pixels, more than {MAX_REQUEST_PIXELS:,} "
            "in all: send fewer or smaller references",
            413,
        )


def fit_history(
    history: Sequence[dict[str, str]],
    question: str,
    count_tokens: Callable[[str], int] | None,
    max_tokens: int = MAX_PROMPT_TOKENS,
) -> tuple[list[dict[str, str]], int]:
    """The newest turns of ``history`` whose prompt with ``question`` holds at most ``max_tokens``
    tokens (``count_tokens``: the model's tokenizer; None: no LLM, nothing to cap), and how many
    turns were left out, oldest first, a question and its answer together."""
    from pipeline.inference import chat_question

    kept = list(history)
    if count_tokens is None:
        return kept, 0
    while kept and count_tokens(chat_question(kept, question)) > max_tokens:
        kept = kept[2:]
    if count_tokens(chat_question(kept, question)) > max_tokens:
        raise RequestError(f"the question alone is more than {max_tokens} tokens: ask a shorter one")
    return kept, len(history) - len(kept)


def upload_size(data: bytes) -> tuple[int, int]:
    """(width, height) of uploaded image bytes from the header alone (nothing is decoded)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as header:
        return header.size


def parse_category(text: str | None) -> str:
    value = (text or "").strip() or "object"
    if not CATEGORY.fullmatch(value):
        raise RequestError(
            f"category {value[:80]!r}: use up to 64 letters, digits, '_', '-' or spaces (e.g. bottle)"
        )
    return value


def parse_map_mode(text: str | None) -> str:
    value = (text or "small").strip().lower()
    if value not in MAP_MODES:
        raise RequestError(f"map must be one of {', '.join(MAP_MODES)}, got {value[:40]!r}")
    return value


def parse_flag(text: str | None, name: str, default: bool) -> bool:
    if text is None or not text.strip():
        return default
    value = text.strip().lower()
    if value in TRUE or value in FALSE:
        return value in TRUE
    raise RequestError(f"{name} must be true or false, got {value[:40]!r}")


def parse_question(text: str | None) -> str | None:
    value = (text or "").strip()
    if len(value) > MAX_TEXT:
        raise RequestError(f"question is {len(value)} characters; at most {MAX_TEXT}")
    return value or None


def parse_history(text: str | None) -> list[dict[str, str]]:
    """The earlier turns of a chat about this image: a JSON list of ``{"from": "human"|"gpt",
    "value": text}``, human first, alternating (what this service answered before)."""
    if text is None or not text.strip():
        return []
    try:
        turns = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"history is not JSON ({exc})") from exc
    example = '[{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]'
    if not isinstance(turns, list):
        raise RequestError(f"history must be a JSON list of turns like {example}")
    if len(turns) > MAX_HISTORY_TURNS:
        raise RequestError(f"history has {len(turns)} turns; send at most the last {MAX_HISTORY_TURNS}")
    history = []
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or set(turn) != {"from", "value"} or not isinstance(turn["value"], str):
            raise RequestError(f"history turn {i} must be {{'from': ..., 'value': text}}, like {example}")
        if turn["from"] != expected:
            raise RequestError(f"history turn {i} must be from {expected!r} (human and gpt alternate)")
        if len(turn["value"]) > MAX_TEXT:
            raise RequestError(f"history turn {i} is longer than {MAX_TEXT} characters")
        history.append({"from": turn["from"], "value": turn["value"]})
    if len(history) % 2:
        raise RequestError("history must end with the service's answer (a 'gpt' turn)")
    return history


def new_job(
    image: Any,
    category: str,
    question: str | None,
    history: Sequence[dict[str, str]],
    generate: bool,
    references: Sequence[Any] = (),
    original_size: tuple[int, int] | None = None,
    sha256: str | None = None,
    references_pinned: bool = False,
    count_tokens: Callable[[str], int] | None = None,
    cover: Sequence[Any] = (),
) -> InspectJob:
    """A job from parsed values; without a question, the class's default question (as in training).
    With ``count_tokens`` the history is trimmed to fit ``MAX_PROMPT_TOKENS`` (:func:`fit_history`)."""
    from pipeline.inference import chat_question, default_question

    asked = question or default_question(category)
    kept, dropped = fit_history(history, asked, count_tokens)
    return InspectJob(
        image=image,
        category=category,
        question=asked,
        prompt=chat_question(kept, asked),
        generate=generate,
        references=list(references),
        references_pinned=references_pinned,
        cover=list(cover),
        history_dropped=dropped,
        original_size=original_size,
        sha256=sha256,
    )


def run_batch(predictor: Predictor, jobs: Sequence[InspectJob]) -> list[Prediction | Exception]:
    """One prediction (or the exception it raised) per job, in order.

    Jobs that share a bank and ``generate`` go through the model together, each with its own
    question; if such a call fails, its jobs are retried one by one so one bad job fails alone.
    """
    groups: dict[tuple[str | None, bool], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault((job.bank_key, job.generate), []).append(i)
    results: list[Prediction | Exception] = [None] * len(jobs)  # type: ignore[list-item]
    for indices in groups.values():
        members = [jobs[i] for i in indices]
        try:
            predictions: list[Prediction | Exception] = list(_predict(predictor, members))
        except Exception as exc:
            alone = len(members) == 1
            predictions = [exc] if alone else [_predict_alone(predictor, job) for job in members]
        for i, prediction in zip(indices, predictions, strict=True):
            results[i] = prediction
    return results


def _predict(predictor: Predictor, jobs: Sequence[InspectJob]) -> list[Prediction]:
    first = jobs[0]
    bank = None
    if first.references or first.cover:
        bank = predictor.memory_bank(
            first.category, first.references, pinned=first.references_pinned, cover=first.cover
        )
    return predictor.predict(
        [job.image for job in jobs],
        [job.category for job in jobs],
        memory_bank=bank,
        questions=[job.prompt for job in jobs],
        generate=first.generate,
    )


def _predict_alone(predictor: Predictor, job: InspectJob) -> Prediction | Exception:
    try:
        return _predict(predictor, [job])[0]
    except Exception as exc:
        return exc


def inspection_result(job: InspectJob, prediction: Prediction, map_mode: str) -> dict[str, Any]:
    """The JSON answer for one prediction (see docs/serving.md)."""
    from pipeline.serve.pictures import map_png, overlay_png
    from train.model.conversation import parse_answer

    score = None if prediction.score is None else float(prediction.score)
    size = job.original_size or (job.image.shape[1], job.image.shape[0])
    result: dict[str, Any] = {
        "category": job.category,
        "question": job.question,
        "score": score,
        "threshold": DECISION_POINT,
        "anomalous": None if score is None else score > DECISION_POINT,
        "answer": prediction.answer,
        "positions": parse_answer(prediction.answer).positions,
        "regions": region_dicts(prediction.anomaly_map, size),
        "image_size": list(size),
        "sha256": job.sha256,
        "shots": len(job.references) + len(job.cover),  # every normal image in the bank
        "history_dropped": job.history_dropped,
    }
    sent = map_for_mode(prediction.anomaly_map, map_mode)
    if sent is not None:
        result["map_png"] = _b64(map_png(sent, sent.shape[0]))
        if map_mode == "full":
            result["overlay_png"] = _b64(overlay_png(job.image, sent, DECISION_POINT, score))
    return result


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
