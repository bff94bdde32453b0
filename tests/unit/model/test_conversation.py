"""Conversation template, label masking, padding/truncation and the answer parser."""

from __future__ import annotations

import pytest

from train.model.conversation import IGNORE, pad_batch, parse_answer, render, split_turns, tokenize_turns

TURNS = [
    {"from": "human", "value": "This is a photo of grass. Is there any anomaly in the image?"},
    {"from": "gpt", "value": "Yes, there is an anomaly in the image, at the center of the image."},
    {"from": "human", "value": "Where exactly?"},
    {"from": "gpt", "value": "At the center."},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import LlamaTokenizer

    from train.model.llm import llama_tokenizer_dir

    return LlamaTokenizer.from_pretrained(llama_tokenizer_dir(tmp_path_factory.mktemp("tok")))


def test_render_matches_reference_template_and_round_trips():
    text = render(TURNS)
    assert text == (
        "This is a photo of grass. Is there any anomaly in the image?\n### Assistant:"
        "Yes, there is an anomaly in the image, at the center of the image.\n###"
        "Human: Where exactly?\n### Assistant:At the center.\n###"
    )
    assert split_turns(text) == TURNS


def test_bad_turns_are_rejected():
    with pytest.raises(ValueError, match="start with a human"):
        render([{"from": "gpt", "value": "hi"}])
    with pytest.raises(ValueError, match="turn 1"):
        render([{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}])


def test_labels_cover_only_assistant_text(tokenizer):
    ids, labels = tokenize_turns(tokenizer, TURNS, max_len=1024)
    assert len(ids) == len(labels)
    kept = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE]
    assert all(lab in (IGNORE, t) for t, lab in zip(ids, labels, strict=True))
    decoded = tokenizer.decode(kept)
    assert "Yes, there is an anomaly in the image, at the center of the image." in decoded
    assert "At the center." in decoded
    assert "Is there any anomaly" not in decoded and "Where exactly" not in decoded
    assert decoded.count("###") == 2  # each assistant turn's trailing separator is a target
    # the human text is the context, fully masked
    masked = [t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE]
    assert "Where exactly?" in tokenizer.decode(masked)


def test_truncation_and_padding(tokenizer):
    long_ids, long_labels = tokenize_turns(tokenizer, TURNS, max_len=10)
    assert len(long_ids) == len(long_labels) == 10
    short = tokenize_turns(tokenizer, TURNS[:2], max_len=1024)
    ids, labels, mask = pad_batch([short, (long_ids, long_labels)], pad_id=tokenizer.eos_token_id)
    width = len(short[0])
    assert all(len(row) == width for row in ids + labels + mask)
    assert mask[1] == [1] * 10 + [0] * (width - 10)
    assert labels[1][10:] == [IGNORE] * (width - 10)
    assert ids[1][10:] == [tokenizer.eos_token_id] * (width - 10)


@pytest.mark.parametrize(
    ("text", "verdict", "positions"),
    [
        ("No, there is no anomaly in the image.", False, []),
        ("Yes, there is an anomaly in the image, at the top left of the image.", True, ["top left"]),
        (
            "Yes, there are 2 anomalies in the image, they are at the bottom and center of the image.",
            True,
            ["bottom", "center"],
        ),
        ("I cannot tell.", None, []),
        (None, None, []),
    ],
)
def test_parse_answer(text, verdict, positions):
    parsed = parse_answer(text)
    assert parsed.is_anomalous is verdict
    assert parsed.positions == positions
