"""Answers decoded with proposals from known phrasings: the proposal lookup, and that decoding with
proposals gives exactly the tokens greedy decoding gives, in fewer LLM calls."""

from __future__ import annotations

import pytest
import torch

from train.model.build import build_model
from train.model.drafting import Drafter, accepted


def test_the_longest_tail_found_proposes_what_follows_it():
    drafter = Drafter([[1, 2, 3, 4, 5, 6], [7, 2, 3, 9, 9]])
    assert drafter.propose([0, 1, 2, 3]) == [4, 5, 6]  # 3-token tail (1, 2, 3)
    assert drafter.propose([8, 7, 2, 3]) == [9, 9]  # (7, 2, 3) in the second phrasing
    assert drafter.propose([8, 8, 2, 3]) == [4, 5, 6]  # no 3-token match: (2, 3), first occurrence
    assert drafter.propose([5], limit=2) == [6]  # only what follows, at most the limit
    assert drafter.propose([1, 2], limit=1) == [3]
    assert drafter.propose([6]) == []  # the end of a phrasing: nothing follows
    assert drafter.propose([42]) == [] and drafter.propose([]) == []
    assert drafter.propose([1], limit=0) == []


def test_accepted_counts_the_leading_agreeing_tokens():
    assert accepted([4, 5, 6], [4, 5, 6, 7]) == 3
    assert accepted([4, 5, 6], [4, 9, 6, 7]) == 1  # after a disagreement nothing more counts
    assert accepted([4], [3, 4]) == 0
    assert accepted([], [1]) == 0


@pytest.fixture
def model(tiny_cfg):
    torch.manual_seed(0)
    return build_model(tiny_cfg).eval()


def _calls(model) -> list[int]:
    """A counter of the LLM's forward calls (a hook on it)."""
    count = [0]
    model.llm.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def test_decoding_with_proposals_keeps_the_greedy_tokens_in_fewer_calls(model):
    prefix = model._prefix(model.encode(torch.rand(3, 3, 64, 64)).global_embed, None)
    model.answer_phrasings = ()
    calls = _calls(model)
    plain = model.generate(prefix, "Is there any anomaly in the image?")
    plain_calls = calls[0]
    assert any(len(text) > 8 for text in plain), plain  # something long enough to propose
    # phrasings that are these very answers: proposals agree, and are checked several at a time
    model.answer_phrasings = tuple(plain)
    calls[0] = 0
    assert model.generate(prefix, "Is there any anomaly in the image?") == plain
    assert calls[0] < plain_calls
    # phrasings that agree only in part: what disagrees is never kept
    model.answer_phrasings = tuple(text[: len(text) // 2] + " zzz qqq" for text in plain)
    assert model.generate(prefix, "Is there any anomaly in the image?") == plain
