"""What a pipeline run leaves in MLflow for people to read: run names, source tags, the parent run's
mean metrics, the experiment's kind, the registered version's description and the printed link.

The stages are stand-ins (no Ray, no training); the record is the orchestrator's own, written to a
real sqlite MLflow store through the `run` command.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.core.mlflow_store import (
    EXPERIMENT_KIND_TAG,
    PROJECT_ROOT,
    configure_mlflow,
    run_url,
    source_tags,
)

TINY = PROJECT_ROOT / "configs" / "tiny.yaml"
PER_CATEGORY = {
    "brick": {"image_auroc": 0.9, "pixel_auroc": 0.8, "accuracy": 0.75, "n_images": 26},
    "coin": {"image_auroc": 0.7, "pixel_auroc": 0.6, "accuracy": 0.65, "n_images": 26},
}


def _stand_in_stages(monkeypatch) -> None:
    """synth, train and evaluate that take no time but log as the real ones do (train through
    train.tracking, evaluate through evaluate.report)."""
    from pipeline.orchestrate import Pipeline

    def synth(self, folder: Path) -> dict:
        return {"plan_id": "plan", "samples": 48, "source_fingerprint": "fp",
                "categories": {"brick": {"normal": 24}, "coin": {"normal": 24}}}  # fmt: skip

    def train(self, folder: Path) -> dict:
        import torch
        from safetensors.torch import save_file

        from train import tracking

        save_file({"decoder.weight": torch.ones(2, 2)}, str(folder / "model.safetensors"))
        (folder / "config.yaml").write_text(yaml.safe_dump({"seed": 0}))
        run_id, uri = tracking.open_run(folder, self.cfg.name, {"seed": 0}, None, {"workers": 1})
        tracking.close_run(uri, run_id, [])
        return {"steps": 1, "wall_time_s": 0.1, "mlflow_run_id": run_id}

    def evaluate(self, folder: Path) -> dict:
        from evaluate import report

        result = {"shots": "all", "per_category": PER_CATEGORY, "mean": report.mean_metrics(PER_CATEGORY),
                  "decoder_only": None}  # fmt: skip
        for name in ("metrics.json", "metrics.md"):
            (folder / name).write_text(json.dumps(result))
        assert report.log_to_mlflow(folder, result, [], 0)
        return result

    monkeypatch.setattr(Pipeline, "_synth", synth)
    monkeypatch.setattr(Pipeline, "_train", train)
    monkeypatch.setattr(Pipeline, "_evaluate", evaluate)


def test_a_pipeline_run_leaves_a_record_people_can_read(monkeypatch, tmp_path, sample_data_root, capsys):
    from mlflow import MlflowClient

    _stand_in_stages(monkeypatch)
    out = tmp_path / "run"
    data = Path(sample_data_root).resolve()
    argv = ["run", "--config", str(TINY), "--data", str(data), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "run.json").read_text())
    client = MlflowClient(tracking_uri=summary["tracking_uri"], registry_uri=summary["tracking_uri"])
    parent = client.get_run(summary["parent_run_id"])
    experiment = parent.info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")

    # Names that say which pipeline and which stage.
    assert parent.info.run_name.startswith("tiny/pipeline-")
    assert sorted(c.info.run_name for c in children) == [
        "tiny/evaluate", "tiny/register", "tiny/synth", "tiny/train",
    ]  # fmt: skip

    # Source: the command, the user and the commit, on every run (the train run's own too).
    expected = source_tags()
    if (PROJECT_ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        assert expected["mlflow.source.git.commit"] == head
    for run in (parent, *children):
        for key, value in expected.items():
            assert run.data.tags.get(key) == value, (run.info.run_name, key)

    # The parent carries the evaluate run's mean metrics under the same names.
    evaluate_run = next(c for c in children if c.info.run_name == "tiny/evaluate")
    means = {k: v for k, v in evaluate_run.data.metrics.items() if k.startswith("eval/mean/")}
    assert means["eval/mean/image_auroc"] == pytest.approx(0.8)
    assert {k: parent.data.metrics.get(k) for k in means} == means

    # The experiment opens on the model-training view.
    assert client.get_experiment(experiment).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"

    # The registered version says what it was trained on, how it scored and why it was promoted.
    description = client.get_model_version("anomalygpt", "1").description
    for line in (f"- dataset root: {data}", "- categories: brick, coin",
                 "- training samples (normal + synthetic): 48", "- test images: 52",
                 f"- pipeline run: {parent.info.run_id}",
                 "**Mean metrics**: Image-AUROC 0.8000, Pixel-AUROC 0.7000, accuracy 0.7000",
                 "**Promotion**: promoted to champion: no champion yet"):  # fmt: skip
        assert line in description

    # The printed lines open the run directly.
    url = f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{parent.info.run_id}"
    ui = f"browse: .venv/bin/mlflow ui --backend-store-uri {summary['tracking_uri']} --host 127.0.0.1"
    assert ui in printed and f"then open the run: {url}" in printed

    # A second run skips every stage; its parent run still carries the figures.
    assert main(argv) == 0
    again = client.get_run(json.loads((out / "run.json").read_text())["parent_run_id"])
    assert again.info.run_id != parent.info.run_id
    assert {k: again.data.metrics.get(k) for k in means} == means


def test_a_tracking_server_is_linked_directly():
    from pipeline.commands.run import mlflow_ui_lines

    page = "http://mlflow.internal:5000/#/experiments/3/runs/abc"
    assert run_url("http://mlflow.internal:5000/", "3", "abc") == page
    summary = {"tracking_uri": "http://mlflow.internal:5000", "experiment_id": "3", "parent_run_id": "abc"}
    assert mlflow_ui_lines(summary) == [f"open the run: {page}"]


def test_experiments_open_on_the_model_training_view(tmp_path, monkeypatch):
    import mlflow

    configure_mlflow(tmp_path, "fresh")
    kind = lambda name: mlflow.get_experiment_by_name(name).tags.get(EXPERIMENT_KIND_TAG)  # noqa: E731
    assert kind("fresh") == "custom_model_development"
    mlflow.create_experiment("older")  # made before experiments had a kind
    mlflow.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    configure_mlflow(tmp_path, "older")
    configure_mlflow(tmp_path, "chosen")
    assert kind("older") == "custom_model_development"
    assert kind("chosen") == "genai_development"  # a kind someone chose stays

    # Two pipelines starting together: the other one creates the experiment after this one looked.
    mlflow.create_experiment("raced")
    real, looked = mlflow.get_experiment_by_name, []

    def stale_first_look(name):
        looked.append(name)
        return None if len(looked) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", stale_first_look)
    configure_mlflow(tmp_path, "raced")  # no RESOURCE_ALREADY_EXISTS: it uses the other's experiment
    assert looked[:2] == ["raced", "raced"]
    assert real("raced").tags.get(EXPERIMENT_KIND_TAG) == "custom_model_development"
