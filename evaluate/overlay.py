"""An anomaly map a person can read: image | heatmap blend | colour bar, ground-truth contour, verdict and
answer. The heatmap colours, the blend and the colour bar are the one way this project draws a map:
evaluation maps, ``ask`` and the web service's overlay all use them."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np

from train.model.config import DECISION_POINT

PANEL = 256  # each panel is drawn at least this large so small evaluation sizes stay legible
BAR_GAP, BAR_WIDTH, BAR_LABELS = 14, 18, 110
"""The colour bar's strip: a gap (where the score's marker points from), the bar, its labels."""
BAR_PAD = 10  # the bar's ends stay this far from the strip's top and bottom
_GT_COLOUR = (0, 255, 0)  # BGR green
_BOX_COLOUR = (255, 0, 255)  # BGR magenta: no colour of the JET heatmap, so a box shows on any part of it
_FONT_SCALE = 0.45
_BAR_FONT = 0.42
_LINE = 18
_LABEL_ROOM = 14  # labels closer than this (px) would overlap
_BLACK, _WHITE, _GRAY = (0, 0, 0), (255, 255, 255), (90, 90, 90)


def render_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray | None,
    gt: np.ndarray | None,
    title: str,
    answer: str | None,
    score_range: tuple[float, float] = (0.0, 1.0),
    score: float | None = None,
    threshold: float = DECISION_POINT,
    boxes: Sequence[tuple[int, int, int, int]] | None = None,
) -> np.ndarray:
    """uint8 BGR picture: left the image, middle the map as a JET heatmap blended over it (red is
    anomalous, colours fixed to ``score_range`` so pictures compare), right the colour bar of that
    scale with the threshold across it and the image's score marked and printed (``score``: default
    the map's maximum, the model's image score), the ground truth outlined in green on both panels,
    ``boxes`` (x0, y0, x1, y1 at the map's size, x1/y1 exclusive: evaluate.regions' boxes) in
    magenta on both panels, and below a title line and the answer wrapped to the width."""
    import cv2

    side = max(PANEL, image.shape[0])
    rgb = cv2.resize(image, (side, side), interpolation=cv2.INTER_NEAREST)
    left = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if anomaly_map is not None:
        right = blend(left, anomaly_map, score_range)
        if score is None:
            score = float(anomaly_map.max())
        legend = colour_bar(side, score, threshold, score_range)
    else:
        right = np.full_like(left, 40)
        cv2.putText(right, "no map", (10, side // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 1)
        legend = np.full((side, BAR_GAP + BAR_WIDTH + BAR_LABELS, 3), 255, np.uint8)
    if gt is not None and gt.any():
        mask = cv2.resize(gt.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for panel in (left, right):
            cv2.drawContours(panel, contours, -1, _GT_COLOUR, 2)
    if boxes and anomaly_map is not None:
        scale = side / anomaly_map.shape[1]
        for panel in (left, right):
            _draw_boxes(panel, boxes, scale)
    top = np.concatenate([left, right, legend], axis=1)
    chars = max(20, int(top.shape[1] / (_FONT_SCALE * 22)))
    lines = [title, *textwrap.wrap(f"answer: {answer}" if answer is not None else "answer: (no LLM)", chars)]
    lines = lines[:6]
    text = np.full((_LINE * len(lines) + 8, top.shape[1], 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(
            text, line, (6, _LINE * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA
        )
    return np.concatenate([top, text], axis=0)


def _draw_boxes(panel: np.ndarray, boxes: Sequence[tuple[int, int, int, int]], scale: float) -> None:
    """Outline each (x0, y0, x1, y1) box, given ``scale`` times smaller than ``panel``, in place."""
    import cv2

    for x0, y0, x1, y1 in boxes:
        top_left = (round(x0 * scale), round(y0 * scale))
        bottom_right = (max(round(x1 * scale) - 1, top_left[0]), max(round(y1 * scale) - 1, top_left[1]))
        cv2.rectangle(panel, top_left, bottom_right, _BOX_COLOUR, 2)


def heatmap(values: np.ndarray, score_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """BGR JET colours of values scaled from ``score_range`` to [0, 1] (clipped): blue low, red high."""
    import cv2

    lo, hi = score_range
    norm = np.clip((values.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)


def blend(image_bgr: np.ndarray, anomaly_map: np.ndarray, score_range: tuple[float, float] = (0.0, 1.0)):
    """The map's heatmap, resized to the image, blended over it (the image shows through)."""
    import cv2

    height, width = image_bgr.shape[:2]
    heat = cv2.resize(heatmap(anomaly_map, score_range), (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(image_bgr, 0.45, heat, 0.55, 0.0)


def colour_bar(
    height: int,
    score: float | None,
    threshold: float = DECISION_POINT,
    score_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """A BGR strip ``height`` tall: the heatmap's scale from ``score_range``'s low (bottom) to high
    (top), labelled at both ends, the threshold drawn across it, and a marker at ``score`` with the
    score printed beside it."""
    import cv2

    lo, hi = score_range
    legend = np.full((height, BAR_GAP + BAR_WIDTH + BAR_LABELS, 3), 255, np.uint8)
    top, bottom = BAR_PAD, height - BAR_PAD
    levels = np.repeat(np.linspace(hi, lo, bottom - top, dtype=np.float32)[:, None], BAR_WIDTH, axis=1)
    legend[top:bottom, BAR_GAP : BAR_GAP + BAR_WIDTH] = heatmap(levels, score_range)

    def row(value: float) -> int:
        share = (min(max(value, lo), hi) - lo) / (hi - lo)
        return round(top + (1.0 - share) * (bottom - top - 1))

    def label(text: str, y: int, colour: tuple[int, int, int] = _BLACK) -> None:
        y = min(max(y + 4, 12), height - 3)
        x = BAR_GAP + BAR_WIDTH + 5
        cv2.putText(legend, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, _BAR_FONT, colour, 1, cv2.LINE_AA)

    taken: list[int] = []  # rows of the labels drawn so far
    if lo <= threshold <= hi:
        y = row(threshold)
        cv2.line(legend, (BAR_GAP - 3, y), (BAR_GAP + BAR_WIDTH + 2, y), _WHITE, 3)
        cv2.line(legend, (BAR_GAP - 3, y), (BAR_GAP + BAR_WIDTH + 2, y), _BLACK, 1)
        label(f"{threshold:g} threshold", y)
        taken.append(y)
    if score is not None:
        y = row(score)
        tip = BAR_GAP - 1
        cv2.fillConvexPoly(legend, np.array([[tip, y], [tip - 9, y - 6], [tip - 9, y + 6]], np.int32), _BLACK)
        if taken and abs(y - taken[0]) < _LABEL_ROOM:  # beside the threshold: move to its own side
            y = taken[0] + (-_LABEL_ROOM if score > threshold else _LABEL_ROOM)
        label(f"score {score:.2f}", y)
        taken.append(y)
    for value in (hi, lo):
        y = row(value)
        if all(abs(y - other) >= _LABEL_ROOM for other in taken):
            label(f"{value:.1f}" if float(value).is_integer() else f"{value:g}", y, _GRAY)
    return legend


def encode_png(picture: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
