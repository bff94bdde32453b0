"""The PNGs of an inspection: the map itself (for programs) and an overlay a person can read.

Colours are the evaluation pictures' (evaluate.overlay): OpenCV's JET over the fixed range [0, 1],
so red is anomalous and two pictures compare. The overlay's colour bar marks the decision threshold
and where this image's score lies.
"""

from __future__ import annotations

import numpy as np

from evaluate.overlay import encode_png

PANEL = 320
"""The overlay's image panel is drawn at least this large, so small model inputs stay legible."""
BAR_GAP, BAR_WIDTH, LABELS = 14, 18, 96
_FONT = 0.42
_BLACK, _WHITE, _GRAY = (0, 0, 0), (255, 255, 255), (90, 90, 90)


def map_png(anomaly_map: np.ndarray, side: int) -> bytes:
    """8-bit grayscale PNG of the map at ``side`` x ``side``: pixel / 255 is the map's value
    (the threshold 0.5 is 128)."""
    import cv2

    values = np.clip(anomaly_map.astype(np.float32), 0.0, 1.0)
    if values.shape != (side, side):
        shrink = side < values.shape[0]
        values = cv2.resize(
            values, (side, side), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    return encode_png(np.round(values * 255.0).astype(np.uint8))


def heatmap(values: np.ndarray) -> np.ndarray:
    """BGR JET colours of values in [0, 1] (clipped)."""
    import cv2

    levels = (np.clip(values.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET)


def overlay_png(rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float, score: float | None) -> bytes:
    """The map blended over the image, and beside it a colour bar from 0 to 1 with the threshold
    drawn across it and a marker at the image's score."""
    import cv2

    side = max(PANEL, rgb.shape[0])
    image = cv2.cvtColor(cv2.resize(rgb, (side, side), interpolation=cv2.INTER_CUBIC), cv2.COLOR_RGB2BGR)
    heat = cv2.resize(heatmap(anomaly_map), (side, side), interpolation=cv2.INTER_LINEAR)
    panel = cv2.addWeighted(image, 0.45, heat, 0.55, 0.0)
    legend = _colour_bar(side, threshold, score)
    return encode_png(np.concatenate([panel, legend], axis=1))


def _colour_bar(height: int, threshold: float, score: float | None) -> np.ndarray:
    import cv2

    pad = 10
    width = BAR_GAP + BAR_WIDTH + LABELS
    legend = np.full((height, width, 3), 255, np.uint8)
    top, bottom = pad, height - pad
    levels = np.linspace(1.0, 0.0, bottom - top, dtype=np.float32)[:, None]
    legend[top:bottom, BAR_GAP : BAR_GAP + BAR_WIDTH] = heatmap(np.repeat(levels, BAR_WIDTH, axis=1))

    def row(value: float) -> int:
        return round(top + (1.0 - min(max(value, 0.0), 1.0)) * (bottom - top - 1))

    def label(text: str, y: int, colour: tuple[int, int, int] = _BLACK) -> None:
        x = BAR_GAP + BAR_WIDTH + 5
        y = min(max(y + 4, 12), height - 3)
        cv2.putText(legend, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, _FONT, colour, 1, cv2.LINE_AA)

    label("1.0", row(1.0), _GRAY)
    label("0.0", row(0.0), _GRAY)
    y = row(threshold)
    cv2.line(legend, (BAR_GAP - 3, y), (BAR_GAP + BAR_WIDTH + 2, y), _WHITE, 3)
    cv2.line(legend, (BAR_GAP - 3, y), (BAR_GAP + BAR_WIDTH + 2, y), _BLACK, 1)
    label(f"{threshold:g} threshold", y)
    if score is not None:
        y = row(score)
        tip = BAR_GAP - 1
        triangle = np.array([[tip, y], [tip - 9, y - 6], [tip - 9, y + 6]], np.int32)
        cv2.fillConvexPoly(legend, triangle, _BLACK)
        if abs(y - row(threshold)) > 14 and abs(y - row(1.0)) > 14 and abs(y - row(0.0)) > 14:
            label(f"{score:.2f}", y)
    return legend
