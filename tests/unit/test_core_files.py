"""pipeline.core.files: the one content hash, canonical-JSON hash and atomic write every layer uses.

Stored fingerprints (synth plan ids, stage keys, train resume fingerprints) must keep their bytes,
so the canonical JSON is pinned here against each former implementation.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pipeline.core.config import to_dict
from pipeline.core.files import atomic_write, file_sha256, json_sha256, write_json_atomic
from synth.config import SynthConfig


def test_json_sha256_has_the_bytes_of_the_former_hashes():
    plain = {"seed": 0, "config": {"size": 64, "categories": ["b", "a"]}, "format": "x/2", "f": 0.5}
    former_synth = hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()
    former_stage = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()
    assert json_sha256(plain) == former_synth == former_stage
    assert json_sha256({"b": [1, 2], "a": "x"}) == (
        "5125d018f84d57c49a8d3c2cfa6063d23cc3f4cd7ff13f4fdedfa2c1d3162f30"  # of '{"a": "x", "b": [1, 2]}'
    )
    # dataclasses and paths hash as their plain form, as the orchestrator's stage keys always did
    rich = {"synth": SynthConfig(), "data": Path("/data/mvtec")}
    plain_rich = {"synth": to_dict(SynthConfig()), "data": "/data/mvtec"}
    assert json_sha256(rich) == hashlib.sha256(json.dumps(plain_rich, sort_keys=True).encode()).hexdigest()


def test_file_sha256_reads_a_large_file_whole(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # more than two read blocks
    (tmp_path / "big").write_bytes(data)
    assert file_sha256(tmp_path / "big") == hashlib.sha256(data).hexdigest()


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    atomic_write(target, b"old")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["run.json"]

    def failing_replace(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr("pipeline.core.files.os.replace", failing_replace)
    with pytest.raises(OSError) as caught:
        atomic_write(str(target), b"new")  # a str path works as well
    assert caught.value.filename == str(target)  # named, so the CLI says which output failed
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["run.json"]  # no temp file left


def test_write_json_atomic_writes_sorted_indented_json(tmp_path):
    write_json_atomic(tmp_path / "stage.json", {"b": 1, "a": {"path": Path("/x")}})
    assert (tmp_path / "stage.json").read_text() == '{\n  "a": {\n    "path": "/x"\n  },\n  "b": 1\n}\n'
