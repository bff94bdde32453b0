"""`python -m pipeline evaluate`: flags reach the config, bad input is a clear error before any work."""

from __future__ import annotations

import shutil

from pipeline.cli import main


def _fake_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("model.safetensors", "config.yaml"):
        (ckpt / name).write_text("")  # the plan is checked before the model is ever loaded
    return ckpt


def test_missing_mask_is_reported_with_exit_code_2(sample_data_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(sample_data_root, data)
    (data / "grass" / "ground_truth" / "stain" / "000_mask.png").unlink()
    code = main(
        [
            "evaluate",
            "--model",
            str(_fake_checkpoint(tmp_path)),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "grass/test/stain/000.png" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_category_and_bad_override_are_errors(sample_data_root, tmp_path, capsys):
    args = ["evaluate", "--model", str(_fake_checkpoint(tmp_path)), "--data", str(sample_data_root)]
    assert main([*args, "--out", str(tmp_path / "o"), "--categories", "brick,bottle"]) == 2
    assert "bottle" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "o"), "--set", "evaluate.shots=-1"]) == 2
    assert "shots" in capsys.readouterr().err


def test_mlflow_uri_without_tracking_store_is_an_error(sample_data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = main(["evaluate", "--data", str(sample_data_root), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "models:/anomalygpt@champion" in capsys.readouterr().err
