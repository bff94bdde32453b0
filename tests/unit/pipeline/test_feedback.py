"""The feedback folder: what is kept where, relabelling, the fingerprint, the merged dataset view
a retrain trains on, and the `feedback` command over inspect's results."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import InputError
from pipeline.feedback import FeedbackStore, feedback_tags, merged_dataset
from synth.datasets import read_dataset

ROOT = Path(__file__).resolve().parents[3]


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_kept_in_mvtec_layout_relabelled_and_fingerprinted(tmp_path):
    store = FeedbackStore(tmp_path / "fb")
    empty = store.fingerprint()
    normal = store.add(png(10), "tile", "normal", note="glare", who="ana", model_version="models:/m/3")
    assert normal.file == f"tile/train/good/{normal.sha256[:16]}.png"
    assert (store.root / normal.file).read_bytes() == png(10)
    once = store.fingerprint()
    assert once != empty
    defect = store.add(png(10), "tile", "defect", who="ben")  # a second look: it is a defect after all
    assert not (store.root / normal.file).exists() and (store.root / defect.file).is_file()
    assert store.counts() == {"tile": {"normal": 0, "defect": 1}}
    assert store.fingerprint() not in (empty, once)
    entries = [json.loads(x) for x in (store.root / "entries.jsonl").read_text().splitlines()]
    assert [(e["label"], e["who"], e["note"]) for e in entries] == [
        ("normal", "ana", "glare"),
        ("defect", "ben", ""),
    ]
    assert entries[0]["model_version"] == "models:/m/3" and entries[0]["when"]
    recorded = json.loads((store.root / "fingerprint.json").read_text())
    assert recorded == {"fingerprint": store.fingerprint(), "counts": store.counts()}
    assert feedback_tags(store.root)["feedback.defect"] == "1"


def test_bad_feedback_is_refused(tmp_path):
    store = FeedbackStore(tmp_path)
    for args, message in (
        ((png(1), "tile", "maybe"), "must be one of normal, defect"),
        ((b"not an image", "tile", "normal"), "not a readable image"),
        ((png(1), "../etc", "normal"), "category"),
    ):
        with pytest.raises(InputError, match=message):
            store.add(*args)
    assert not (tmp_path / "entries.jsonl").exists()


def test_merged_dataset_adds_confirmed_normals_and_defects(sample_data_root, tmp_path):
    store = FeedbackStore(tmp_path / "fb")
    store.add(png(20), "coin", "normal")
    store.add(png(30), "coin", "defect")
    merged = merged_dataset(sample_data_root, store.root, tmp_path / "run" / "merged")
    train = read_dataset(merged, "mvtec", "train")
    test = read_dataset(merged, "mvtec", "test")
    original_train = read_dataset(sample_data_root, "mvtec", "train")
    assert len(train) == len(original_train) + 1
    assert sum(r.category == "coin" for r in train) == sum(r.category == "coin" for r in original_train) + 1
    added = [r for r in test if r.defect == "feedback_defect"]
    assert [(r.category, r.label) for r in added] == [("coin", 1)]
    assert len(test) == len(read_dataset(sample_data_root, "mvtec", "test")) + 1
    again = merged_dataset(sample_data_root, store.root, tmp_path / "run" / "merged")  # rebuilt in place
    assert len(read_dataset(again, "mvtec", "train")) == len(train)


def test_feedback_command_keeps_marked_rows_of_inspect_results(tmp_path):
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    images = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png(40 + i))
        images.append(path)
    rows = [
        {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "category": "tile",
         "model_version": "models:/m/1", "feedback": mark, "feedback_note": note}
        for p, mark, note in zip(images, ["normal", None, "Defect"], ["false alarm", None, None], strict=True)
    ]  # fmt: skip
    results = tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pylist(rows), results)
    fb = tmp_path / "fb"
    command = [sys.executable, "-m", "pipeline", "feedback", "--results", str(results), "--feedback", str(fb)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "kept 1 confirmed normal, 1 confirmed defect" in proc.stdout
    assert FeedbackStore(fb).counts() == {"tile": {"normal": 1, "defect": 1}}

    images[0].write_bytes(png(99))  # changed since it was inspected
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "changed since it was inspected" in proc.stderr
