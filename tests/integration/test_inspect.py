"""``inspect`` on a real local Ray Data pipeline: the tiny checkpoint, the sample images, real files.

Its rows must be the Predictor's own answers for the same images and references (as ``ask`` gives
them), a rerun must skip what is done, a corrupt file must be listed and not stop the run.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.batch.job import InspectRequest, run_inspection
from pipeline.batch.sources import list_sources

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    # Ray Data's own context fields, not ours:
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]


@pytest.fixture(scope="module")
def line(sample_data_root, tmp_path_factory):
    """A copy of the sample set's test images (category from the MVTec path)."""
    root = tmp_path_factory.mktemp("line") / "data"
    shutil.copytree(sample_data_root, root)
    return root


def _request(checkpoint, line, out, **kwargs):
    settings = dict(
        checkpoint=checkpoint,
        model=str(checkpoint),
        model_version="test",
        sources=list_sources(str(line)),
        out=out,
        reference_roots=[line],
        max_references=4,
        workers=2,
        batch_size=3,
        overlays="anomalous",
        progress=False,
    )
    settings.update(kwargs)
    return InspectRequest(**settings)


def test_inspect_scores_like_the_predictor_and_resumes(ray_session, tiny_checkpoint, line, tmp_path):
    from pipeline.inference import predict_one
    from pipeline.references import ReferenceFolders
    from train.model.predictor import Predictor

    out = tmp_path / "inspect"
    summary = run_inspection(_request(tiny_checkpoint, line, out, generate=True))
    n = len(list_sources(str(line)))
    assert summary["images"] == n and summary["this_run"]["scored"] == n
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == n and len({r["path"] for r in rows}) == n
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len(table) == n and {"feedback", "feedback_note", "regions"} <= set(table[0])

    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    refs = ReferenceFolders(line, max_count=4)
    for row in rows[:6]:
        assert row["references"] == 4
        expected = predict_one(
            predictor, row["path"], category=row["category"], references=refs.paths(row["category"])
        )
        assert row["score"] == pytest.approx(expected.score, abs=1e-5)
        assert row["answer"] == expected.answer
        assert row["anomalous"] == (row["score"] > 0.5)
        for region in row["regions"]:
            x0, y0, x1, y1 = region["box"]
            assert 0 <= x0 < x1 <= row["width"] and 0 <= y0 < y1 <= row["height"]
        if row["anomalous"]:
            assert row["regions"] and row["regions"][0]["peak"] == pytest.approx(row["score"], abs=1e-6)
            assert (out / row["overlay"]).is_file()
        else:
            assert row["overlay"] is None and row["regions"] == []

    # a rerun skips everything; a new image and a corrupt one are all it looks at
    new = line / "coin" / "test" / "good" / "new.png"
    shutil.copy(line / "brick" / "test" / "good" / "000.png", new)
    (line / "coin" / "test" / "good" / "broken.png").write_bytes(b"\x89PNG\r\n not really")
    again = run_inspection(_request(tiny_checkpoint, line, out, generate=False))
    assert again["this_run"] == {**again["this_run"], "scored": 1, "unreadable": 1, "skipped": n}
    unreadable = [json.loads(x) for x in (out / "unreadable.jsonl").read_text().splitlines()]
    assert [u["path"] for u in unreadable] == [str(line / "coin" / "test" / "good" / "broken.png")]
    assert again["images"] == n + 1
    latest = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert latest["path"] == str(new) and latest["category"] == "coin" and latest["answer"] is None
    assert np.isfinite(latest["score"])
