"""`python -m pipeline evaluate`: flags reach the config, bad input is a clear error before any work."""

from __future__ import annotations

import shutil

from pipeline.cli import main


def _fake_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("model.safetensors", "config.yaml"):
        (ckpt / name).write_text("")  # the data is checked before the model is ever loaded
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


def test_a_registered_model_is_resolved_by_the_command_and_named_in_the_metrics(tmp_path, monkeypatch):
    """evaluate.job takes a local checkpoint folder: the command downloads a models:/ URI and passes
    what the user typed on, for metrics.json's ``model``."""
    import evaluate.job
    import evaluate.report
    import pipeline.model_download

    ckpt, calls = _fake_checkpoint(tmp_path), {}

    def resolve(ref):
        calls["resolved"] = ref
        return ckpt

    def evaluate_(checkpoint, data, out, **kwargs):
        calls.update(checkpoint=checkpoint, model_ref=kwargs["model_ref"])
        return {}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(pipeline.model_download, "resolve_model", resolve)
    monkeypatch.setattr(evaluate.job, "run_evaluation", evaluate_)
    monkeypatch.setattr(evaluate.report, "markdown_table", lambda result: "")
    uri = "models:/anomalygpt@champion"
    assert main(["evaluate", "--model", uri, "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    assert calls == {"resolved": uri, "checkpoint": ckpt, "model_ref": uri}


def test_a_model_uri_that_does_not_resolve_is_bad_input(tmp_path, monkeypatch, capsys):
    import pipeline.model_download
    import pipeline.registry_errors

    def resolve(ref):
        raise pipeline.registry_errors.ModelReferenceError(f"model {ref}: no such version")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(pipeline.model_download, "resolve_model", resolve)
    args = ["--model", "models:/nope/9", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(["evaluate", *args]) == 2
    assert "models:/nope/9: no such version" in capsys.readouterr().err


def test_an_unreachable_registry_is_unavailable_not_bad_input(tmp_path, monkeypatch, capsys):
    import pipeline.model_download
    import pipeline.registry_errors

    def resolve(ref):
        raise pipeline.registry_errors.RegistryError(
            "MLflow tracking server http://127.0.0.1:9 is unreachable"
        )

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(pipeline.model_download, "resolve_model", resolve)
    args = ["--model", "models:/anomalygpt@champion", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(["evaluate", *args]) == 3
    assert "unreachable" in capsys.readouterr().err
