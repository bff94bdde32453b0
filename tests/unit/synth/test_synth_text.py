"""Position words from region masks, answer phrasing, questions."""

from __future__ import annotations

import numpy as np
import pytest

from synth import text

GRID = [
    ["top left", "top", "top right"],
    ["left", "center", "right"],
    ["bottom left", "bottom", "bottom right"],
]


@pytest.mark.parametrize("row", range(3))
@pytest.mark.parametrize("col", range(3))
def test_region_in_each_cell_gets_its_word(row, col):
    mask = np.zeros((90, 90), bool)
    mask[row * 30 + 10 : row * 30 + 20, col * 30 + 5 : col * 30 + 25] = True
    assert text.region_positions([mask]) == [GRID[row][col]]


def test_each_region_uses_its_own_centroid_not_the_union_box():
    a = np.zeros((90, 90), bool)
    b = np.zeros((90, 90), bool)
    a[2:10, 2:10] = True  # top left
    b[80:88, 80:88] = True  # bottom right; the union box centre would say "center"
    assert text.region_positions([a, b]) == ["top left", "bottom right"]
    assert text.region_positions([np.zeros((90, 90), bool)]) == []


def test_centroid_cuts_at_thirds():
    assert text.position_word(29.9, 45, 90, 90) == "top"
    assert text.position_word(30.0, 45, 90, 90) == "top"  # on the cut: the cell before
    assert text.position_word(30.1, 45, 90, 90) == "center"
    assert text.position_word(45, 60.5, 90, 90) == "right"


def test_answers_follow_the_reference_phrasing():
    assert text.answer([]) == "No, there is no anomaly in the image."
    assert text.answer(["top"]) == "Yes, there is an anomaly in the image, at the top of the image."
    assert text.answer(["top left", "bottom"]) == (
        "Yes, there are 2 anomalies in the image, they are at the top left and bottom of the image."
    )
    assert (
        text.answer(["left", "left"])
        == "Yes, there are 2 anomalies in the image, they are at the left of the image."
    )


def test_questions_known_and_generic():
    assert text.question_for("bottle") == (
        "This is a photo of a bottle for anomaly detection, which should be round, without any damage, flaw, "
        "defect, scratch, hole or broken part. Is there any anomaly in the image?"
    )
    generic = text.question_for("gear_box")
    assert generic.startswith("This is a photo of gear box for anomaly detection")
    assert generic.endswith(" Is there any anomaly in the image?")
    conv = text.conversation("wood", ["top"])
    assert [t["from"] for t in conv] == ["human", "gpt"] and conv[1]["value"] == text.answer(["top"])
    assert text.question_for("bottle", described=False) == "Is there any anomaly in the image?"
    assert text.question_for("bottle").endswith(" " + text.question_for("bottle", described=False))
    assert text.conversation("wood", [], described=False)[0]["value"] == "Is there any anomaly in the image?"


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_bare_question_share_is_a_share(share):
    from synth.config import SynthConfig

    with pytest.raises(ValueError, match="bare_question_share"):
        SynthConfig(bare_question_share=share)
