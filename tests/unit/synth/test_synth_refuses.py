"""The synth stage refuses wrong input instead of succeeding with nothing, and repairs damaged shards.

Tiny data (32 px, 3 images per category) and the real job on the session's local Ray.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.core.errors import InputError
from pipeline.core.files import file_sha256
from synth.config import SynthConfig
from synth.datasets import DatasetError
from synth.job import run_synth
from synth.shard_format import verify_shards, write_tar

SIZE = 32
CFG = {"size": SIZE, "per_image": 1, "samples_per_shard": 4}  # 2 images per shard


def _png(path: Path, seed: int) -> Path:
    """A noisy RGB image (noise so a truncated copy keeps its header but loses pixel data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    return path


def _truncated(path: Path, seed: int) -> Path:
    """A PNG whose header reads but whose pixels cannot be decoded."""
    good = _png(path, seed).read_bytes()
    path.write_bytes(good[: len(good) // 2])
    return path


def _mvtec(root: Path, categories: tuple[str, ...] = ("alpha", "beta"), n: int = 3) -> Path:
    for c, category in enumerate(categories):
        for i in range(n):
            _png(root / category / "train" / "good" / f"{i:03d}.png", 10 * c + i)
    return root


def _synth(data: Path, out: Path, verify: bool = False) -> dict:
    return run_synth(SynthConfig(**CFG), data, out, seed=0, progress=False, verify=verify)


def _stamp(path: Path) -> tuple[int, int]:
    return path.stat().st_ino, path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(data, out, result) of one finished run over data with one unreadable and one undecodable file."""
    data = _mvtec(tmp_path_factory.mktemp("data"))
    (data / "alpha" / "train" / "good" / "garbage.png").write_bytes(b"not an image at all")
    _truncated(data / "beta" / "train" / "good" / "truncated.png", 99)
    out = tmp_path_factory.mktemp("finished") / "out"
    return data, out, _synth(data, out)


def _copy(finished: tuple[Path, Path, dict], tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(finished[1], copy)
    return copy


# --- wrong input: refused before anything is written ---


def test_folder_layout_given_as_mvtec_names_the_layouts_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "photos"
    for i in range(2):
        _png(data / "widget" / f"{i}.png", i)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as caught:
        _synth(data, out)
    message = str(caught.value)
    assert str(data) in message
    assert "--format mvtec reads <root>/<category>/train/good/*.png" in message
    assert "looks like the folder layout (<root>/<category>/*.png): pass --format folder" in message
    assert isinstance(caught.value, InputError) and caught.value.exit_code == 2
    assert not out.exists()

    code = main(["synth", "--data", str(data), "--out", str(out), "--size", str(SIZE), "--no-progress"])
    assert code == 2
    assert "error: " in capsys.readouterr().err and not out.exists()


def test_empty_root_is_refused_naming_every_layout(tmp_path):
    data, out = tmp_path / "empty", tmp_path / "out"
    data.mkdir()
    with pytest.raises(DatasetError, match=r"no train images in the mvtec layout") as caught:
        _synth(data, out)
    message = str(caught.value)
    assert str(data) in message and "train/good" in message
    assert "visa: <root>/split_csv/1cls.csv" in message and "folder: <root>/<category>/*.png" in message
    assert not out.exists()


def test_mvtec_data_given_as_folder_says_pass_format_mvtec(tmp_path):
    data = _mvtec(tmp_path / "data")
    with pytest.raises(DatasetError, match=r"looks like the mvtec layout .*: pass --format mvtec"):
        run_synth(SynthConfig(format="folder", size=SIZE), data, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_category_with_only_unreadable_headers_gives_the_count(tmp_path):
    data = _mvtec(tmp_path / "data", ("alpha",))
    for i in range(2):
        (data / "broken" / "train" / "good" / f"{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (data / "broken" / "train" / "good" / f"{i}.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"category 'broken' has no readable train images \(2 unreadable"):
        _synth(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_category_with_only_undecodable_images_is_an_error(ray_session, tmp_path):
    data = _mvtec(tmp_path / "data", ("alpha",))
    for i in range(2):
        _truncated(data / "broken" / "train" / "good" / f"{i}.png", 50 + i)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as caught:
        _synth(data, out)
    message = str(caught.value)
    assert "category 'broken' has no decodable train images: all 2 files are unreadable" in message
    assert "broken/train/good/0.png: undecodable image" in message
    assert not (out / "manifest.json").exists()


# --- good input still works ---


def test_a_few_bad_files_among_good_ones_are_skipped_and_listed(finished):
    _, out, result = finished
    assert result["status"] == "written"
    manifest = verify_shards(out)
    assert manifest["categories"]["alpha"]["normal"] == 3 and manifest["categories"]["beta"]["normal"] == 3
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["alpha/train/good/garbage.png"].startswith("unreadable image")
    assert reasons["beta/train/good/truncated.png"].startswith("undecodable image")
    assert all({"bytes", "sha256"} <= set(entry) for entry in manifest["shards"])


def test_intact_output_is_up_to_date_and_untouched(finished, tmp_path):
    data, _, _ = finished
    out = _copy(finished, tmp_path)
    before = {p.name: _stamp(p) for p in out.iterdir()}
    assert _synth(data, out, verify=True)["status"] == "up_to_date"
    assert {p.name: _stamp(p) for p in out.iterdir()} == before


# --- damaged shards are found and rewritten ---


def test_truncated_shard_is_detected_and_rewritten_on_rerun(finished, tmp_path, caplog):
    data, _, _ = finished
    out = _copy(finished, tmp_path)
    shard, other = out / "shard-000001.tar", out / "shard-000000.tar"
    original, other_stamp = file_sha256(shard), _stamp(other)
    shard.write_bytes(shard.read_bytes()[:1000])
    manifest_before = (out / "manifest.json").read_text()

    with caplog.at_level(logging.WARNING, logger="synth.job"):
        result = _synth(data, out)
    assert result["status"] == "repaired" and result["run"]["rewritten"] == [1]
    assert re.search(r"rewriting .*shard-000001\.tar: size 1000 != manifest \d+", caplog.text)
    assert file_sha256(shard) == original
    assert _stamp(other) == other_stamp  # intact shards are not rewritten
    assert (out / "manifest.json").read_text() == manifest_before
    assert not (out / "_parts").exists() and not list(out.glob(".*.tmp"))
    verify_shards(out)


def test_verify_flag_catches_a_same_size_corrupted_shard(finished, tmp_path, caplog):
    data, _, _ = finished
    out = _copy(finished, tmp_path)
    shard = out / "shard-000002.tar"
    original = file_sha256(shard)
    damaged = bytearray(shard.read_bytes())
    damaged[700] ^= 0xFF
    shard.write_bytes(bytes(damaged))

    assert _synth(data, out)["status"] == "up_to_date"  # sizes only: same size passes
    argv = ["synth", "--data", str(data), "--out", str(out), "--no-progress", "--verify",
            *(f"--{k.replace('_', '-')}={v}" for k, v in CFG.items())]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="synth.job"):
        assert main(argv) == 0
    assert "rewriting" in caplog.text and "shard-000002.tar: sha256 differs" in caplog.text
    assert file_sha256(shard) == original
    verify_shards(out)


def test_manifest_without_sizes_checks_existence_only(finished, tmp_path, caplog):
    data, _, _ = finished
    out = _copy(finished, tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        del entry["bytes"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "shard-000000.tar").write_bytes(b"short")  # cannot be seen without a recorded size
    (out / "shard-000003.tar").unlink()

    with caplog.at_level(logging.WARNING, logger="synth.job"):
        result = _synth(data, out)
    assert result["status"] == "repaired" and result["run"]["rewritten"] == [3]
    assert "records no size/sha256 for 4 shards" in caplog.text and "exist only" in caplog.text
    assert (out / "shard-000000.tar").read_bytes() == b"short"
    assert file_sha256(out / "shard-000003.tar") == manifest["shards"][3]["sha256"]


# --- nothing left behind on failure ---


@pytest.mark.parametrize(
    ("error", "expected"),
    [(OSError(errno.ENOSPC, "No space left on device"), OSError), (RuntimeError("boom"), RuntimeError)],
)
def test_failed_shard_write_removes_its_temp_file(tmp_path, monkeypatch, error, expected):
    written = []

    def failing_fsync(fd: int) -> None:  # the data is in the temp file by now: fail mid-write
        written.extend(p.name for p in tmp_path.iterdir())
        raise error

    monkeypatch.setattr("pipeline.core.files.os.fsync", failing_fsync)
    with pytest.raises(expected) as caught:
        write_tar(tmp_path / "shard-000000.tar", [("00000000.json", b"{}")])
    assert written and written[0].startswith(".shard-000000.tar.") and written[0].endswith(".tmp")
    assert list(tmp_path.iterdir()) == []
    if expected is OSError:  # same errno, now naming the shard: the CLI prints "cannot write <file>", exit 4
        assert caught.value.errno == errno.ENOSPC
        assert caught.value.filename == str(tmp_path / "shard-000000.tar")
    else:
        assert str(caught.value) == "boom"
