"""The map summary tells the LLM, in its own words, the map's verdict and its hottest cell."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import cosine_similarity

from train.model.config import WHERE_WORDS
from train.model.map_summary import MapSummary, name_slots
from train.model.prompt_learner import rms_scale

HIDDEN = 32
SIZE = 96


def summary() -> MapSummary:
    torch.manual_seed(0)
    return MapSummary(torch.randn(2, HIDDEN), torch.randn(9, WHERE_WORDS, HIDDEN), embed_rms=0.5)


def flat_map(value: float, hot_cell: int | None = None, hot: float = 0.9) -> torch.Tensor:
    """(1, 1, 96, 96) at ``value``, with a 10-pixel spot at ``hot`` inside 3x3 cell ``hot_cell``."""
    amap = torch.full((1, 1, SIZE, SIZE), value)
    if hot_cell is not None:
        row, col = divmod(hot_cell, 3)
        amap[..., row * 32 + 10 : row * 32 + 20, col * 32 + 10 : col * 32 + 20] = hot
    return amap


def test_the_verdict_turns_from_no_to_yes_as_the_peak_crosses_the_boundary():
    model = summary()
    no, yes = model.verdict_words.detach()
    leaning = []
    for peak in (0.1, 0.3, 0.45, 0.55, 0.7, 0.9):
        verdict = model(flat_map(0.05, 4, hot=peak))[0, 0].detach()
        leaning.append(float(cosine_similarity(verdict, yes, dim=0) - cosine_similarity(verdict, no, dim=0)))
    assert leaning == sorted(leaning)
    assert leaning[0] < 0 < leaning[-1]
    assert leaning[2] < 0 < leaning[3]  # 0.45 still reads "no", 0.55 "yes"


@pytest.mark.parametrize("cell", [0, 2, 4, 6, 8])
def test_the_where_tokens_are_the_hot_cells_words(cell):
    model = summary()
    where = model(flat_map(0.2, cell))[0, 1:].detach()
    for slot in range(WHERE_WORDS):
        words = model.cell_words.detach()[:, slot]
        similarity = cosine_similarity(where[slot].unsqueeze(0), words, dim=-1)
        assert int(similarity.argmax()) == cell
        assert float(similarity[cell]) > 0.99


def test_at_inference_the_where_tokens_name_the_hottest_cell_even_when_another_is_close():
    model = summary()
    amap = flat_map(0.2, 4, hot=0.80)
    amap[..., 10:20, 74:84] = 0.79  # cell 2, nearly as hot
    blended = model(amap)[0, 1:].detach()  # training: a soft arg-max, part of cell 2's words
    model.eval()
    named = model(amap)[0, 1:].detach()
    hottest = rms_scale(model.cell_words.detach()[4], model.embed_rms)
    assert torch.allclose(named, hottest, atol=1e-5)
    assert not torch.allclose(blended, hottest, atol=1e-2)


def test_a_position_name_is_split_into_one_slot_per_word():
    names = ["top left", "top", "center", "bottom right"]
    assert name_slots(names) == [["top", "left"], ["top", "top"], ["center", "center"], ["bottom", "right"]]
    with pytest.raises(ValueError, match="1 to 2 words"):
        name_slots(["far top left"])


def test_tokens_are_on_the_word_scale_and_differentiable_in_the_map():
    model = summary()
    amap = flat_map(0.3, 5, hot=0.6).requires_grad_(True)
    tokens = model(amap)
    assert tokens.shape == (1, 1 + WHERE_WORDS, HIDDEN)
    rms = tokens.pow(2).mean(dim=-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.5), atol=1e-4)
    tokens[0, 0].sum().backward()
    assert float(amap.grad.abs().sum()) > 0


def test_bad_word_tables_are_refused():
    with pytest.raises(ValueError, match="2 \\(normal, anomalous\\)"):
        MapSummary(torch.randn(3, HIDDEN), torch.randn(9, WHERE_WORDS, HIDDEN), 1.0)
    with pytest.raises(ValueError, match="square grid"):
        MapSummary(torch.randn(2, HIDDEN), torch.randn(8, WHERE_WORDS, HIDDEN), 1.0)
    with pytest.raises(ValueError, match="square grid"):
        MapSummary(torch.randn(2, HIDDEN), torch.randn(9, HIDDEN), 1.0)


def _tiny_config(**overrides):
    from train.model.config import EncoderConfig, LLMConfig, ModelConfig

    encoder = EncoderConfig(name="mobilenetv2", pretrained=False)
    tiny = LLMConfig(name="tiny")
    return ModelConfig(encoder=encoder, llm=tiny, prompt_channels=[4, 8, 8, 8, 8], **overrides)


def test_the_built_model_appends_the_summary_in_the_llms_own_words():
    from train.model import build_model
    from train.model.build import word_embeddings
    from train.model.conversation import tables

    model = build_model(_tiny_config())
    table = model.llm.get_input_embeddings().weight.detach().float()
    learner = model.prompt_learner
    top_left = word_embeddings(model.tokenizer, table, ["top", "left"])  # the first cell's name
    assert torch.equal(learner.summary.cell_words.detach()[0], top_left)
    centre = word_embeddings(model.tokenizer, table, ["center"])[0]
    assert torch.equal(learner.summary.cell_words.detach()[4], torch.stack([centre, centre]))
    verdicts = word_embeddings(model.tokenizer, table, tables()["verdict_words"])
    assert torch.equal(learner.summary.verdict_words.detach(), verdicts)
    tokens = learner(flat_map(0.2, 0).expand(2, -1, -1, -1), None)
    assert tokens.shape[1] == 2 * 9 + model.cfg.summary_tokens == 21


def test_without_the_summary_the_prompt_is_the_map_tokens_only():
    from train.model import build_model

    model = build_model(_tiny_config(prompt_map_summary=False))
    assert model.cfg.summary_tokens == 0
    assert model.prompt_learner.summary is None
    assert not any("summary" in name for name in model.state_dict())
