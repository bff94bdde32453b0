"""Broken checkpoints and corrupt images fail early with an InputError naming the file (exit 2)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.errors import InputError
from train.model.checkpoint import CheckpointError, load_checkpoint, verify_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from pipeline.pipeline_config import load_pipeline_config
    from train.model.build import build_model
    from train.model.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml").model
    cfg.llm.cache_dir = tmp_path_factory.mktemp("llm_cache")
    return save_checkpoint(build_model(cfg), cfg, tmp_path_factory.mktemp("ckpt"))


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the shared checkpoint that a test may break."""
    return Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))


def _truncate(path: Path) -> int:
    """Cut the file in half, as an interrupted download or copy leaves it; returns the full size."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return len(data)


def test_good_checkpoint_verifies_and_loads(tiny_checkpoint):
    assert verify_checkpoint(tiny_checkpoint) is None
    model, cfg = load_checkpoint(tiny_checkpoint)
    assert cfg.image_size == 64 and any(p.requires_grad for p in model.parameters())


def test_truncated_weights_fail_load_naming_the_file(tiny_checkpoint, tmp_path):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    weights = ckpt / "model.safetensors"
    full = _truncate(weights)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    message = str(info.value)
    assert str(weights) in message
    assert f"truncated: {full // 2} of {full} bytes" in message
    assert "re-download" in message
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff" * 64, "not a safetensors file (header length"),
        ((10).to_bytes(8, "little") + b"not json!!", "not a safetensors file (unreadable header"),
        (b"\x01\x02", "truncated: 2 of at least 8 bytes"),
    ],
    ids=["garbage", "header-not-json", "tiny"],
)
def test_garbage_weights_are_rejected(tiny_checkpoint, tmp_path, content, expected):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    (ckpt / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"model\.safetensors") as info:
        verify_checkpoint(ckpt)
    assert expected in str(info.value)


def test_extra_bytes_after_the_data_are_rejected(tiny_checkpoint, tmp_path):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    with (ckpt / "model.safetensors").open("ab") as fh:
        fh.write(b"junk")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt: \d+ bytes where"):
        verify_checkpoint(ckpt)


def test_missing_or_unparsable_config_is_rejected(tiny_checkpoint, tmp_path):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    config = ckpt / "config.yaml"
    config.write_text("image_size: [unclosed\n")
    with pytest.raises(CheckpointError, match=r"config\.yaml does not parse"):
        load_checkpoint(ckpt)
    config.unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    assert f"{config} is missing" in str(info.value)


def test_evaluation_rejects_truncated_weights_before_any_actor(
    tiny_checkpoint, sample_data_root, tmp_path, monkeypatch
):
    from evaluate import job

    def no_actors(*args, **kwargs):
        raise AssertionError("evaluation actors were started for a broken checkpoint")

    monkeypatch.setattr(job, "_start_actors", no_actors)
    ckpt = _copy(tiny_checkpoint, tmp_path)
    _truncate(ckpt / "model.safetensors")
    started = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        job.run_evaluation(ckpt, sample_data_root, tmp_path / "eval", workers=1)
    assert time.perf_counter() - started < 10
    assert str(ckpt / "model.safetensors") in str(info.value) and "truncated" in str(info.value)
    assert not (tmp_path / "eval").exists()


def _ask(model: Path, image: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "pipeline", "ask", "--model", str(model), "--image", str(image)]
    return subprocess.run(
        [*args, "--question", "x", *extra], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def _corrupt_copy(image: Path, dst: Path) -> Path:
    dst.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    return dst


def test_ask_rejects_corrupt_image_before_loading_the_model(tiny_checkpoint, sample_data_root, tmp_path):
    good = sorted((sample_data_root / "coin" / "test" / "scratch").glob("*.png"))[0]
    corrupt = _corrupt_copy(good, tmp_path / "corrupt.png")
    proc = _ask(tiny_checkpoint, corrupt)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {corrupt} is not a readable image" in proc.stderr
    assert "Traceback" not in proc.stderr and "loading" not in proc.stderr

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    ref = _ask(tiny_checkpoint, good, "--reference", str(good), str(garbage))
    assert ref.returncode == 2, ref.stderr[-3000:]
    assert f"error: {garbage} is not a readable image" in ref.stderr
    assert "Traceback" not in ref.stderr and "loading" not in ref.stderr


def test_ask_rejects_truncated_checkpoint_before_loading(tiny_checkpoint, sample_data_root, tmp_path):
    good = sorted((sample_data_root / "coin" / "test" / "scratch").glob("*.png"))[0]
    ckpt = _copy(tiny_checkpoint, tmp_path)
    _truncate(ckpt / "model.safetensors")
    proc = _ask(ckpt, good)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{ckpt / 'model.safetensors'} is truncated" in proc.stderr
    assert "Traceback" not in proc.stderr and "loading" not in proc.stderr


def _edit_config(ckpt: Path, **changes) -> None:
    import yaml

    config = ckpt / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data.update(changes)
    config.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # an edited config: one prompt-learner layer wider
        ({"prompt_channels": [4, 8, 32]}, "mis-shaped 3: prompt_learner.convs"),
        # weights of a model with a decoder loaded as one without (another preset): the decoder's and
        # those of the parts that read its map are unexpected
        ({"use_decoder": False, "prompt_global": True}, "unexpected 22: decoder."),
        ({"prompt_tokens": 9}, "prompt_learner.base_prompts (file (4, 64), model (9, 64))"),
    ],
    ids=["wider-layer", "no-decoder", "more-prompt-tokens"],
)
def test_weights_that_do_not_fit_the_config_name_file_keys_and_cause(
    tiny_checkpoint, tmp_path, changes, expected
):
    ckpt = _copy(tiny_checkpoint, tmp_path)
    _edit_config(ckpt, **changes)
    verify_checkpoint(ckpt)  # both files are intact: only building the model shows the mismatch
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    message = str(info.value)
    assert str(ckpt / "model.safetensors") in message and expected in message
    assert "another preset or config.yaml was edited" in message
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


def test_ask_with_mismatched_weights_exits_2_naming_the_checkpoint(
    tiny_checkpoint, sample_data_root, tmp_path
):
    good = sorted((sample_data_root / "coin" / "test" / "scratch").glob("*.png"))[0]
    ckpt = _copy(tiny_checkpoint, tmp_path)
    _edit_config(ckpt, prompt_channels=[4, 8, 32])
    proc = _ask(ckpt, good)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: checkpoint file {ckpt / 'model.safetensors'} does not fit" in proc.stderr
    assert "Traceback" not in proc.stderr
