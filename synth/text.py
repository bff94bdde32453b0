"""Questions, answers and position words of the synthetic conversations.

Wording lives in synth/data/text.yaml. Each anomalous region is named by the 3x3-grid cell of its
own centroid (the reference used the running union box of the patches placed so far, a quirk).
"""

from __future__ import annotations

import functools
import importlib.resources

import numpy as np
import yaml


@functools.cache
def _table() -> dict:
    return yaml.safe_load(importlib.resources.files("synth.data").joinpath("text.yaml").read_text())


def description(category: str) -> str:
    """The class description; a generic one for categories without their own."""
    table = _table()
    known = table["descriptions"].get(category)
    return known or table["generic"].format(name=category.replace("_", " "))


def question_for(category: str, described: bool = True) -> str:
    """``<class description> Is there any anomaly in the image?``; the question alone when not
    ``described``."""
    table = _table()
    if not described:
        return table["ask"]
    return table["question"].format(description=description(category), ask=table["ask"])


def position_word(row: float, col: float, height: int, width: int) -> str:
    """Grid cell of pixel (row, col): cuts at 1/3 and 2/3, a point on a cut belongs to the cell before."""
    grid = _table()["positions"]
    return grid[_third(row / height)][_third(col / width)]


def region_positions(regions: list[np.ndarray]) -> list[str]:
    """One position word per non-empty region mask, from that region's own centroid."""
    words = []
    for region in regions:
        rows, cols = np.nonzero(region)
        if rows.size:
            h, w = region.shape[:2]
            words.append(position_word(rows.mean() + 0.5, cols.mean() + 0.5, h, w))
    return words


def answer(positions: list[str]) -> str:
    """The reference phrasing: "No, ..." for no region, one region, or N regions with distinct cells."""
    table = _table()["answers"]
    if not positions:
        return table["normal"]
    if len(positions) == 1:
        return table["one"].format(positions=positions[0])
    distinct = list(dict.fromkeys(positions))
    joined = distinct[0] if len(distinct) == 1 else ", ".join(distinct[:-1]) + " and " + distinct[-1]
    return table["many"].format(count=len(positions), positions=joined)


def answer_phrasings() -> tuple[str, ...]:
    """Each phrasing :func:`answer` writes, once: no anomaly, one in each grid cell, and several
    (their fixed words). Decoding proposes their words ahead (``train.model.drafting``)."""
    cells = [cell for row in _table()["positions"] for cell in row]
    return (answer([]), *(answer([cell]) for cell in cells), answer(cells[:2]), answer(cells[:3]))


def conversation(category: str, positions: list[str], described: bool = True) -> list[dict[str, str]]:
    return [
        {"from": "human", "value": question_for(category, described)},
        {"from": "gpt", "value": answer(positions)},
    ]


def _third(x: float) -> int:
    return 0 if x <= 1 / 3 else 1 if x <= 2 / 3 else 2
