"""The PandaGPT/AnomalyGPT conversation template: rendering, tokenising with label masks, parsing.

Layout of one sample (the image and prompt tokens are embeddings, not text):

    [BOS] "### Human: <Img>" [image token] "</Img> " [prompt tokens] turn_1 turn_2 ...

with the first human turn "<q>\\n### Assistant:", later human turns "Human: <q>\\n### Assistant:" and
assistant turns "<a>\\n###". Only assistant text carries labels; everything else is -100.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

IGNORE = -100


@functools.cache
def tables() -> dict[str, Any]:
    """The text tables in prompts.yaml (state phrases, templates, conversation strings, positions)."""
    return yaml.safe_load((Path(__file__).with_name("prompts.yaml")).read_text())


def _fmt() -> dict[str, str]:
    return tables()["conversation"]


def turn_segments(turns: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Text segments of the turns as (text, is_target): human text is context, assistant text a target."""
    fmt = _fmt()
    segments = []
    for i, turn in enumerate(turns):
        who, value = turn.get("from"), turn.get("value")
        if who not in ("human", "gpt") or not isinstance(value, str):
            raise ValueError(f"conversation turn {i}: expected from human|gpt and a text value, got {turn!r}")
        if i == 0 and who != "human":
            raise ValueError("a conversation must start with a human turn")
        if who == "human":
            segments.append((fmt["first_human" if i == 0 else "human"].format(value), False))
        else:
            segments.append((fmt["assistant"].format(value), True))
    return segments


def render(turns: list[dict[str, str]]) -> str:
    """The text part of a sample (after the prompt tokens) as one string."""
    return "".join(text for text, _ in turn_segments(turns))


def split_turns(text: str) -> list[dict[str, str]]:
    """Inverse of :func:`render`."""
    fmt = _fmt()
    sep = fmt["separator"]
    ask = fmt["first_human"].split("{}")[1]  # "\n### Assistant:"
    human_prefix = fmt["human"].split("{}")[0]  # "Human: "
    turns, rest, first = [], text, True
    while rest:
        question, found, rest = rest.partition(ask)
        if not found:
            raise ValueError(f"no {ask!r} after human text {question!r}")
        if not first:
            if not question.startswith(human_prefix):
                raise ValueError(f"later human turn must start with {human_prefix!r}: {question!r}")
            question = question[len(human_prefix) :]
        turns.append({"from": "human", "value": question})
        first = False
        answer, found, rest = rest.partition("\n" + sep)
        if not found:
            raise ValueError(f"assistant turn without the {sep!r} separator: {answer!r}")
        turns.append({"from": "gpt", "value": answer})
    return turns


def tokenize_turns(tokenizer: Any, turns: list[dict[str, str]], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of the text part; each segment tokenised alone (no special tokens),
    truncated to ``max_len`` text tokens as the reference does."""
    ids: list[int] = []
    labels: list[int] = []
    for text, is_target in turn_segments(turns):
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(seg)
        labels.extend(seg if is_target else [IGNORE] * len(seg))
        if len(ids) >= max_len:
            break
    return ids[:max_len], labels[:max_len]


def pad_batch(
    seqs: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Right-pad ids with ``pad_id``, labels with -100; the attention mask marks real tokens
    (explicit, so a real EOS inside the text is never masked as the reference's ``ids != pad`` does)."""
    width = max((len(ids) for ids, _ in seqs), default=0)
    ids_out, labels_out, mask_out = [], [], []
    for ids, labels in seqs:
        pad = width - len(ids)
        ids_out.append(ids + [pad_id] * pad)
        labels_out.append(labels + [IGNORE] * pad)
        mask_out.append([1] * len(ids) + [0] * pad)
    return ids_out, labels_out, mask_out


@dataclass
class ParsedAnswer:
    """What an answer says: anomalous or not (None if it says neither) and the position words."""

    is_anomalous: bool | None
    positions: list[str]


def parse_answer(text: str | None) -> ParsedAnswer:
    """Read yes/no and the 3x3-grid position words ("top left", "center", ...) from an answer."""
    if not text:
        return ParsedAnswer(None, [])
    lowered = text.lower()
    verdict: bool | None = None
    first = re.search(r"\b(yes|no)\b", lowered)
    if first:
        verdict = first.group(1) == "yes"
    words = sorted(tables()["positions"], key=len, reverse=True)  # "top left" before "top"
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b")
    positions: list[str] = []
    for match in pattern.finditer(lowered):
        if match.group(1) not in positions:
            positions.append(match.group(1))
    return ParsedAnswer(verdict, positions)
