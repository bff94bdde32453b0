"""The prompt text features on disk: computed once per sentences and encoder, then read back bit for
bit by any later process; an unreadable or unwritable cache only costs the encoding."""

from __future__ import annotations

import pytest
import torch

from train.model import text_features
from train.model.text_features import FEATURES_DIR, PromptTextFeatures


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "anomalygpt" / FEATURES_DIR


class CountingEncoder:
    """Unit vectors that depend on the sentences; counts the sentences it was asked to encode."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, sentences: list[str]) -> torch.Tensor:
        self.calls += 1
        seeds = torch.tensor([float(sum(map(ord, s))) for s in sentences]).unsqueeze(1)
        return torch.nn.functional.normalize(torch.sin(seeds * torch.arange(1, 9)), dim=-1)


def test_a_second_process_reads_the_features_instead_of_encoding(cache_home):
    encoder = CountingEncoder()
    first = PromptTextFeatures(encoder, dim=8, identity=lambda: "counting v1").for_category("bottle")
    assert encoder.calls == 1 and len(list(cache_home.glob("*.safetensors"))) == 1
    again = PromptTextFeatures(encoder, dim=8, identity=lambda: "counting v1")  # a new process's model
    assert torch.equal(again.for_category("bottle"), first) and encoder.calls == 1
    again.for_category("metal_nut")  # another category: other sentences, encoded once
    assert encoder.calls == 2
    PromptTextFeatures(encoder, dim=8, identity=lambda: "counting v2").for_category("bottle")
    assert encoder.calls == 3  # another encoder identity never reads v1's features
    PromptTextFeatures(encoder, dim=8).for_category("bottle")
    assert encoder.calls == 4  # no identity: nothing on disk is trusted


def test_an_unreadable_cache_is_encoded_again_and_an_unwritable_one_still_works(
    cache_home, tmp_path, monkeypatch
):
    encoder = CountingEncoder()
    want = PromptTextFeatures(encoder, dim=8, identity=lambda: "v1").for_category("bottle")
    (stored,) = cache_home.glob("*.safetensors")
    stored.write_bytes(b"garbage")
    assert torch.equal(PromptTextFeatures(encoder, dim=8, identity=lambda: "v1").for_category("bottle"), want)
    assert encoder.calls == 2
    from safetensors.torch import save_file

    save_file({"features": torch.zeros(2, 4)}, str(stored))  # another encoder's width
    assert torch.equal(PromptTextFeatures(encoder, dim=8, identity=lambda: "v1").for_category("bottle"), want)
    assert encoder.calls == 3

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert torch.equal(PromptTextFeatures(encoder, dim=8, identity=lambda: "v1").for_category("bottle"), want)


def test_minilm_features_from_disk_equal_the_computed_ones_without_loading_minilm(cache_home, monkeypatch):
    computed = PromptTextFeatures().for_category("bottle")  # MiniLM: the default encoder, cached
    assert len(list(cache_home.glob("*.safetensors"))) == 1

    def no_minilm():
        raise AssertionError("MiniLM was loaded although its features are cached")

    monkeypatch.setattr(text_features, "_minilm", no_minilm)
    assert torch.equal(PromptTextFeatures().for_category("bottle"), computed)
    assert computed.shape == (2, 384) and computed.dtype == torch.float32
