"""Fingerprints change exactly when data or config change; stage records drive skip/resume/fresh."""

from __future__ import annotations

import os
import shutil

from pipeline.core.files import json_sha256
from pipeline.fingerprint import (
    dataset_fingerprint,
    read_stage,
    stage_key,
    stage_status,
    write_stage,
)
from synth.fingerprint import HashCache


def test_normals_fingerprint_tracks_content_not_mtime(sample_data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(sample_data_root, root)
    cache = HashCache(tmp_path / "hashes.json")
    before = dataset_fingerprint(root, "mvtec", "train", cache=cache)
    assert cache.misses > 0 and cache.hits == 0
    cache.save()

    again = HashCache(tmp_path / "hashes.json")
    assert dataset_fingerprint(root, "mvtec", "train", cache=again) == before
    assert again.misses == 0 and again.hits == cache.misses  # all from the cache

    category = sorted(p.name for p in root.iterdir() if p.is_dir())[0]
    image = sorted((root / category / "train" / "good").iterdir())[0]
    os.utime(image, ns=(0, 0))  # touched but same bytes
    assert dataset_fingerprint(root, "mvtec", "train", cache=again) == before

    # Test images do not change the training fingerprint; they change the evaluation one.
    test_before = dataset_fingerprint(root, "mvtec", "test")
    test_image = next((root / category / "test").rglob("*.png"))
    test_image.write_bytes(image.read_bytes())
    assert dataset_fingerprint(root, "mvtec", "train") == before
    assert dataset_fingerprint(root, "mvtec", "test") != test_before

    image.write_bytes(image.read_bytes() + b"\0")  # new content
    assert dataset_fingerprint(root, "mvtec", "train", cache=again) != before
    image.unlink()  # a removed normal image changes it too
    changed = dataset_fingerprint(root, "mvtec", "train", cache=again)
    assert changed != before
    assert dataset_fingerprint(root, "mvtec", "train", categories=[category]) != changed


def test_json_sha256_is_order_independent():
    assert json_sha256({"a": 1, "b": [1, 2]}) == json_sha256({"b": [1, 2], "a": 1})
    assert json_sha256({"a": 1}) != json_sha256({"a": 2})
    assert stage_key(data="x", config={"lr": 1}) != stage_key(data="x", config={"lr": 2})


def test_stage_record_skip_resume_fresh(tmp_path):
    key = stage_key(data="abc", config={"steps": 3})
    stage = tmp_path / "train"
    assert stage_status(stage, key) == "fresh"
    write_stage(stage, key, "running")
    assert stage_status(stage, key) == "resume"
    write_stage(stage, key, "complete", {"steps": 3})
    assert stage_status(stage, key) == "complete"
    assert read_stage(stage)["summary"] == {"steps": 3}
    assert stage_status(stage, stage_key(data="abd", config={"steps": 3})) == "fresh"
    (stage / "stage.json").write_text('{"key": ')  # torn write
    assert stage_status(stage, key) == "fresh"
