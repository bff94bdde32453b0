"""evaluate.regions: the connected regions of a map above 0.5 told by their cores, their boxes in the
original image's pixels, and box IoU against a ground-truth mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluate.regions import CORE_SHARE, MAX_REGIONS, Region, best_box_iou, box_iou, find_regions, mask_box


def two_blobs() -> np.ndarray:
    """32 x 32: a small hot blob at the top right (0.9) and a larger cooler one at the bottom left."""
    amap = np.full((32, 32), 0.1, np.float32)
    amap[2:6, 20:28] = 0.9  # 4 x 8 = 32 px
    amap[20:30, 2:10] = 0.7  # 10 x 8 = 80 px
    return amap


def test_each_component_is_a_region_hottest_first_with_its_box_area_scores_and_cell():
    hot, cool = find_regions(two_blobs())
    assert hot == Region(
        box=(20, 2, 28, 6),
        area_px=32,
        area_share=32 / 1024,
        peak=pytest.approx(0.9),
        mean=pytest.approx(0.9),
        position="top right",
    )
    assert cool.box == (2, 20, 10, 30) and cool.area_px == 80 and cool.position == "bottom left"
    assert cool.peak == pytest.approx(0.7) and cool.area_share == pytest.approx(80 / 1024)


def test_the_mean_is_over_the_core_only_and_the_peak_is_the_components_maximum():
    amap = np.zeros((16, 16), np.float32)
    amap[4:8, 4:8] = 0.85  # at least CORE_SHARE of the peak: the core
    amap[5, 5] = 0.95
    amap[4:8, 8:10] = 0.6  # above the boundary, so the same component, but below the core
    (region,) = find_regions(amap)
    assert region.peak == pytest.approx(0.95)
    assert region.mean == pytest.approx((15 * 0.85 + 0.95) / 16)
    assert region.box == (4, 4, 8, 8) and region.area_px == 16


def test_a_region_is_told_by_its_core_not_by_the_smoothed_spread_around_it():
    """A smoothed defect: a hot centre inside a wide shoulder above 0.5. The box, area and cell are
    the core's; the shoulder, reaching into the next grid cell, does not widen them."""
    amap = np.zeros((30, 30), np.float32)
    amap[2:22, 2:22] = 0.55  # the shoulder: 20 x 20, over four cells
    amap[3:7, 3:7] = 0.9  # the core: 4 x 4 in the top left cell
    (region,) = find_regions(amap)
    assert region.box == (3, 3, 7, 7) and region.area_px == 16 and region.position == "top left"
    assert 0.55 < CORE_SHARE * 0.9 <= 0.9


def test_boxes_and_areas_scale_to_a_non_square_original_image():
    """The map is the square model input; the image was W x H: each axis scales on its own."""
    hot, cool = find_regions(two_blobs(), image_size=(64, 96))  # x times 2, y times 3
    assert hot.box == (40, 6, 56, 18) and hot.area_px == 32 * 6
    assert cool.box == (4, 60, 20, 90) and cool.area_px == 80 * 6
    assert hot.area_share == 32 / 1024 and hot.position == "top right"  # shares and cells do not change
    # a scale that is no integer: start floored, end ceiled, never past the image's edge
    edge = np.zeros((32, 32), np.float32)
    edge[2:6, 20:32] = 0.8
    (region,) = find_regions(edge, image_size=(50, 70))
    assert region.box == (31, 4, 50, 14)  # floor(20 * 50/32), floor(2 * 70/32), 50, ceil(6 * 70/32)


def test_diagonal_neighbours_are_one_region():
    amap = np.zeros((16, 16), np.float32)
    for i in range(6):
        amap[i + 2, i + 2] = 0.8  # a diagonal line: 8-connected
    (region,) = find_regions(amap)
    assert region.box == (2, 2, 8, 8) and region.area_px == 6


def test_specks_are_dropped_beside_a_region_so_the_peak_may_be_below_the_score():
    amap = np.zeros((32, 32), np.float32)
    amap[20:23, 20:23] = 0.6  # 9 px: a region
    amap[3, 3] = 0.99  # a 1 px speck, the map's maximum
    (region,) = find_regions(amap)
    assert region.box == (20, 20, 23, 23)
    assert region.peak == pytest.approx(0.6) and region.peak < float(amap.max())


def test_when_only_specks_rise_above_the_hottest_one_stands_for_the_anomaly():
    amap = np.zeros((32, 32), np.float32)
    amap[3, 3] = 0.8
    amap[20, 20:22] = 0.95  # 2 px, hotter
    (region,) = find_regions(amap)
    assert region.box == (20, 20, 22, 21) and region.peak == pytest.approx(0.95)


def test_equal_peaks_put_the_larger_region_first_and_at_most_max_regions_come_back():
    amap = np.zeros((16, 16), np.float32)
    amap[0:2, 0:2] = 0.8  # 4 px
    amap[8:12, 8:12] = 0.8  # 16 px
    assert [r.area_px for r in find_regions(amap)] == [16, 4]
    many = np.zeros((64, 64), np.float32)
    for k in range(MAX_REGIONS + 4):  # 20 separate 2 x 2 squares, hotter towards the end
        row, col = divmod(k, 8)
        many[row * 8 : row * 8 + 2, col * 8 : col * 8 + 2] = 0.6 + 0.01 * k
    found = find_regions(many)
    assert len(found) == MAX_REGIONS
    assert found[0].peak == pytest.approx(0.6 + 0.01 * (MAX_REGIONS + 3))  # the hottest kept
    assert [r.peak for r in found] == sorted((r.peak for r in found), reverse=True)


def test_no_map_or_nothing_above_the_boundary_gives_no_regions():
    assert find_regions(None) == []
    assert find_regions(np.full((8, 8), 0.5, np.float32)) == []  # at 0.5 is not above it
    assert find_regions(np.zeros((8, 8), np.float32), image_size=(100, 50)) == []
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        find_regions(np.zeros((1, 8, 8), np.float32))


def test_to_dict_is_plain_json():
    region = find_regions(two_blobs(), image_size=(64, 96))[0]
    data = json.loads(json.dumps(region.to_dict()))
    assert data == {
        "box": [40, 6, 56, 18],
        "area_px": 192,
        "area_share": 32 / 1024,
        "peak": pytest.approx(0.9),
        "mean": pytest.approx(0.9),
        "position": "top right",
    }


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # ends are exclusive: they only touch
    assert box_iou((0, 0, 4, 4), (1, 1, 3, 3)) == pytest.approx(4 / 16)
    assert box_iou((3, 3, 3, 3), (3, 3, 3, 3)) == 0.0  # empty boxes


def test_mask_box_encloses_every_true_pixel():
    mask = np.zeros((12, 12), bool)
    mask[3:6, 7:10] = True
    mask[0, 1] = True
    assert mask_box(mask) == (1, 0, 10, 6)
    assert mask_box(np.zeros((5, 5), bool)) is None


def test_best_box_iou_takes_the_region_that_matches_the_ground_truth_best():
    amap = two_blobs()
    truth = np.zeros((32, 32), bool)
    truth[20:30, 2:10] = True  # exactly the cooler blob
    assert best_box_iou(find_regions(amap), truth) == 1.0
    shifted = np.zeros((32, 32), bool)
    shifted[22:32, 2:10] = True  # 8 of its 10 rows overlap: 64 / (80 + 80 - 64)
    assert best_box_iou(find_regions(amap), shifted) == pytest.approx(64 / 96)
    assert best_box_iou([], truth) == 0.0  # a defect without a region
    assert best_box_iou(find_regions(amap), np.zeros((32, 32), bool)) is None  # no ground truth


def test_the_worker_measures_box_iou_on_detected_defects_with_a_mask_only():
    from evaluate.data import EvalItem
    from evaluate.worker import region_box_iou
    from train.model.batch import Prediction

    amap = two_blobs()
    truth = np.zeros((32, 32), bool)
    truth[22:32, 2:10] = True

    def item(label: int, mask: str | None) -> EvalItem:
        return EvalItem("c/test/d/0.png", "/x/0.png", "c", label, "d", mask, mask is not None)

    detected = Prediction("c", amap, float(amap.max()), None)
    assert region_box_iou(item(1, "m.png"), detected, truth) == pytest.approx(64 / 96)
    assert region_box_iou(item(0, None), detected, np.zeros_like(truth)) is None  # a normal image
    assert region_box_iou(item(1, None), detected, np.zeros_like(truth)) is None  # no mask
    assert region_box_iou(item(1, "m.png"), detected, np.zeros_like(truth)) is None  # an empty mask
    missed = Prediction("c", amap * 0.5, float(amap.max()) * 0.5, None)  # peak 0.45: not detected
    assert region_box_iou(item(1, "m.png"), missed, truth) is None
    assert region_box_iou(item(1, "m.png"), Prediction("c", None, None, None), truth) is None
