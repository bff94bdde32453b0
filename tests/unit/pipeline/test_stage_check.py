"""pipeline.stage_check: the orchestrator's skip rule, plus the reason in words."""

from __future__ import annotations

from pipeline.fingerprint import write_stage
from pipeline.stage_check import NOT_RUN, check_stage, explain, read_inputs, start_stage

INPUTS = {"config": {"train.max_steps": 2, "seed": 0}, "data": {"shards": "a" * 64}, "workers": 1}


def test_explain_names_changed_config_keys_data_and_other_inputs():
    new = {"config": {"train.max_steps": 3, "seed": 0, "model.x": [1]}, "data": {"shards": "b" * 64}}
    new["workers"] = 2
    assert explain(INPUTS, new) == (
        "config changed: model.x (unset) -> [1], train.max_steps 2 -> 3; data changed (shards); "
        "workers changed: 1 -> 2"
    )
    assert explain(INPUTS, dict(INPUTS)) == "inputs changed"  # the key changed for another reason
    assert explain(None, INPUTS) == "inputs changed (none recorded)"


def test_explain_counts_what_it_does_not_list():
    old = {"config": {f"k{i}": 0 for i in range(9)}}
    new = {"config": {f"k{i}": 1 for i in range(9)}}
    assert explain(old, new).endswith("k5 0 -> 1 and 3 more")


def test_check_stage_follows_the_orchestrators_record(tmp_path):
    folder = tmp_path / "step"
    assert check_stage(folder, "k1", INPUTS).reason == NOT_RUN
    start_stage(folder, "k1", INPUTS, check_stage(folder, "k1", INPUTS))
    assert read_inputs(folder) == INPUTS
    assert check_stage(folder, "k1", INPUTS).status == "resume"
    write_stage(folder, "k1", "complete", {"x": 1})
    assert check_stage(folder, "k1", INPUTS).status == "complete"
    changed = {**INPUTS, "workers": 2}
    check = check_stage(folder, "k2", changed)
    assert (check.status, check.reason) == ("fresh", "workers changed: 1 -> 2")
    (folder / "old-output").write_text("x")
    start_stage(folder, "k2", changed, check)  # a fresh start clears the old outputs
    assert not (folder / "old-output").exists() and read_inputs(folder) == changed


def test_outputs_without_a_record_are_not_trusted(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    check = check_stage(tmp_path, "k", INPUTS)
    assert check.status == "fresh" and "no record" in check.reason
