"""Do the answers follow the map: F1-max threshold, agreement, position accuracy, best accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from evaluate.data import gt_positions
from evaluate.metrics import (
    answer_agreement,
    best_threshold_accuracy,
    f1_max,
    f1_max_threshold,
    position_accuracy,
)
from evaluate.report import ANSWER_METRICS, category_metrics, mean_metrics

YES_TOP = "Yes, there is an anomaly in the image, at the top of the image."
YES_TWO = "Yes, there are 2 anomalies in the image, they are at the top left and bottom right of the image."
NO = "No, there is no anomaly in the image."


def test_f1_max_threshold_is_where_f1_max_is_reached():
    # >=0.8: F1 2/3, >=0.4: 1/2, >=0.35: 4/5, >=0.1: 2/3
    assert f1_max_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.35
    assert f1_max([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.8, abs=1e-15)
    # >=0.9 and >=0.5 both give F1 2/3: the highest threshold wins
    assert f1_max_threshold([0.9, 0.7, 0.6, 0.5], [1, 0, 0, 1]) == 0.9
    with pytest.raises(ValueError, match="anomalous"):
        f1_max_threshold([0.1, 0.2], [0, 0])


@pytest.mark.parametrize("seed", range(4))
def test_the_f1_at_the_threshold_is_f1_max(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    labels[0] = 1
    scores = rng.integers(0, 20, 300) / 10.0 + labels * rng.uniform(0, 1)  # with ties
    threshold = f1_max_threshold(scores, labels)
    assert threshold in scores
    assert f1_score(labels, scores >= threshold) == pytest.approx(f1_max(scores, labels), abs=1e-12)


def _brute_best_accuracy(scores, labels) -> float:
    s, y = np.asarray(scores), np.asarray(labels).astype(bool)
    return max(float(np.mean((s >= t) == y)) for t in [*s, np.inf])


@pytest.mark.parametrize("seed", range(4))
def test_best_threshold_accuracy_is_the_best_any_threshold_reaches(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 15, 200) / 10.0 + labels * rng.uniform(0, 1)
    assert best_threshold_accuracy(scores, labels) == _brute_best_accuracy(scores, labels)


def test_best_threshold_accuracy_by_hand_and_with_one_class():
    # nothing anomalous 1/2, >=0.8 3/4, >=0.4 1/2, >=0.35 3/4, >=0.1 1/2
    assert best_threshold_accuracy([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert best_threshold_accuracy([0.5, 0.5], [0, 1]) == 0.5  # a tie cannot be split
    assert best_threshold_accuracy([0.3, 0.5], [0, 0]) == 1.0  # a threshold above every score
    assert best_threshold_accuracy([0.3, 0.5], [1, 1]) == 1.0  # a threshold at the lowest
    with pytest.raises(ValueError, match="zero"):
        best_threshold_accuracy([], [])


def test_agreement_counts_an_answer_without_yes_or_no_as_disagreeing():
    assert answer_agreement([True, None, False, True], [True, False, False, False]) == 0.5
    assert answer_agreement([None], [False]) == 0.0
    with pytest.raises(ValueError, match="zero"):
        answer_agreement([], [])
    with pytest.raises(ValueError, match="length"):
        answer_agreement([True], [True, False])


def test_position_accuracy_needs_one_named_cell_of_a_region():
    answered = [["top left"], [], ["center", "bottom"], ["top"]]
    truth = [["top left", "right"], ["center"], ["bottom"], ["top left"]]
    assert position_accuracy(answered, truth) == 0.5
    with pytest.raises(ValueError, match="zero"):
        position_accuracy([], [])


def test_gt_positions_name_each_8_connected_region_by_its_centroid():
    gt = np.zeros((60, 60), bool)
    assert gt_positions(gt) == []
    gt[0:10, 0:10] = True  # centroid (5, 5): top left
    gt[45:60, 40:60] = True  # bottom right
    gt[30, 30:32] = True  # a 2-pixel speck in the center: left out
    assert gt_positions(gt) == ["top left", "bottom right"]


def test_gt_positions_join_diagonal_neighbours_and_keep_a_lone_speck():
    gt = np.zeros((60, 60), bool)
    gt[12:20, 12:20] = True  # alone its centroid (16, 16) is top left
    gt[20:36, 20:36] = True  # touches the first only at a corner; alone: center
    assert gt_positions(gt) == ["center"]  # one region, centroid (25.6, 25.6)
    speck = np.zeros((60, 60), bool)
    speck[50, 50] = True
    assert gt_positions(speck) == ["bottom right"]  # the only thing there is the defect


def _row(label, score, answer, gt=None, error=None, hottest=None):
    return {"image": "x.png", "category": "brick", "label": label, "defect": "d", "score": score,
            "answer": answer, "error": error, "gt_positions": gt, "map_position": hottest}  # fmt: skip


def _rows():
    """F1-optimal threshold 0.2 (F1 10/11): the map calls everything but the 0.1 normal anomalous."""
    return [
        _row(0, 0.1, NO),  # map no, answer no: agree
        _row(0, 0.4, YES_TOP),  # map yes, answer yes: agree (a normal: no position figure)
        _row(1, 0.35, "Yes, there is no anomaly", ["top left"], hottest="top left"),  # names no cell: miss
        _row(1, 0.8, "Maybe.", ["center"], hottest="top"),  # neither yes nor no: no position figure
        _row(1, 0.9, YES_TWO, ["bottom right", "center"], hottest="center"),  # agree, position hit
        _row(1, 0.2, NO, ["top"]),  # map yes, answer no: disagree
        _row(1, 0.5, YES_TOP),  # no mask: agrees, no position figure
        _row(1, None, None, error="unreadable image: x"),  # left out
    ]


def test_category_figures_by_hand():
    m = category_metrics(_rows(), None, answers_used=True, max_fpr=0.3)
    assert m["answer_map_agreement"] == 5 / 7
    assert m["position_accuracy"] == 1 / 2
    assert m["map_position_accuracy"] == 1.0  # the map's hottest cell is right where the answer missed
    assert m["position_follows_map"] == 0.0  # hottest top left: names none; center: names two others
    assert m["n_position_answers"] == 2
    # nothing 2/7, >=.9 3/7, >=.8 4/7, >=.5 5/7, >=.4 4/7, >=.35 5/7, >=.2 6/7, >=.1 5/7
    assert m["map_best_accuracy"] == 6 / 7
    assert m["accuracy"] == 4 / 7  # the answers against the labels, for comparison


def test_without_answers_or_scores_the_figures_that_need_them_are_null():
    no_answers = category_metrics(_rows(), None, answers_used=False, max_fpr=0.3)
    assert no_answers["answer_map_agreement"] is None and no_answers["position_accuracy"] is None
    assert no_answers["map_position_accuracy"] is None  # on the images answered yes: none here
    assert no_answers["n_position_answers"] == 0
    assert no_answers["map_best_accuracy"] == 6 / 7
    unscored = [{**r, "score": None} for r in _rows()]
    m = category_metrics(unscored, None, answers_used=True, max_fpr=0.3)
    assert m["answer_map_agreement"] is None and m["map_best_accuracy"] is None
    assert m["position_accuracy"] == 1 / 2  # needs only answers and masks
    empty = category_metrics([], None, answers_used=True, max_fpr=0.3)
    assert all(empty[k] is None for k in ANSWER_METRICS) and empty["n_position_answers"] == 0


def test_one_class_only():
    normals = [_row(0, 0.1, NO), _row(0, 0.4, YES_TOP)]
    m = category_metrics(normals, None, answers_used=True, max_fpr=0.3)
    assert m["map_best_accuracy"] == 1.0
    assert m["answer_map_agreement"] is None  # no anomaly: no F1-optimal threshold
    assert m["position_accuracy"] is None
    anomalies = [_row(1, 0.3, YES_TOP, ["top"]), _row(1, 0.6, NO, ["center"])]
    m = category_metrics(anomalies, None, answers_used=True, max_fpr=0.3)
    assert m["map_best_accuracy"] == 1.0
    assert m["answer_map_agreement"] == 0.5  # threshold 0.3: the map says yes to both
    assert m["position_accuracy"] == 1.0 and m["n_position_answers"] == 1
    assert m["map_position_accuracy"] == 0.0  # a row without a map position counts as a miss


def test_mean_is_over_the_categories_where_defined():
    a = category_metrics(_rows(), None, answers_used=True, max_fpr=0.3)
    b = category_metrics([_row(0, 0.1, NO), _row(0, 0.4, YES_TOP)], None, answers_used=True, max_fpr=0.3)
    mean = mean_metrics({"a": a, "b": b})
    assert mean["answer_map_agreement"] == a["answer_map_agreement"]
    assert mean["position_accuracy"] == a["position_accuracy"]
    assert mean["map_best_accuracy"] == pytest.approx((6 / 7 + 1.0) / 2, abs=1e-15)
    assert mean["n_position_answers"] == 2


def test_the_worker_puts_the_gt_positions_of_an_anomalous_image_with_a_mask_in_its_row(tmp_path):
    from PIL import Image

    from evaluate.data import EvalItem
    from evaluate.worker import EvalWorker
    from train.model.batch import Prediction

    image, mask = tmp_path / "img.png", tmp_path / "mask.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    drawn = np.zeros((64, 64), np.uint8)
    drawn[4:16, 4:16] = 255  # top left
    drawn[40:60, 44:60] = 255  # bottom right
    Image.fromarray(drawn).save(mask)

    hot = np.zeros((32, 32), np.float32)
    hot[30, 2] = 0.9  # the map peaks bottom left

    class FakePredictor:
        def predict(self, images, categories, **_):
            assert all(image.shape == (32, 32, 3) for image in images)  # read at the model's size
            return [Prediction(c, hot, 0.9, YES_TOP) for c in categories]

    worker = EvalWorker.__new__(EvalWorker)  # no checkpoint: only predict's bookkeeping is tested
    worker.predictor, worker.size, worker.write_maps, worker.states = FakePredictor(), 32, False, {}
    worker.pixel = {"bins": 8, "lo": 0.0, "hi": 1.0, "threshold": 0.1}
    items = [
        EvalItem("b/test/hole/0.png", str(image), "b", 1, "hole", str(mask), True),
        EvalItem("b/test/hole/1.png", str(image), "b", 1, "hole", None, False),  # mask left out
        EvalItem("b/test/good/0.png", str(image), "b", 0, "good", None, True),
    ]
    rows = worker.predict(items, None, "q?", generate=True)
    assert [r["gt_positions"] for r in rows] == [["top left", "bottom right"], None, None]
    assert [r["map_position"] for r in rows] == ["bottom left", None, None]  # only beside gt_positions


def test_map_position_is_the_cell_of_the_maps_peak():
    from evaluate.data import map_position

    amap = np.zeros((60, 60), np.float32)
    amap[5, 55] = 1.0
    assert map_position(amap) == "top right"
    amap[30, 30] = 2.0
    assert map_position(amap) == "center"


def test_positions_follow_the_map_when_the_answer_names_its_hottest_cell():
    rows = [
        _row(1, 0.9, YES_TOP, ["center"], hottest="top"),  # wrong place, but the map's: follows
        _row(1, 0.8, YES_TWO, ["top left"], hottest="top left"),  # follows and right
        _row(1, 0.7, YES_TOP, ["top"], hottest="bottom"),  # right place, not the map's: does not
    ]
    m = category_metrics(rows, None, answers_used=True, max_fpr=0.3)
    assert m["position_follows_map"] == 2 / 3
    assert m["position_accuracy"] == 2 / 3
