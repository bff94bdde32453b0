"""The feedback loop on a real local Serve: a normal image the model flags, marked normal by a
person, is called normal by the same running service at the next request (no restart), because
the confirmed image joins its category's memory bank."""

from __future__ import annotations

import io
import json
import shutil
import time

import numpy as np
import pytest
from PIL import Image
from support import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def service(ray_session, tiny_checkpoint, sample_data_root, tmp_path_factory):
    from ray import serve

    from pipeline.serve.app import APP_NAME, build_app
    from pipeline.serve.options import ServeSettings, resolve_options

    references = tmp_path_factory.mktemp("refs") / "data"
    shutil.copytree(sample_data_root, references)
    feedback = tmp_path_factory.mktemp("feedback") / "feedback"
    settings = ServeSettings(
        model=str(tiny_checkpoint),
        device="cpu",
        references_dir=str(references),
        feedback_dir=str(feedback),
        batch_wait_ms=0,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(resolve_options(settings)), name=APP_NAME, route_prefix="/")
        yield {"url": f"http://127.0.0.1:{port}", "feedback": feedback, "references": references}
    finally:
        serve.shutdown()


def grey_grass(sample_data_root) -> bytes:
    """A normal grass photo taken in monochrome: normal to a person, far from every colour normal in
    the bank, so the untrained tiny model flags it."""
    rgb = np.asarray(Image.open(sample_data_root / "grass" / "test" / "good" / "001.png").convert("RGB"))
    grey = np.repeat(rgb.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def inspect(url: str, data: bytes) -> dict:
    import requests

    files = [("image", ("part.png", data))]
    reply = requests.post(
        f"{url}/v1/inspect", files=files, data={"category": "grass", "map": "none"}, timeout=120
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_a_confirmed_false_alarm_is_called_normal_without_a_restart(service, sample_data_root):
    import requests

    url, data = service["url"], grey_grass(sample_data_root)
    before = inspect(url, data)
    assert before["anomalous"] is True, before["score"]  # the false alarm this test is about

    started = time.perf_counter()
    reply = requests.post(
        f"{url}/v1/feedback",
        data={"sha256": before["sha256"], "category": "grass", "label": "normal", "note": "camera in mono"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    kept = reply.json()
    assert kept["label"] == "normal" and kept["sha256"] == before["sha256"]
    assert kept["references"] == 6 + 1  # the sample set's 6 normals and the confirmed one

    after = inspect(url, data)
    took = time.perf_counter() - started
    assert after["anomalous"] is False and after["score"] < before["score"]
    assert took < 30  # the figure (docs) is measured by benchmarks/feedback_latency.py

    folder = service["feedback"]
    stored = list((folder / "grass" / "train" / "good").iterdir())
    assert [p.read_bytes() for p in stored] == [data]
    entry = json.loads((folder / "entries.jsonl").read_text().splitlines()[-1])
    assert entry["label"] == "normal" and entry["note"] == "camera in mono" and entry["model_version"]
    assert json.loads((folder / "fingerprint.json").read_text())["counts"] == {
        "grass": {"normal": 1, "defect": 0}
    }


def test_feedback_refuses_what_it_cannot_keep(service):
    import requests

    url = service["url"]
    cases = [
        ({"category": "grass", "label": "normal"}, 400, "send the image"),
        ({"sha256": "ab" * 32, "category": "grass", "label": "normal"}, 404, "not among this replica"),
    ]
    for fields, status, message in cases:
        reply = requests.post(f"{url}/v1/feedback", data=fields, timeout=60)
        assert reply.status_code == status and message in reply.text, reply.text
    bad_label = requests.post(
        f"{url}/v1/feedback",
        files=[("image", ("x.png", _png()))],
        data={"category": "grass", "label": "maybe"},
        timeout=60,
    )
    assert bad_label.status_code == 400 and "normal, defect" in bad_label.text
    not_image = requests.post(
        f"{url}/v1/feedback",
        files=[("image", ("x.png", b"hello"))],
        data={"category": "grass", "label": "defect"},
        timeout=60,
    )
    assert not_image.status_code == 400 and "not a readable image" in not_image.text


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
