"""What ``inspect --images`` accepts, and the results log it appends to (no Ray here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.batch.results import ResultsLog, summarise
from pipeline.batch.sources import list_sources
from pipeline.core.errors import InputError
from pipeline.references import guess_category


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def test_folder_glob_list_and_mvtec_root(tmp_path):
    line = tmp_path / "line"
    a, b = _png(line / "a.png"), _png(line / "sub" / "b.jpg")
    (line / "notes.txt").write_text("not an image")
    assert [s.path for s in list_sources(str(line))] == [str(a), str(b)]
    assert all(s.category == "object" for s in list_sources(str(line)))
    assert [s.category for s in list_sources(str(line), "bottle")] == ["bottle", "bottle"]
    assert [s.path for s in list_sources(str(line / "*.png"))] == [str(a)]
    assert [s.path for s in list_sources(str(line / "**" / "*.jpg"))] == [str(b)]
    listing = tmp_path / "paths.txt"
    listing.write_text("# tonight\nline/sub/b.jpg\n\n" + str(a) + "\n")
    assert [s.path for s in list_sources(str(listing))] == [str(a), str(b)]

    root = tmp_path / "mvtec"
    train = _png(root / "bottle" / "train" / "good" / "000.png")
    test = _png(root / "bottle" / "test" / "crack" / "001.png")
    other = _png(root / "cable" / "test" / "good" / "002.png")
    found = list_sources(str(root))
    assert [(s.path, s.category) for s in found] == [(str(test), "bottle"), (str(other), "cable")]
    assert str(train) not in {s.path for s in found}  # a root gives its test images
    assert guess_category(test) == "bottle" and guess_category(a) == "object"


def test_bad_specs_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder, file or matching glob"):
        list_sources(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        list_sources(str(tmp_path / "empty"))
    listing = tmp_path / "paths.txt"
    listing.write_text("gone.png\n")
    with pytest.raises(FileNotFoundError, match="line 1: no such file"):
        list_sources(str(listing))


def _row(path, sha, score, category="tile"):
    return {"path": path, "sha256": sha, "category": category, "score": score, "anomalous": score > 0.5}


def test_results_log_appends_resumes_and_drops_a_cut_line(tmp_path):
    log = ResultsLog(tmp_path)
    log.append([_row("/a.png", "1" * 64, 0.9), _row("/b.png", "2" * 64, 0.1)])
    log.close()
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"path": "/c.png", "sha2')  # a kill in the middle of a line
    again = ResultsLog(tmp_path)
    assert again.done() == {"/a.png": {"1" * 64}, "/b.png": {"2" * 64}}
    again.append([_row("/c.png", "3" * 64, 0.7)])
    again.close()
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["/a.png", "/b.png", "/c.png"]


def test_summary_counts_shares_and_histogram():
    rows = [_row("/a", "a", 0.95), _row("/b", "b", 0.05), _row("/c", "c", 0.55, "grid"), _row("/d", "d", 1.3)]
    summary = summarise(rows, unreadable=2)
    assert summary["images"] == 4 and summary["anomalous"] == 3 and summary["unreadable"] == 2
    assert summary["anomalous_share"] == pytest.approx(0.75)
    assert summary["per_category"]["tile"] == {"images": 3, "anomalous": 2, "share": pytest.approx(2 / 3)}
    assert summary["score_histogram"]["counts"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 2]


def test_a_category_mostly_flagged_gets_a_note_and_a_small_or_calm_one_none():
    flagged = [_row(f"/t{i}", str(i), 0.9 if i < 6 else 0.1) for i in range(10)]  # 6 of 10 flagged
    few = [_row(f"/g{i}", f"g{i}", 0.9, "grid") for i in range(3)]  # all flagged, but 3 images
    summary = summarise(flagged + few, unreadable=0)
    assert summary["notes"] == [
        "tile: 6 of 10 images flagged; if most are normal, the references do not cover today's "
        "normals: mark a few normal (pipeline feedback) and inspect again with --feedback"
    ]
    calm = [_row(f"/t{i}", str(i), 0.9 if i < 4 else 0.1) for i in range(10)]
    assert summarise(calm, unreadable=0)["notes"] == []


def test_a_model_retrained_with_feedback_inspects_and_serves_with_its_confirmed_normals_as_cover(tmp_path):
    """Its recorded dataset links the confirmed normals in; the recorded feedback folder follows it, so
    they are cover (ReferenceFolders leaves them to the later root), unless the user names others."""
    import argparse
    import json

    from pipeline.batch.provenance import model_origin
    from pipeline.commands.inspect import _reference_roots

    data, feedback, own = tmp_path / "data_with_feedback", tmp_path / "feedback", tmp_path / "mine"
    for folder in (data, feedback, own):
        folder.mkdir()
    checkpoint = tmp_path / "run" / "train"
    checkpoint.mkdir(parents=True)
    for name in ("model.safetensors", "config.yaml"):
        (checkpoint / name).write_bytes(b"weights")
    (tmp_path / "run" / "evaluate").mkdir()
    recorded = {"data": str(data), "feedback": str(feedback)}
    (tmp_path / "run" / "evaluate" / "metrics.json").write_text(json.dumps(recorded))
    origin = model_origin(str(checkpoint), checkpoint)
    assert (origin.data_root, origin.feedback_root) == (str(data), str(feedback))

    def roots(**given):
        args = {"no_references": False, "references_dir": None, "feedback": None, **given}
        return _reference_roots(argparse.Namespace(**args), origin)

    assert roots() == [data, feedback]
    assert roots(feedback=str(own)) == [data, own]  # the user's feedback folder instead
    assert roots(references_dir=str(own)) == [own]  # the user's references: none of the recorded
    assert roots(no_references=True) == []
    assert roots(references_dir=str(data)) == [data, feedback]  # the recorded dataset, named

    # serve: the same rule, and its own feedback folder is the cover instead; it reads what the run
    # recorded without hashing the weights (gigabytes for a 7B model) at start-up
    from pipeline.serve.options import ServeOptions, ServeSettings, _recorded_cover

    (checkpoint / "model.safetensors").unlink()

    def served(**given):
        settings = ServeSettings(model=str(checkpoint), **given)
        cover = _recorded_cover(settings, checkpoint)
        return ServeOptions(settings, str(checkpoint), "cpu", 0.0, cover_dir=cover)

    assert served(references_dir=str(data)).reference_roots == [str(data), str(feedback)]
    assert served(references_dir=str(data), feedback_dir=str(own)).reference_roots == [str(data), str(own)]
    assert served(references_dir=str(own)).reference_roots == [str(own)]
    assert served().reference_roots == []
