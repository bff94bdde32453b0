"""PandaGPT-format visual-instruction data: the reader used in training and a small generator.

Format (PandaGPT's ``pandagpt4_visual_instruction_data.json``): a JSON list of
``{"image_name": ..., "conversation": [{"from": "human"|"gpt", "value": ...}, ...]}`` with the
images in an ``images/`` folder next to the JSON. A name without a suffix gets ``.jpg``, as the
reference does. The reference keeps only the first human/gpt pair; ``turns="all"`` keeps every
complete pair.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from synth.datasets import load_rgb, read_dataset
from train.shard_reader import DataError

log = logging.getLogger(__name__)

JSON_NAME = "pandagpt4_visual_instruction_data.json"


@dataclass(frozen=True)
class InstructionSample:
    image: str
    """Absolute path of the image."""
    conversation: list[dict[str, str]]


def resolve(path: str | Path) -> tuple[Path, Path]:
    """(json file, images folder) for a folder holding the JSON, or the JSON file itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / JSON_NAME
    if not path.is_file():
        raise DataError(f"instruction data not found: {path} (a folder with {JSON_NAME}, or the JSON)")
    return path, path.parent / "images"


def read_instruction_set(
    path: str | Path, turns: Literal["first", "all"] = "first"
) -> list[InstructionSample]:
    """Read and check every item (image present, turns alternate human/gpt); errors name the item."""
    json_path, images = resolve(path)
    try:
        items = json.loads(json_path.read_text())
    except ValueError as exc:
        raise DataError(f"{json_path}: not valid JSON ({exc})") from exc
    if not isinstance(items, list) or not items:
        raise DataError(f"{json_path}: expected a non-empty JSON list of items")
    samples, trimmed = [], 0
    for i, item in enumerate(items):
        where = f"{json_path}: item {i}"
        if not isinstance(item, dict) or not isinstance(item.get("image_name"), str):
            raise DataError(f"{where}: needs a string 'image_name'")
        name = item["image_name"]
        image = images / (name if Path(name).suffix else f"{name}.jpg")
        if not image.is_file():
            raise DataError(f"{where}: image not found: {image}")
        pairs = _pairs(item.get("conversation"), where)
        keep = pairs[:1] if turns == "first" else pairs
        trimmed += len(item["conversation"]) - 2 * len(pairs)
        samples.append(InstructionSample(str(image.resolve()), [t for pair in keep for t in pair]))
    if trimmed:
        log.warning("%s: ignored %d trailing human turn(s) that have no answer", json_path, trimmed)
    return samples


def _pairs(conversation: Any, where: str) -> list[tuple[dict[str, str], dict[str, str]]]:
    if not isinstance(conversation, list) or len(conversation) < 2:
        raise DataError(f"{where}: 'conversation' must be a list of at least one human and one gpt turn")
    pairs = []
    for j in range(0, len(conversation) - 1, 2):
        human, gpt = conversation[j], conversation[j + 1]
        for turn, who in ((human, "human"), (gpt, "gpt")):
            if (
                not isinstance(turn, dict)
                or turn.get("from") != who
                or not isinstance(turn.get("value"), str)
            ):
                raise DataError(
                    f"{where}: turn {conversation.index(turn)} must be from {who!r} with a text value"
                )
        pairs.append(({"from": "human", "value": human["value"]}, {"from": "gpt", "value": gpt["value"]}))
    return pairs


@functools.cache
def templates() -> dict[str, Any]:
    return yaml.safe_load(Path(__file__).with_name("instruct_templates.yaml").read_text())


def describe(rgb: Any, category: str) -> dict[str, str]:
    """The measured facts the answers use: name, article, colour, brightness, detail."""
    import numpy as np

    t = templates()
    pixels = rgb.astype(np.float32)
    mean = pixels.reshape(-1, 3).mean(0)
    names, refs = zip(*t["colours"].items(), strict=True)
    colour = names[int(np.argmin(((np.array(refs, np.float32) - mean) ** 2).sum(1)))]
    luma = float((pixels @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
    level = (
        "dark"
        if luma < t["brightness"]["dark"]
        else "bright"
        if luma > t["brightness"]["bright"]
        else "medium"
    )
    gray = pixels.mean(2)
    gradient = float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean()) / 2
    detail = "high" if gradient > t["detail_threshold"] else "low"
    name = category.replace("_", " ")
    return {
        "name": name,
        "article": "an" if name[:1].lower() in "aeiou" else "a",
        "colour": colour,
        "brightness": t["brightness_words"][level],
        "detail": t["detail_words"][detail],
    }


def write_instruction_set(
    images_root: str | Path, out_dir: str | Path, seed: int = 0, size: int = 224
) -> Path:
    """Write a PandaGPT-format set (JSON + ``images/``) about the train images of an MVTec-layout root.

    One item per image, 2-3 question/answer turns drawn from instruct_templates.yaml and answered
    from the image's own pixels. Returns the JSON path.
    """
    from PIL import Image

    records = read_dataset(images_root, "mvtec", split="train")
    if not records:
        raise DataError(f"no train images under {images_root}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    questions = templates()["questions"]
    items = []
    for record in sorted(records, key=lambda r: r.relpath):
        rgb = load_rgb(record.path)
        facts = describe(rgb, record.category)
        name = f"{record.category}_{Path(record.relpath).stem}.jpg"
        Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC).save(
            out / "images" / name, quality=92
        )
        conversation = []
        for qa in rng.sample(questions, rng.choice((2, 3))):
            conversation.append({"from": "human", "value": qa["q"]})
            conversation.append({"from": "gpt", "value": qa["a"].format(**facts)})
        items.append({"image_name": name, "conversation": conversation})
    path = out / JSON_NAME
    path.write_text(json.dumps(items, indent=1))
    log.info("wrote %d instruction items to %s", len(items), path)
    return path
