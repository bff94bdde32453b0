"""The converted SmolLM2 lives in a cache folder named by the source GGUF's hash."""

from __future__ import annotations

import hashlib
import json

from train.model.llm import source_digest


def test_the_digest_is_the_files_sha256_and_is_remembered(tmp_path):
    source, cache = tmp_path / "model.gguf", tmp_path / "cache"
    source.write_bytes(b"weights v1" * 1000)
    digest = source_digest(source, cache)
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    memo_file = cache / "source-digests.json"
    memo = json.loads(memo_file.read_text())
    assert list(memo.values()) == [digest]
    # A second start reads the memo instead of the file: a planted value comes back.
    memo_file.write_text(json.dumps({key: "0" * 16 for key in memo}))
    assert source_digest(source, cache) == "0" * 16


def test_other_weights_get_another_folder(tmp_path):
    source, cache = tmp_path / "model.gguf", tmp_path / "cache"
    source.write_bytes(b"weights v1")
    first = source_digest(source, cache)
    source.write_bytes(b"weights v2 longer")
    assert source_digest(source, cache) != first


def test_an_unwritable_cache_still_gives_the_digest(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"weights")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    assert source_digest(source, blocker / "cache") == hashlib.sha256(b"weights").hexdigest()[:16]
