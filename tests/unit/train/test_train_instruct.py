"""PandaGPT-format instruction data: the generator's output reads back; bad items name themselves."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from train.instruct import JSON_NAME, describe, read_instruction_set
from train.shard_reader import DataError


def test_generator_writes_pandagpt_format_that_reads_back(instruct_set, sample_data_root):
    items = json.loads((instruct_set / JSON_NAME).read_text())
    assert len(items) == len(list(sample_data_root.glob("*/train/good/*.png")))
    for item in items:
        assert set(item) == {"image_name", "conversation"}
        turns = item["conversation"]
        assert len(turns) in (4, 6)
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert (instruct_set / "images" / item["image_name"]).is_file()
    first = read_instruction_set(instruct_set)
    every = read_instruction_set(instruct_set / JSON_NAME, turns="all")
    assert len(first) == len(every) == len(items)
    assert all(len(s.conversation) == 2 for s in first)  # the reference keeps the first pair
    assert [len(s.conversation) for s in every] == [len(i["conversation"]) for i in items]
    assert first[0].conversation == every[0].conversation[:2]


def test_answers_are_measured_from_the_image():
    dark_red = np.zeros((32, 32, 3), np.uint8)
    dark_red[..., 0] = 150
    facts = describe(dark_red, "metal_nut")
    assert facts["name"] == "metal nut" and facts["article"] == "a"
    assert facts["colour"] == "red" and facts["brightness"] == "dark" and facts["detail"] == "smooth"
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[:, ::2] = 255
    assert describe(stripes, "object")["detail"] == "detailed"


@pytest.fixture
def writable_set(instruct_set, tmp_path):
    target = tmp_path / "set"
    shutil.copytree(instruct_set, target)
    return target


def _rewrite(folder, change):
    path = folder / JSON_NAME
    items = json.loads(path.read_text())
    change(items)
    path.write_text(json.dumps(items))


def test_name_without_suffix_gets_jpg(writable_set):
    _rewrite(writable_set, lambda items: items[0].update(image_name=items[0]["image_name"][: -len(".jpg")]))
    assert read_instruction_set(writable_set)[0].image.endswith(".jpg")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda items: items[3].update(image_name="missing.jpg"), "item 3: image not found"),
        (lambda items: items[2]["conversation"].reverse(), "item 2: turn 0 must be from 'human'"),
        (lambda items: items[1].update(conversation=[]), "item 1: 'conversation' must be a list"),
        (lambda items: items[0].pop("image_name"), "item 0: needs a string 'image_name'"),
    ],
)
def test_bad_items_are_errors_naming_the_item(writable_set, change, message):
    _rewrite(writable_set, change)
    with pytest.raises(DataError, match=message):
        read_instruction_set(writable_set)


def test_unanswered_last_turn_is_reported_not_silently_dropped(writable_set, caplog):
    _rewrite(writable_set, lambda items: items[0]["conversation"].append({"from": "human", "value": "And?"}))
    with caplog.at_level(logging.WARNING):
        samples = read_instruction_set(writable_set, turns="all")
    assert samples[0].conversation[-1]["from"] == "gpt"
    assert "ignored 1 trailing human turn" in caplog.text


def test_missing_or_empty_set_is_an_error(tmp_path):
    with pytest.raises(DataError, match="instruction data not found"):
        read_instruction_set(tmp_path)
    (tmp_path / JSON_NAME).write_text("[]")
    with pytest.raises(DataError, match="non-empty JSON list"):
        read_instruction_set(tmp_path)
