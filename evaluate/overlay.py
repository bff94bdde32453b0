"""An anomaly map a person can read: image | heatmap blend, ground-truth contour, verdict and answer."""

from __future__ import annotations

import textwrap

import numpy as np

PANEL = 256  # each panel is drawn at least this large so small evaluation sizes stay legible
_GT_COLOUR = (0, 255, 0)  # BGR green
_FONT_SCALE = 0.45
_LINE = 18


def render_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray | None,
    gt: np.ndarray | None,
    title: str,
    answer: str | None,
    score_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """uint8 BGR picture: left the image, right the map as a JET heatmap blended over it (red is
    anomalous, colours fixed to ``score_range`` so pictures compare), the ground truth outlined in
    green on both, and below a title line and the answer wrapped to the width."""
    import cv2

    side = max(PANEL, image.shape[0])
    rgb = cv2.resize(image, (side, side), interpolation=cv2.INTER_NEAREST)
    left = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if anomaly_map is not None:
        lo, hi = score_range
        norm = np.clip((anomaly_map.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
        heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
        heat = cv2.resize(heat, (side, side), interpolation=cv2.INTER_LINEAR)
        right = cv2.addWeighted(left, 0.45, heat, 0.55, 0.0)
    else:
        right = np.full_like(left, 40)
        cv2.putText(right, "no map", (10, side // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 1)
    if gt is not None and gt.any():
        mask = cv2.resize(gt.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for panel in (left, right):
            cv2.drawContours(panel, contours, -1, _GT_COLOUR, 2)
    top = np.concatenate([left, right], axis=1)
    chars = max(20, int(top.shape[1] / (_FONT_SCALE * 22)))
    lines = [title, *textwrap.wrap(f"answer: {answer}" if answer is not None else "answer: (no LLM)", chars)]
    lines = lines[:6]
    text = np.full((_LINE * len(lines) + 8, top.shape[1], 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(
            text, line, (6, _LINE * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA
        )
    return np.concatenate([top, text], axis=0)


def encode_png(picture: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
