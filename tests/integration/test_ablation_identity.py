"""Which ablation steps a rerun skips, resumes or redoes: the orchestrator's stage keys, not file presence.

Synth, training and evaluation are replaced by fakes that record their calls and write outputs that
depend on their inputs (a checkpoint whose bytes are the row's config, figures drawn from the
checkpoint's digest), so the decisions are tested in seconds; the real stages run in
test_evaluate_ablation.py.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from pipeline.ablation import run_ablation
from pipeline.fingerprint import read_stage

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"
TABLE = """
settings:
  - {name: unsupervised, shots: 0, paper: MVTec-AD unsupervised}
  - {name: 1-shot, shots: 1, paper: VisA 1-shot}
rows:
  - name: decoder
    switches: {decoder: true, prompt_learner: false, llm: false, lora: false}
    paper: {unsupervised: [97.1, 90.9, 90.3], 1-shot: [85.8, 96.2, 75.4]}
  - name: full
    switches: {decoder: true, prompt_learner: true, llm: true, lora: false}
    paper: {unsupervised: [97.4, 93.1, 93.3], 1-shot: [87.4, 96.2, 77.4]}
"""
STEPS = ["decoder/train", "decoder/eval-unsupervised", "decoder/eval-1-shot", "full/train"]
STEPS += ["full/eval-unsupervised", "full/eval-1-shot"]


class Fakes:
    """Stand-ins for synth, training and evaluation; ``calls`` lists what ran, as "<row>/<step>"."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.interrupt: set[str] = set()
        """Rows whose training is killed after its first checkpoint."""

    def run_synth(self, cfg, data_root, out, seed=0, **_):
        from pipeline.core.files import json_sha256

        self.calls.append("shards")
        plan = json_sha256({"synth": cfg, "seed": seed, "data": str(data_root)})
        return {"plan_id": plan, "samples": 48, "source_fingerprint": "-", "categories": ["brick"]}

    def run_training(self, cfg, shards, out, instruct=None, workers=1):
        from pipeline.core.config import to_dict

        row = Path(out).parent.name
        self.calls.append(f"{row}/train")
        out = Path(out)
        resumed = (out / "ray" / "checkpoint").is_file()
        (out / "ray").mkdir(parents=True, exist_ok=True)
        (out / "ray" / "checkpoint").write_text("step 1")
        if row in self.interrupt:
            self.interrupt.discard(row)
            raise KeyboardInterrupt
        (out / "model.safetensors").write_text(json.dumps(to_dict(cfg), sort_keys=True))
        (out / "config.yaml").write_text("model: {}\n")
        return {"steps": cfg.train.max_steps, "resumed": resumed}

    def run_evaluation(self, model_ref, data_root, out, shots=None, config=None, **_):
        from pipeline.registry import checkpoint_digest

        self.calls.append(f"{Path(out).parent.name}/{Path(out).name}")
        value = int(checkpoint_digest(model_ref)[:6], 16) / 0xFFFFFF
        result = {"mean": {"image_auroc": value, "pixel_auroc": value, "accuracy": value}, "shots": shots}
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "metrics.json").write_text(json.dumps(result))
        return result


@pytest.fixture
def fakes(monkeypatch):
    import torch

    import evaluate.job
    import synth.job
    import train.job
    import train.model

    fake = Fakes()
    monkeypatch.setattr(synth.job, "run_synth", fake.run_synth)
    monkeypatch.setattr(train.job, "run_training", fake.run_training)
    monkeypatch.setattr(evaluate.job, "run_evaluation", fake.run_evaluation)
    monkeypatch.setattr(train.model, "build_model", lambda cfg, seed=0: torch.nn.Linear(1, 1))
    return fake


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "table.yaml"
    path.write_text(TABLE)
    return path


def _run(data, out, table, *sets):
    return run_ablation(TINY, data, out, overrides=["train.max_steps=2", *sets], table=table)


def _keys(out: Path) -> dict[str, str | None]:
    """Each step's recorded key (None without a record)."""
    return {step: (read_stage(out / step) or {}).get("key") for step in STEPS}


def _said(caplog, step: str) -> list[str]:
    """The ablation's log lines about one step ("row decoder train", "shards")."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"ablation: {step}:")]


def test_rerun_with_the_same_inputs_skips_every_step(fakes, table, sample_data_root, tmp_path, caplog):
    out = tmp_path / "ablation"
    first = _run(sample_data_root, out, table)
    assert fakes.calls == ["shards", *STEPS]
    keys = _keys(out)
    fakes.calls.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.ablation"):
        again = _run(sample_data_root, out, table)
    assert fakes.calls == []
    assert again == first and _keys(out) == keys
    for step in ("shards", "instruction set", "row decoder train", "row full eval-1-shot"):
        assert "skipped, up to date" in _said(caplog, step)[0], step


def test_rerun_with_another_set_redoes_the_rows(fakes, table, sample_data_root, tmp_path, caplog):
    """The old rule (metrics.json exists: reuse it) kept the 2-step rows for a 3-step request."""
    out = tmp_path / "ablation"
    first = _run(sample_data_root, out, table)
    keys = _keys(out)
    fakes.calls.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.ablation"):
        again = _run(sample_data_root, out, table, "train.max_steps=3")
    assert fakes.calls == STEPS  # the shards do not depend on the training length
    assert all(_keys(out)[step] != keys[step] for step in STEPS)
    assert read_stage(out / "decoder" / "train")["summary"]["steps"] == 3
    assert again["rows"] != first["rows"]  # figures of the 3-step models
    said = _said(caplog, "row decoder train")[0]
    assert "redoing (config changed: train.max_steps 2 -> 3)" in said
    assert "model changed" in _said(caplog, "row full eval-unsupervised")[0]
    assert "skipped, up to date" in _said(caplog, "shards")[0]


def test_a_changed_table_row_redoes_only_that_row(fakes, table, sample_data_root, tmp_path, caplog):
    out = tmp_path / "ablation"
    _run(sample_data_root, out, table)
    keys = _keys(out)
    switches = "switches: {decoder: true, prompt_learner: true, llm: true, lora: false}"
    changed = TABLE.replace(switches, switches + "\n    set: [model.prompt_tokens=9]")
    table.write_text(changed)
    fakes.calls.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.ablation"):
        _run(sample_data_root, out, table)
    assert fakes.calls == ["full/train", "full/eval-unsupervised", "full/eval-1-shot"]
    assert {s: k for s, k in _keys(out).items() if s.startswith("decoder")} == {
        s: k for s, k in keys.items() if s.startswith("decoder")
    }
    assert "config changed: model.prompt_tokens 4 -> 9" in _said(caplog, "row full train")[0]
    assert "skipped, up to date" in _said(caplog, "row decoder eval-1-shot")[0]


def test_changed_test_images_redo_the_evaluations_only(fakes, table, sample_data_root, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(sample_data_root, data)
    out = tmp_path / "ablation"
    _run(data, out, table)
    image = sorted((data / "brick" / "test" / "good").glob("*.png"))[0]
    shutil.copy(sorted((data / "brick" / "test" / "good").glob("*.png"))[1], image)
    fakes.calls.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.ablation"):
        _run(data, out, table)
    assert fakes.calls == [s for s in STEPS if "/eval-" in s]
    assert "redoing (data changed (test))" in _said(caplog, "row decoder eval-unsupervised")[0]


def test_a_killed_ablation_resumes_the_interrupted_training(fakes, table, sample_data_root, tmp_path, caplog):
    out = tmp_path / "ablation"
    fakes.interrupt = {"full"}
    with pytest.raises(KeyboardInterrupt):
        _run(sample_data_root, out, table)
    assert read_stage(out / "full" / "train")["status"] == "running"
    fakes.calls.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.ablation"):
        _run(sample_data_root, out, table)
    assert fakes.calls == ["full/train", "full/eval-unsupervised", "full/eval-1-shot"]
    assert read_stage(out / "full" / "train")["summary"]["resumed"] is True  # its checkpoint was kept
    assert "resuming (interrupted with the same inputs)" in _said(caplog, "row full train")[0]


def test_outputs_of_an_older_version_are_redone(fakes, table, sample_data_root, tmp_path, caplog):
    """Rows written before identities were recorded cannot be trusted: their inputs are unknown."""
    out = tmp_path / "ablation"
    _run(sample_data_root, out, table)
    for step in STEPS:
        (out / step / "stage.json").unlink()
        (out / step / "inputs.json").unlink()
    fakes.calls.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.ablation"):
        _run(sample_data_root, out, table)
    assert fakes.calls == STEPS
    assert "redoing (no record of the inputs" in _said(caplog, "row decoder train")[0]
