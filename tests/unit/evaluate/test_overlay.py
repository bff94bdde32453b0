"""The overlay's colour bar: the map's scale, the decision threshold on it, the image's score."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from evaluate.overlay import (
    BAR_GAP,
    BAR_LABELS,
    BAR_PAD,
    BAR_WIDTH,
    PANEL,
    colour_bar,
    heatmap,
    render_overlay,
)
from pipeline.serve.pictures import overlay_png
from train.model.config import DECISION_POINT

STRIP = BAR_GAP + BAR_WIDTH + BAR_LABELS
MIDDLE = BAR_GAP + BAR_WIDTH // 2  # a column inside the bar
LABELS_FROM = BAR_GAP + BAR_WIDTH + 1  # the label column's first pixel


def row_of(value: float, height: int, score_range=(0.0, 1.0)) -> int:
    """Where ``value`` lies on a bar ``height`` tall: the bar runs from high (top) to low (bottom)."""
    lo, hi = score_range
    top, bottom = BAR_PAD, height - BAR_PAD
    return round(top + (1.0 - (value - lo) / (hi - lo)) * (bottom - top - 1))


def black_rows(column: np.ndarray) -> list[int]:
    return [int(y) for y in np.flatnonzero((column == 0).all(axis=1))]


def picture(score: float | None = None, **kwargs) -> np.ndarray:
    image = np.full((64, 64, 3), 128, np.uint8)
    amap = np.zeros((64, 64), np.float32)
    amap[20:30, 20:30] = 0.8
    return render_overlay(image, amap, None, "brick/test/hole/000.png", "Yes.", score=score, **kwargs)


def test_the_overlay_has_a_colour_bar_of_the_maps_scale_beside_the_map():
    pic = picture()
    assert pic.shape[1] == 2 * PANEL + STRIP and pic.shape[0] > PANEL  # a sensible size
    legend = pic[:PANEL, 2 * PANEL :]
    bar = legend[:, MIDDLE]
    for value in (0.95, 0.8, 0.3, 0.05):  # each row has the heatmap's colour of its value
        want = heatmap(np.array([[value]], np.float32))[0, 0].astype(int)
        got = bar[row_of(value, PANEL)].astype(int)
        assert np.abs(got - want).max() <= 12, (value, got, want)
    assert bar[BAR_PAD + 2][2] > 100 and bar[BAR_PAD + 2][0] < 60  # red (BGR) at the top: 1
    assert bar[PANEL - BAR_PAD - 3][0] > 100 and bar[PANEL - BAR_PAD - 3][2] < 60  # blue at the bottom: 0
    assert (legend[: BAR_PAD - 2, MIDDLE] == 255).all()  # white above the bar's end


def test_the_threshold_is_drawn_across_the_bar_where_half_is():
    legend = colour_bar(PANEL, score=None)
    assert DECISION_POINT == 0.5
    mark = black_rows(legend[:, MIDDLE])
    assert mark == [row_of(0.5, PANEL)]  # one black line, at 0.5 of the scale
    assert (legend[row_of(0.5, PANEL) - 1, MIDDLE] == 255).all()  # a white edge lets it show on any colour
    # with another colour range the threshold stays at 0.5 of the map's values
    wide = colour_bar(PANEL, score=None, score_range=(0.0, 2.0))
    assert black_rows(wide[:, MIDDLE]) == [row_of(0.5, PANEL, (0.0, 2.0))]
    outside = colour_bar(PANEL, score=None, score_range=(0.6, 1.0))
    assert black_rows(outside[:, MIDDLE]) == []  # no mark when 0.5 is off the scale


@pytest.mark.parametrize("score", [0.9, 0.2])
def test_the_images_score_is_marked_and_printed_beside_it(score):
    with_score, without = colour_bar(PANEL, score), colour_bar(PANEL, None)
    marker = black_rows(with_score[:, BAR_GAP - 4])
    assert marker and abs(np.mean(marker) - row_of(score, PANEL)) <= 1  # the marker points at the score
    changed = np.flatnonzero((with_score[:, LABELS_FROM:] != without[:, LABELS_FROM:]).any(axis=(1, 2)))
    assert changed.size and abs(np.median(changed) - row_of(score, PANEL)) <= 6  # its text beside it


def test_a_score_beside_the_threshold_is_printed_clear_of_its_label():
    near = colour_bar(PANEL, 0.52)
    alone = colour_bar(PANEL, None)
    changed = np.flatnonzero((near[:, LABELS_FROM:] != alone[:, LABELS_FROM:]).any(axis=(1, 2)))
    threshold_row = row_of(0.5, PANEL)
    assert changed.size and changed.max() < threshold_row - 4  # above the threshold's label, not on it


def test_the_score_defaults_to_the_maps_maximum_and_the_title_stays():
    default, explicit = picture(), picture(score=0.8)
    assert np.array_equal(default, explicit)
    other = picture(score=0.3)
    assert not np.array_equal(default[:PANEL, 2 * PANEL :], other[:PANEL, 2 * PANEL :])
    assert np.array_equal(default[:PANEL, : 2 * PANEL], other[:PANEL, : 2 * PANEL])  # panels unchanged


def test_no_map_keeps_the_size_and_draws_no_bar():
    image = np.full((64, 64, 3), 128, np.uint8)
    pic = render_overlay(image, None, None, "t", None)
    assert pic.shape[1] == 2 * PANEL + STRIP
    assert (pic[:PANEL, 2 * PANEL :] == 255).all()


def test_the_service_overlay_uses_the_same_colour_bar():
    amap = np.zeros((64, 64), np.float32)
    amap[10:20, 10:20] = 0.7
    png = overlay_png(np.zeros((64, 64, 3), np.uint8), amap, 0.5, 0.7)
    served = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)  # BGR
    side = served.shape[0]
    assert served.shape[1] == side + STRIP
    assert np.array_equal(served[:, side:], colour_bar(side, 0.7, 0.5))


def test_region_boxes_are_outlined_on_both_panels_and_no_boxes_change_nothing():
    plain = picture()
    assert np.array_equal(plain, picture(boxes=None)) and np.array_equal(plain, picture(boxes=[]))
    boxed = picture(boxes=[(20, 20, 30, 30)])  # the map's blob, in the map's 64 px
    magenta = (boxed[:, :, 0] == 255) & (boxed[:, :, 1] == 0) & (boxed[:, :, 2] == 255)
    assert not ((plain[:, :, 0] == 255) & (plain[:, :, 1] == 0) & (plain[:, :, 2] == 255)).any()
    first, last = 20 * PANEL // 64, 30 * PANEL // 64 - 1  # the box's edges on a panel: 80 and 119
    for left in (0, PANEL):  # the image panel and the heatmap panel
        rows, cols = np.nonzero(magenta[:PANEL, left : left + PANEL])
        assert abs(rows.min() - first) <= 1 and abs(rows.max() - last) <= 1
        assert abs(cols.min() - first) <= 1 and abs(cols.max() - last) <= 1
        assert not magenta[100, left + 100]  # an outline: the inside stays as it was
    assert not magenta[:, 2 * PANEL :].any()  # nothing on the colour bar or the text
