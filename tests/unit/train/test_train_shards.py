"""Shard index: real synth output reads back; every kind of bad shard folder is a clear error."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from train.shards import DataError, decode_png, index_shards


def test_index_reads_every_sample_of_the_manifest(tiny_shards):
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    index = index_shards(tiny_shards)
    assert len(index) == manifest["samples"] == 48
    assert index.categories() == sorted(manifest["categories"])
    assert {s.label for s in index.samples} == {0, 1}
    refs = index.first_normal()
    assert set(refs) == set(index.categories()) and all(index.samples[i].label == 0 for i in refs.values())
    png, mask = index.read(len(index) - 1)
    assert decode_png(png, "RGB").shape == (64, 64, 3)
    m = decode_png(mask, "L")
    assert m.shape == (64, 64) and set(m.ravel().tolist()) <= {0, 255}
    sample = index.samples[5]
    assert sample.conversation[0]["from"] == "human" and sample.conversation[1]["from"] == "gpt"


@pytest.fixture
def copy(tiny_shards, tmp_path):
    target = tmp_path / "shards"
    shutil.copytree(tiny_shards, target)
    return target


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="shard folder not found"):
        index_shards(tmp_path / "nope")
    with pytest.raises(DataError, match=re.escape("no .tar shards")):
        index_shards(tmp_path)


def test_corrupt_shard_fails_the_manifest_check_and_the_parse(copy):
    shard = copy / "shard-000001.tar"
    shard.write_bytes(b"x" * shard.stat().st_size)
    with pytest.raises(DataError, match=re.escape("shard-000001.tar: sha256 differs")):
        index_shards(copy)
    with pytest.raises(DataError, match=re.escape("shard-000001.tar: not a readable tar")):
        index_shards(copy, verify=False)


def test_manifest_must_match_the_shards(copy):
    shutil.copy(copy / "shard-000000.tar", copy / "shard-000009.tar")
    with pytest.raises(DataError, match=re.escape("shards not in manifest.json: shard-000009.tar")):
        index_shards(copy)
    (copy / "shard-000009.tar").unlink()
    (copy / "shard-000002.tar").unlink()
    with pytest.raises(DataError, match=re.escape("shard-000002.tar: shard listed")):
        index_shards(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(DataError, match=re.escape("no manifest.json")):
        index_shards(copy)
