"""The synth job end to end on the sample dataset: determinism across workers, readers, reruns."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.core.config import ConfigError
from pipeline.fingerprint import dataset_fingerprint
from synth import text
from synth.config import SynthConfig
from synth.job import plan_shards, run_synth
from synth.shard_format import MANIFEST_FORMAT, ShardError, load_manifest, verify_shards

pytestmark = pytest.mark.integration


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def shards(ray_session, sample_data_root, tmp_path_factory):
    """The same job with 1 and with 2 workers."""
    cfg = SynthConfig(size=64, per_image=1, samples_per_shard=8)
    outs = []
    for workers in (1, 2):
        out = tmp_path_factory.mktemp(f"shards{workers}")
        cfg.workers = workers
        result = run_synth(cfg, sample_data_root, out, seed=3, progress=False)
        assert result["status"] == "written"
        outs.append(out)
    return outs


def test_byte_identical_whatever_the_worker_count(shards):
    one, two = (_files(d) for d in shards)
    assert sorted(one) == ["manifest.json"] + [f"shard-{i:06d}.tar" for i in range(6)]
    assert one == two


def test_manifest_matches_shards(shards, sample_data_root):
    manifest = verify_shards(shards[0])
    assert manifest["samples"] == 48 and manifest["seed"] == 3
    assert [s["samples"] for s in manifest["shards"]] == [8] * 6
    assert set(manifest["categories"]) == {"brick", "coin", "grass", "gravel"}
    for counts in manifest["categories"].values():
        assert counts["normal"] == 6 and counts["anomalous"] + counts["fallback_normal"] == 6
    assert manifest["config"]["size"] == 64 and "workers" not in manifest["config"]
    assert manifest["skipped"] == []
    assert manifest["format"] == MANIFEST_FORMAT
    assert manifest["pairing"] == {
        "unit": "normal + synthetic of the same image",
        "pairs": 24,
        "fallback_pairs": manifest["fallback_normal"],
    }
    # The same formula as retrain's up-to-date check, so the two can be compared.
    assert manifest["source_fingerprint"] == dataset_fingerprint(sample_data_root, "mvtec", "train")


def test_stock_webdataset_reads_the_shards(shards, sample_data_root):
    import webdataset as wds

    urls = [str(p) for p in sorted(shards[0].glob("shard-*.tar"))]
    mask_handler = wds.handle_extension("mask.png", lambda b: np.array(Image.open(io.BytesIO(b))))
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=True).decode(mask_handler, "rgb8")
    seen, normals, questions = [], {}, []
    for sample in dataset:
        image, mask, meta = sample["png"], sample["mask.png"], sample["json"]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert meta["label"] == int(mask.any())
        assert meta["answer"].startswith("Yes" if meta["label"] else "No")
        assert len(meta["positions"]) in ((1, 2) if meta["label"] else (0,))
        assert meta["answer"] == text.answer(meta["positions"])
        assert (sample_data_root / meta["source"]).is_file()
        assert meta["source"].startswith(f"{meta['category']}/train/good/")
        assert meta["conversation"][0] == {"from": "human", "value": meta["question"]}
        forms = (text.question_for(meta["category"]), text.question_for(meta["category"], described=False))
        assert meta["question"] in forms
        questions.append(meta["question"] == text.question_for(meta["category"]))
        assert meta["conversation"][1] == {"from": "gpt", "value": meta["answer"]}
        seen.append(sample["__key__"])
        member = (sample["__key__"], meta["kind"], meta["source"], sample["__url__"])
        normals.setdefault(meta["pair"], []).append(member)
    assert len(seen) == 48 == len(set(seen))
    assert 12 <= sum(questions) <= 36  # described or not, drawn per sample (bare_question_share 0.5)
    # Every normal sample names itself; its one twin (per_image=1) names it, same image, same shard.
    assert set(normals) == {k for k in seen if int(k) % 2 == 0}
    for key, members in normals.items():
        assert [kind for k, kind, _, _ in members if k == key] == ["normal"] and len(members) == 2
        assert next(kind for k, kind, _, _ in members if k != key) in ("synthetic", "fallback")
        assert len({(src, url) for _, _, src, url in members}) == 1, key


def test_tar_reads_the_shards(shards):
    with tarfile.open(shards[0] / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert len(members) == 24
    assert [m.name for m in members[:3]] == ["00000000.png", "00000000.mask.png", "00000000.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o644)}


def test_rerun_is_a_no_op_other_settings_need_force(shards, sample_data_root, capsys):
    out = shards[0]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    cfg = SynthConfig(size=64, per_image=1, samples_per_shard=8, workers=2)
    assert run_synth(cfg, sample_data_root, out, seed=3, progress=False)["status"] == "up_to_date"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(ConfigError, match="--force"):
        run_synth(cfg, sample_data_root, out, seed=4, progress=False)


def test_plan_keeps_each_image_in_one_shard():
    # per_image 2: 3 samples per image; a target of 8 gives shards of 2 whole images (6 samples)
    shards = plan_shards(5, 2, 8)
    assert [len(s) for s in shards] == [6, 6, 3]
    flat = [item for s in shards for item in s]
    assert [index for index, *_ in flat] == list(range(15))
    for shard in shards:
        for index, source, k, pair in shard:
            assert pair == index - k == source * 3
            assert any(item == (pair, source, 0, pair) for item in shard)  # the normal is in this shard
    assert [len(s) for s in plan_shards(3, 3, 1)] == [4, 4, 4]  # a target below one image: one image
    assert [len(s) for s in plan_shards(4, 1, 8)] == [8]


def test_old_shards_without_pairing_are_refused_with_the_fix(shards, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(shards[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format"] = "anomalygpt-synth-shards/1"
    del manifest["pairing"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"older synth without normal/synthetic pairing.*--force"):
        load_manifest(copy)


def test_verify_rejects_tampered_or_missing_shards(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards[0], copy)
    data = bytearray((copy / "shard-000001.tar").read_bytes())
    data[1000] ^= 0xFF
    (copy / "shard-000001.tar").write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sha256 differs"):
        verify_shards(copy)
    (copy / "shard-000002.tar").unlink()
    with pytest.raises(ShardError, match=r"shard-000002\.tar: shard listed .* is missing"):
        verify_shards(copy, check_hash=False)
    with pytest.raises(ShardError, match=r"no manifest\.json"):
        load_manifest(tmp_path)


def test_cli_config_flags_corrupt_files_and_force(ray_session, sample_data_root, tmp_path, capsys):
    data = tmp_path / "data"
    for category in ("brick", "coin"):
        shutil.copytree(sample_data_root / category, data / category)
    (data / "brick" / "train" / "good" / "garbage.png").write_bytes(b"not an image at all")
    good = (data / "coin" / "train" / "good" / "000.png").read_bytes()
    (data / "coin" / "train" / "good" / "truncated.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
    argv = ["synth", "--data", str(data), "--out", str(out), "--config", str(config), "--per-image", "2",
            "--set", "synth.samples_per_shard=100", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    manifest = verify_shards(out)
    assert manifest["config"]["per_image"] == 2 and manifest["config"]["size"] == 64
    assert manifest["seed"] == 0 and manifest["samples"] == 12 * 3
    # the truncated image gives none of its 3 samples: 12 images x 2 pairs
    assert manifest["pairing"]["pairs"] == 24 and len(manifest["shards"]) == 1
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"brick/train/good/garbage.png", "coin/train/good/truncated.png"}
    assert reasons["brick/train/good/garbage.png"].startswith("unreadable image")
    assert reasons["coin/train/good/truncated.png"].startswith("undecodable image")
    assert "samples/s" in capsys.readouterr().out

    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # finished output: nothing rewritten
    assert main([*argv, "--seed", "5"]) == 2  # another seed: refused without --force
    assert main([*argv, "--seed", "5", "--force"]) == 0
    assert load_manifest(out)["seed"] == 5
