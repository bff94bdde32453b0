"""Shard index: real synth output reads back; every kind of bad shard folder is a clear error."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from train.shard_reader import DataError, decode_png, index_shards


def test_index_reads_every_sample_of_the_manifest(tiny_shards):
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    index = index_shards(tiny_shards)
    assert len(index) == manifest["samples"] == 48
    assert index.categories() == sorted(manifest["categories"])
    assert {s.label for s in index.samples} == {0, 1}
    refs = index.normals_by_category()
    assert set(refs) == set(index.categories())
    assert all(index.samples[i].label == 0 for normals in refs.values() for i in normals)
    png, mask = index.read(len(index) - 1)
    assert decode_png(png, "RGB").shape == (64, 64, 3)
    m = decode_png(mask, "L")
    assert m.shape == (64, 64) and set(m.ravel().tolist()) <= {0, 255}
    sample = index.samples[5]
    assert sample.conversation[0]["from"] == "human" and sample.conversation[1]["from"] == "gpt"


def test_pairs_join_each_synthetic_sample_to_its_normal_twin(tiny_shards):
    index = index_shards(tiny_shards)
    pairs = index.pairs()
    assert len(pairs) == 24 and [j for _, j in pairs] == sorted(j for _, j in pairs)
    for n, j in pairs:
        normal, twin = index.samples[n], index.samples[j]
        assert normal.is_normal and not twin.is_normal and normal.label == 0
        assert twin.pair == normal.key and normal.pair == normal.key
        assert (normal.source, normal.shard, normal.category) == (twin.source, twin.shard, twin.category)
    assert {n for n, _ in pairs} | {j for _, j in pairs} == set(range(len(index)))
    assert index.samples[0].source.startswith(f"{index.samples[0].category}/train/good/")

    by_category = index.normals_by_category()
    assert sorted(by_category) == index.categories()
    for category, normals in by_category.items():
        assert len(normals) == 6 and normals == sorted(normals)
        assert all(index.samples[i].is_normal and index.samples[i].category == category for i in normals)


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


def _rewrite_first_json(shard, change):
    """Rewrite ``shard`` with ``change`` applied to the first sample's JSON (same member order)."""
    members = []
    with tarfile.open(shard) as tar:
        for info in tar:
            members.append((info.name, tar.extractfile(info).read()))
    name, raw = next((n, b) for n, b in members if n.endswith(".json"))
    members = [(n, json.dumps(change(json.loads(raw))).encode() if n == name else b) for n, b in members]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n, data in members:
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())


def test_samples_without_pairing_are_an_error_with_the_fix(copy):
    shard = copy / "shard-000000.tar"
    _rewrite_first_json(shard, lambda meta: {k: v for k, v in meta.items() if k != "pair"})
    with pytest.raises(DataError, match=r"shard-000000\.tar: sample '00000000': JSON lacks 'pair'.*--force"):
        index_shards(copy, verify=False)


def test_a_dangling_pair_is_an_error(copy):
    _rewrite_first_json(copy / "shard-000000.tar", lambda meta: {**meta, "pair": "99999999"})
    with pytest.raises(DataError, match=r"names pair '99999999', which is not a normal sample"):
        index_shards(copy, verify=False)


def test_old_shard_format_is_refused_with_the_fix(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "anomalygpt-synth-shards/1"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"older synth without normal/synthetic pairing.*--force"):
        index_shards(copy)


def test_a_relative_shard_folder_is_indexed_with_absolute_paths(tiny_shards, monkeypatch):
    # Ray Train workers run in another working directory: a relative path would not open there.
    monkeypatch.chdir(tiny_shards.parent)
    index = index_shards(tiny_shards.name)
    assert index.root.is_absolute() and index.root == tiny_shards.resolve()
    assert all(Path(s.shard).is_absolute() for s in index.samples)
    monkeypatch.chdir("/")
    assert decode_png(index.read(0)[0], "RGB").shape == (64, 64, 3)
