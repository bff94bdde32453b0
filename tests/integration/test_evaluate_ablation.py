"""`python -m pipeline ablation` on the tiny preset: synth, train, evaluate per row, the paper's table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline.ablation import DEFAULT_TABLE, load_table, markdown
from pipeline.cli import main
from pipeline.fingerprint import read_stage

ROOT = Path(__file__).resolve().parents[2]


def test_table_file_has_the_papers_eight_rows_and_full_model_is_best():
    table = load_table(DEFAULT_TABLE)
    assert len(table.rows) == 8
    assert [s["shots"] for s in table.settings] == [0, 1]
    full = next(r for r in table.rows if r.name == "full")
    assert full.switches == {"decoder": True, "prompt_learner": True, "llm": True, "lora": False}
    assert full.paper["unsupervised"] == [97.4, 93.1, 93.3]
    for row in table.rows:  # no decoder, no map: the paper has no AUROC there
        assert (row.paper["unsupervised"][0] is None) == (not row.switches["decoder"])


@pytest.mark.slow  # ~1.5 min on 2 cores: synth, 3 Ray Train runs, 6 evaluations, 2 reruns
@pytest.mark.integration
def test_ablation_runs_the_tiny_preset_end_to_end(ray_session, sample_data_root, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.ablation")
    out = tmp_path / "ablation"
    args = [
        "ablation",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--data",
        str(sample_data_root),
        "--out",
        str(out),
        "--rows",
        "llm,decoder",
        "--set",
        "train.max_steps=2",
        "--set",
        "evaluate.write_maps=false",
    ]
    assert main(args) == 0
    summary = json.loads((out / "ablation.json").read_text())
    rows = {r["name"]: r for r in summary["rows"]}
    assert list(rows) == ["llm", "decoder"]
    # no decoder: no map, so no AUROC; an accuracy from the answers all the same
    assert rows["llm"]["ours"]["unsupervised"]["image_auroc"] is None
    assert rows["llm"]["ours"]["unsupervised"]["accuracy"] is not None
    for setting in ("unsupervised", "1-shot"):
        for value in rows["decoder"]["ours"][setting].values():
            assert value is not None and 0.0 <= value <= 1.0
    decoder_eval = json.loads((out / "decoder" / "eval-unsupervised" / "metrics.json").read_text())
    assert decoder_eval["accuracy_rule"] == "max_normal_score_threshold"
    llm_eval = json.loads((out / "llm" / "eval-1-shot" / "metrics.json").read_text())
    assert llm_eval["accuracy_rule"] == "llm_answer_strict" and llm_eval["shots"] == 1
    assert (out / "decoder" / "train" / "train_summary.json").is_file()
    # the LLM row trains nothing (frozen LLM and image token, as the reference): saved as built
    assert (out / "llm" / "train" / "model.safetensors").is_file()
    assert not (out / "llm" / "train" / "train_summary.json").exists()
    table = (out / "ablation.md").read_text()
    assert table == markdown(summary)
    assert "| ✓ |  |  |  | " in table and "(97.1)" in table and "(72.2)" in table
    assert table in capsys.readouterr().out
    # a rerun finds every step up to date by its recorded key and rewrites the same table
    steps = ["shards", "instruct"]
    steps += [f"{r}/{s}" for r in rows for s in ("train", "eval-unsupervised", "eval-1-shot")]
    keys = {step: read_stage(out / step)["key"] for step in steps}
    caplog.clear()
    assert main(args) == 0
    assert (out / "ablation.md").read_text() == table
    said = [r.getMessage() for r in caplog.records if r.name == "pipeline.ablation"]
    assert sum("skipped, up to date" in line for line in said) == len(steps)
    # another --set redoes what it changes: the decoder row trains 3 steps, its figures are new
    caplog.clear()
    fewer = [*args[: args.index("--rows")], "--rows", "decoder", "--set", "evaluate.write_maps=false"]
    assert main([*fewer, "--set", "train.max_steps=3"]) == 0
    assert json.loads((out / "decoder" / "train" / "train_summary.json").read_text())["steps"] == 3
    for step in ("decoder/train", "decoder/eval-unsupervised", "decoder/eval-1-shot"):
        assert read_stage(out / step)["key"] != keys[step], step
    said = [r.getMessage() for r in caplog.records if r.name == "pipeline.ablation"]
    assert any("row decoder train: redoing (config changed: train.max_steps 2 -> 3)" in s for s in said)
