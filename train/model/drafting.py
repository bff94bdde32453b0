"""Drafts for greedy answer decoding: the phrasings the model was trained on, proposed ahead.

A CPU spends most of a decoding step reading the LLM's weights, so checking eight proposed tokens in
one call costs about what one token does. The answers follow a few fixed phrasings ("Yes, there is
an anomaly in the image, at the ... of the image."), so after each token the rest of the phrasing it
matches is proposed (prompt-lookup decoding over those phrasings), one call checks the proposal,
and the tokens kept are exactly those greedy decoding picks there: the model's own choice at every
position, the proposal only saving calls. A position word, or any answer off the phrasings, gets no
proposal and is decoded a token at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

DRAFT_TOKENS = 8
"""Most tokens proposed at once."""
LOOKUP = (3, 2, 1)
"""Lengths of the answer's last tokens looked up in the phrasings, longest first."""


class Drafter:
    """Proposals from token sequences of the known phrasings."""

    def __init__(self, phrasings: Sequence[Sequence[int]]) -> None:
        self.phrasings = [list(p) for p in phrasings if p]

    def propose(self, tokens: Sequence[int], limit: int = DRAFT_TOKENS) -> list[int]:
        """What follows the longest tail of ``tokens`` (3, 2 or 1 tokens) where it first occurs in a
        phrasing, at most ``limit`` tokens; [] when no tail occurs or nothing follows it."""
        if limit <= 0:
            return []
        for n in LOOKUP:
            if len(tokens) < n:
                continue
            tail = list(tokens[-n:])
            for phrasing in self.phrasings:
                for start in range(len(phrasing) - n):
                    if phrasing[start : start + n] == tail:
                        return phrasing[start + n : start + n + limit]
        return []


def accepted(proposal: Sequence[int], predicted: Sequence[int]) -> int:
    """How many leading proposed tokens the model itself predicts: ``predicted[j]`` is its greedy
    token after the proposal's first ``j`` tokens."""
    count = 0
    for want, got in zip(proposal, predicted, strict=False):
        if want != got:
            break
        count += 1
    return count
