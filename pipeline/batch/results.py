"""The results folder of ``inspect``: ``results.jsonl`` (the append-only record), ``results.parquet``
(the same rows as a table, with empty ``feedback`` / ``feedback_note`` columns a person fills in),
``unreadable.jsonl`` and ``summary.json``.

Each row is written to ``results.jsonl`` and flushed as soon as its image is scored, so a killed run
loses nothing that was written; a rerun skips an image whose path and content hash are already
there. A line cut short by a kill is dropped (and the file trimmed to its last whole line) on the
next start.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.core.files import atomic_write, write_json_atomic

RESULTS_JSONL = "results.jsonl"
RESULTS_PARQUET = "results.parquet"
UNREADABLE_JSONL = "unreadable.jsonl"
SUMMARY_JSON = "summary.json"
HISTOGRAM_BINS = 10
"""Bins of the score histogram over [0, 1] (scores above 1 fall in the last)."""
FLAGGED_MOST = 0.5
"""A category of a batch with at least this share flagged (and ``NOTE_MIN_IMAGES`` images) gets a
note: on a line whose defects are rare, most images flagged means today's normals are unlike the
references (new lighting, a new material lot), not that most parts are defective."""
NOTE_MIN_IMAGES = 10
FEEDBACK_COLUMNS = ("feedback", "feedback_note")
"""Filled in by a person (``normal`` or ``defect``, and a note), read by ``pipeline feedback``."""


class ResultsLog:
    """The rows of one results folder, appended as they come."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / RESULTS_JSONL
        self.rows = self._read()
        self._file = self.path.open("a", encoding="utf-8")

    def done(self) -> dict[str, set[str]]:
        """path -> the content hashes it was scored with (a rerun skips those)."""
        done: dict[str, set[str]] = {}
        for row in self.rows:
            done.setdefault(row["path"], set()).add(row["sha256"])
        return done

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Write ``rows`` and flush them to the OS: a kill after this loses none of them."""
        rows = list(rows)
        for row in rows:
            self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows += rows

    def close(self) -> None:
        self._file.close()

    def write_table(self) -> Path:
        """``results.parquet`` from every row so far (written whole, then renamed into place)."""
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{**row, **dict.fromkeys(FEEDBACK_COLUMNS)} for row in self.rows]
        table = pa.Table.from_pylist(rows, schema=_schema(pa)) if rows else _schema(pa).empty_table()
        sink = io.BytesIO()
        pq.write_table(table, sink)
        target = self.out / RESULTS_PARQUET
        atomic_write(target, sink.getvalue())
        return target

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):  # a line cut short by a kill: drop it
            with self.path.open("r+b") as f:
                f.truncate(len(whole))
        return [json.loads(line) for line in whole.decode("utf-8").splitlines() if line.strip()]


def write_unreadable(out: Path, entries: list[dict[str, str]]) -> None:
    """``unreadable.jsonl``: the images of the last run that could not be read, with the reason."""
    text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    atomic_write(out / UNREADABLE_JSONL, text.encode("utf-8"))


def summarise(rows: list[dict[str, Any]], unreadable: int) -> dict[str, Any]:
    """Counts per category, the anomalous share and the score histogram of ``rows``."""
    per_category: dict[str, dict[str, Any]] = {}
    for category in sorted({r["category"] for r in rows}):
        mine = [r for r in rows if r["category"] == category]
        flagged = sum(bool(r["anomalous"]) for r in mine)
        per_category[category] = {"images": len(mine), "anomalous": flagged, "share": flagged / len(mine)}
    scores = [r["score"] for r in rows if r["score"] is not None]
    bins = Counter(min(int(max(s, 0.0) * HISTOGRAM_BINS), HISTOGRAM_BINS - 1) for s in scores)
    flagged = sum(bool(r["anomalous"]) for r in rows)
    return {
        "images": len(rows),
        "anomalous": flagged,
        "anomalous_share": flagged / len(rows) if rows else None,
        "unreadable": unreadable,
        "per_category": per_category,
        "notes": flagged_notes(per_category),
        "score_histogram": {
            "edges": [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)],
            "counts": [bins.get(i, 0) for i in range(HISTOGRAM_BINS)],
        },
    }


def flagged_notes(per_category: dict[str, dict[str, Any]]) -> list[str]:
    """What to look at first: the categories where most of the batch was flagged (``FLAGGED_MOST``)."""
    return [
        f"{category}: {c['anomalous']} of {c['images']} images flagged; if most are normal, the "
        "references do not cover today's normals: mark a few normal (pipeline feedback) and "
        "inspect again with --feedback"
        for category, c in per_category.items()
        if c["images"] >= NOTE_MIN_IMAGES and c["share"] >= FLAGGED_MOST
    ]


def write_summary(out: Path, summary: dict[str, Any]) -> Path:
    write_json_atomic(out / SUMMARY_JSON, summary)
    return out / SUMMARY_JSON


def _schema(pa: Any) -> Any:
    region = pa.struct(
        [
            ("box", pa.list_(pa.int64())),
            ("area_px", pa.int64()),
            ("area_share", pa.float64()),
            ("peak", pa.float64()),
            ("mean", pa.float64()),
            ("position", pa.string()),
        ]
    )
    return pa.schema(
        [
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("category", pa.string()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("score", pa.float64()),
            ("anomalous", pa.bool_()),
            ("answer", pa.string()),
            ("positions", pa.list_(pa.string())),
            ("regions", pa.list_(region)),
            ("overlay", pa.string()),
            ("model", pa.string()),
            ("model_version", pa.string()),
            ("references", pa.int64()),
            ("references_digest", pa.string()),
            ("inspected_at", pa.string()),
            ("feedback", pa.string()),
            ("feedback_note", pa.string()),
        ]
    )
