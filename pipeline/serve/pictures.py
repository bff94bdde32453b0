"""The PNGs of an inspection: the map itself (for programs) and an overlay a person can read.

The overlay is drawn as the evaluation pictures are (evaluate.overlay: OpenCV's JET over the fixed
range [0, 1], so red is anomalous and two pictures compare), with its colour bar: the decision
threshold across it and this image's score marked and printed.
"""

from __future__ import annotations

import numpy as np

from evaluate.overlay import blend, colour_bar, encode_png

PANEL = 320
"""The overlay's image panel is drawn at least this large, so small model inputs stay legible."""


def map_png(anomaly_map: np.ndarray, side: int) -> bytes:
    """8-bit grayscale PNG of the map at ``side`` x ``side``: pixel / 255 is the map's value
    (the threshold 0.5 is 128)."""
    from pipeline.inference import resized_map

    values = np.clip(resized_map(anomaly_map, side), 0.0, 1.0)
    return encode_png(np.round(values * 255.0).astype(np.uint8))


def overlay_png(rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float, score: float | None) -> bytes:
    """The map blended over the image, and beside it a colour bar from 0 to 1 with the threshold
    drawn across it and a marker at the image's score."""
    import cv2

    side = max(PANEL, rgb.shape[0])
    image = cv2.cvtColor(cv2.resize(rgb, (side, side), interpolation=cv2.INTER_CUBIC), cv2.COLOR_RGB2BGR)
    legend = colour_bar(side, score, threshold)
    return encode_png(np.concatenate([blend(image, anomaly_map), legend], axis=1))
