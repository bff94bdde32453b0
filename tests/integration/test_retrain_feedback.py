"""A scheduled ``retrain`` after feedback: the confirmed images change the fingerprint, so exactly one
retrain trains (on them) and registers; the next one is up to date. Real Ray Train, MLflow, files."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.feedback import FeedbackStore
from pipeline.orchestrate import RunRequest, run_pipeline
from pipeline.pipeline_config import load_pipeline_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.max_steps=4", "synth.categories=[coin]", "evaluate.categories=[coin]"]


def _png(path: Path) -> bytes:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    buffer = io.BytesIO()
    Image.fromarray(rgb[:, ::-1].copy()).save(buffer, format="PNG")  # a mirrored normal: a new image
    return buffer.getvalue()


def _register_trained_on(cfg, data: Path, out: Path, checkpoint: Path) -> None:
    """Register ``checkpoint`` tagged as trained on ``data``'s normal images with ``cfg`` (what a
    retrain registers) without training it: the retrain's up-to-date check reads those tags."""
    import mlflow

    from pipeline.core.mlflow_store import configure_mlflow
    from pipeline.orchestrate import fingerprints
    from pipeline.registry import register_and_promote

    out.mkdir(parents=True)
    fps = fingerprints(cfg, data, out)
    configure_mlflow(out, cfg.name)
    tags = {"normals_fingerprint": fps["normals"], "model_fingerprint": fps["model"]}
    with mlflow.start_run():
        register_and_promote(checkpoint, {"mean": {"image_auroc": 0.5}}, fps["eval"], cfg.registry, tags=tags)


def test_retrain_after_feedback_trains_exactly_once(ray_session, sample_data_root, tiny_checkpoint, tmp_path):
    from mlflow import MlflowClient

    data = tmp_path / "data"
    shutil.copytree(sample_data_root, data)
    cfg = load_pipeline_config(ROOT / "configs" / "tiny.yaml", FAST)
    out, feedback = tmp_path / "run", tmp_path / "feedback"

    _register_trained_on(
        cfg, data, out, tiny_checkpoint
    )  # the champion of last night: these normals, this config
    assert "up to date" in run_pipeline(RunRequest(cfg, data, out), retrain=True)["up_to_date"]

    store = FeedbackStore(feedback)
    store.add(_png(data / "coin" / "test" / "good" / "000.png"), "coin", "normal", who="ana")
    store.add(_png(data / "coin" / "test" / "scratch" / "000.png"), "coin", "defect", who="ana")
    request = RunRequest(cfg, data, out, feedback=feedback)
    second = run_pipeline(request, retrain=True)
    assert "up_to_date" not in second, second
    assert second["stages"]["train"]["status"] == "done"
    assert "up to date" in run_pipeline(request, retrain=True)["up_to_date"]

    store_uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)
    versions = sorted(client.search_model_versions("name = 'anomalygpt'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    tags = versions[-1].tags
    assert (
        tags["feedback.normal"] == "1"
        and tags["feedback.defect"] == "1"
        and tags["feedback.coin.normal"] == "1"
    )
    assert tags["feedback_fingerprint"] == store.fingerprint()
    assert "feedback.normal" not in versions[0].tags
    samples = [s for s in (out / "data_with_feedback" / "coin" / "train" / "good").iterdir()]
    assert sum(p.name.startswith("feedback_") for p in samples) == 1
    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    assert "feedback_defect" in (out / "evaluate" / "answers.jsonl").read_text()
    # the confirmed normal trains (above) and is the bank's cover, not one of its references
    confirmed = [str(p) for p in (feedback / "coin" / "train" / "good").iterdir()]
    assert metrics["cover"] == {"coin": confirmed} and metrics["feedback"] == str(feedback)
    assert tags["feedback"] == str(feedback)  # inspect's default cover for this version
    references = metrics["references"]["coin"]
    assert len(references) == len(samples) - 1 and not any("feedback_" in r for r in references)
