"""The prompt learner tells the LLM where the map is hot, cell by cell of the 3x3 position grid."""

from __future__ import annotations

import torch

from train.model.prompt_learner import PromptLearner

HIDDEN = 16
SIZE = 224


def hot_map(row: int, col: int) -> torch.Tensor:
    """A (1, 1, 224, 224) map, 0.1 everywhere but 0.9 on a 30-pixel square inside grid cell (row, col)."""
    amap = torch.full((1, 1, SIZE, SIZE), 0.1)
    third = SIZE // 3
    y, x = row * third + 20, col * third + 20
    amap[..., y : y + 30, x : x + 30] = 0.9
    return amap


def learner(cell_evidence: bool) -> PromptLearner:
    torch.manual_seed(0)
    channels = [4, 8, 8, 8, 8]
    return PromptLearner(HIDDEN, 9, channels, init_std=0.05, embed_rms=0.05, cell_evidence=cell_evidence)


def test_cell_stats_name_the_hot_cell_in_token_order():
    stats = learner(True).cell_stats(hot_map(0, 2))  # top right: token index 2
    assert stats.shape == (1, 9, 2)
    peaks = stats[0, :, 0]
    assert int(peaks.argmax()) == 2
    assert torch.allclose(peaks[[0, 1, 3, 4, 5, 6, 7, 8]], torch.tensor(0.1))
    assert float(stats[0, 2, 1]) > float(stats[0, 0, 1])  # the mean rises in the hot cell only


def test_a_moving_hot_spot_changes_the_token_of_its_own_cell_most():
    model = learner(True)
    cold = model(torch.full((1, 1, SIZE, SIZE), 0.1), None)
    for row, col in [(0, 0), (1, 1), (2, 2), (2, 0)]:
        change = (model(hot_map(row, col), None) - cold)[0, 9:].norm(dim=-1)  # the 9 map tokens
        assert int(change.argmax()) == row * 3 + col


def test_without_cell_evidence_the_reference_learner_is_kept():
    model = learner(False)
    assert model.cell_evidence is None
    assert "cell_evidence.weight" not in model.state_dict()


def test_cells_start_as_the_llms_own_position_words():
    """Built with an LLM, each cell embedding points like the LLM's embedding of its position word."""
    from train.model import build_model
    from train.model.build import position_word_embeddings
    from train.model.config import EncoderConfig, LLMConfig, ModelConfig

    cfg = ModelConfig(
        encoder=EncoderConfig(name="mobilenetv2", pretrained=False),
        llm=LLMConfig(name="tiny"),
        prompt_channels=[4, 8, 8, 8, 8],
    )
    model = build_model(cfg)
    table = model.llm.get_input_embeddings().weight.detach().float()
    words = position_word_embeddings(model.tokenizer, table)
    cells = model.prompt_learner.cell_embed.detach()
    cosine = torch.nn.functional.cosine_similarity(cells, words, dim=-1)
    assert torch.allclose(cosine, torch.ones(9), atol=1e-5)
    assert not torch.allclose(words[0], words[2])  # "top left" and "top right" are told apart
