"""The Serve application on a real local Ray, over real HTTP: a tiny checkpoint, the sample images.

What the service answers must be what the model itself predicts for the same image, question and
references, also when 8 requests arrive at once and are batched together.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    # Ray Serve's own pydantic models, not ours:
    pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
MAX_UPLOAD_MB = 1.0
MAX_QUEUED = 8
TOKEN = "a-test-token-of-32-characters-xx"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def references_dir(tmp_path_factory) -> Path:
    """--references-dir with one category, `broken`, whose only normal image is not an image: a
    fault on the server's side."""
    root = tmp_path_factory.mktemp("server_references")
    good = root / "broken" / "train" / "good"
    good.mkdir(parents=True)
    (good / "000.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return root


@pytest.fixture(scope="module")
def service(ray_session, tiny_checkpoint, references_dir, tmp_path_factory):
    """The application as `python -m pipeline serve --token-file F` deploys it, on 127.0.0.1 at a
    free port."""
    from ray import serve

    from pipeline.serve.app import APP_NAME, build_app
    from pipeline.serve.options import ServeSettings, resolve_options

    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    settings = ServeSettings(
        token_file=str(token_file),
        model=str(tiny_checkpoint),
        device="cpu",
        max_batch_size=4,
        batch_wait_ms=100,
        max_upload_mb=MAX_UPLOAD_MB,
        max_queued_requests=MAX_QUEUED,
        retry_after_s=3.0,
        references_dir=str(references_dir),
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(resolve_options(settings)), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    """The same checkpoint loaded directly: what the service must agree with."""
    from train.model.predictor import Predictor

    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def images(sample_data_root):
    category = "coin"
    test = sorted((sample_data_root / category / "test").rglob("*.png"))
    return {
        "category": category,
        "good": next(p for p in test if p.parent.name == "good"),
        "bad": [p for p in test if p.parent.name != "good"],
        "references": sorted((sample_data_root / category / "train" / "good").glob("*.png"))[:3],
    }


def post(
    url: str,
    image: Path | bytes | None,
    timeout: float = 120,
    references=(),
    token: str | None = TOKEN,
    **fields,
):
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    files = []
    if image is not None:
        files.append(("image", ("part.png", image if isinstance(image, bytes) else image.read_bytes())))
    files += [("reference", (p.name, p.read_bytes())) for p in references]
    return requests.post(f"{url}/v1/inspect", files=files, data=fields, timeout=timeout, headers=headers)


def message(response, code: str | None = None) -> str:
    """The message of an error response, after checking its shape: {"error": {"code", "message"}}."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]["message"]


def direct(predictor, image: Path, category: str, question: str | None = None, references=(), generate=True):
    from pipeline.inference import chat_question, default_question, read_image

    size = predictor.image_size
    bank = predictor.memory_bank(category, [read_image(r, size) for r in references]) if references else None
    text = chat_question([], question or default_question(category))
    rgb = read_image(image, size)
    return predictor.predict([rgb], [category], memory_bank=bank, questions=text, generate=generate)[0]


def png_array(text: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def check_regions(result: dict, image: Path | bytes, want_map: np.ndarray) -> None:
    """The answer's regions: those of evaluate.regions on the model's own map, boxes inside the
    uploaded image, and above 0.5 at least one, the first peaking at the score (the map's maximum)."""
    from PIL import Image

    from evaluate.regions import find_regions

    data = image if isinstance(image, bytes) else image.read_bytes()
    with Image.open(io.BytesIO(data)) as header:
        width, height = header.size
    assert result["image_size"] == [width, height]
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    regions = result["regions"]
    want = [r.to_dict() for r in find_regions(want_map, (width, height))]
    assert [r["box"] for r in regions] == [r["box"] for r in want]
    assert [r["position"] for r in regions] == [r["position"] for r in want]
    for region in regions:
        x0, y0, x1, y1 = region["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert 0.5 < region["mean"] <= region["peak"] <= result["score"] + 1e-6
    if result["score"] > 0.5:
        # The hottest region holds the map's maximum (unless that is a speck beside a real region,
        # evaluate.regions' rule; not so on these smooth maps).
        assert regions and regions[0]["peak"] == pytest.approx(result["score"], abs=1e-6)
    else:
        assert regions == []


def test_health_and_page(service, tiny_checkpoint):
    import requests

    health = requests.get(f"{service}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["model"] == str(tiny_checkpoint) and health["device"] == "cpu"
    page = requests.get(f"{service}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="inspect-button"' in page.text and 'apiPost("v1/inspect"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere


def test_good_and_anomalous_images_answer_as_the_model_does(service, predictor, images):
    category = images["category"]
    for image in (images["good"], images["bad"][0]):
        response = post(service, image, category=category)
        assert response.status_code == 200, response.text
        result = response.json()
        want = direct(predictor, image, category)
        assert set(result) == {
            "category",
            "question",
            "score",
            "threshold",
            "anomalous",
            "answer",
            "positions",
            "regions",
            "image_size",
            "sha256",
            "shots",
            "history_dropped",
            "map_png",
        }
        assert 0.0 <= result["score"] <= 1.0
        assert result["score"] == pytest.approx(want.score, abs=1e-5)
        assert result["answer"] == want.answer and isinstance(result["answer"], str)
        assert result["threshold"] == 0.5 and result["anomalous"] == (result["score"] > 0.5)
        assert isinstance(result["positions"], list) and result["category"] == category
        assert result["shots"] == 0 and result["history_dropped"] == 0
        small = png_array(result["map_png"])
        assert small.shape == (64, 64) and small.dtype == np.uint8
        check_regions(result, image, want.anomaly_map)

    bad = images["bad"][0]
    none = post(service, bad, category=category, map="none", generate="false").json()
    assert "map_png" not in none and "overlay_png" not in none and none["answer"] is None
    full = post(service, bad, category=category, map="full").json()
    amap = png_array(full["map_png"])
    assert amap.shape == (predictor.image_size, predictor.image_size)
    assert amap.max() / 255.0 == pytest.approx(full["score"], abs=0.5 / 255 + 1e-6)  # the map itself
    overlay = png_array(full["overlay_png"])
    assert overlay.ndim == 3 and overlay.shape[0] >= 256 and overlay.shape[1] > overlay.shape[0]


def test_regions_are_in_the_pixels_of_the_uploaded_image(service, predictor, images, tmp_path):
    """An upload of another shape than the model's square input: boxes in its own 96 x 48 pixels."""
    from PIL import Image

    wide = tmp_path / "wide.png"
    with Image.open(images["bad"][0]) as im:
        im.resize((96, 48)).save(wide)
    response = post(service, wide, category=images["category"], map="none", generate="false")
    assert response.status_code == 200, response.text
    result = response.json()
    want = direct(predictor, wide, images["category"], generate=False)
    assert result["score"] > 0.5  # this untrained model's decoder map: else no region to check
    check_regions(result, wide, want.anomaly_map)


def test_bad_uploads_are_refused_with_a_message(service, images, tmp_path):
    corrupt = post(service, b"\x89PNG\r\n\x1a\nnot really a png", category="coin")
    assert corrupt.status_code == 400 and "not" in message(corrupt) and "image" in message(corrupt)
    truncated = images["good"].read_bytes()[:200]
    broken = post(service, truncated, category="coin")
    assert broken.status_code == 400 and "image" in message(broken)

    oversized = post(service, b"\0" * int((MAX_UPLOAD_MB + 0.5) * 2**20), category="coin")
    assert oversized.status_code == 413 and "--max-upload-mb" in message(oversized)

    missing = post(service, None, category="coin")
    assert missing.status_code == 422 and "image" in message(missing)
    bad_map = post(service, images["good"], map="huge")
    assert bad_map.status_code == 400 and "map must be one of" in message(bad_map)
    bad_history = post(service, images["good"], history=json.dumps([{"from": "gpt", "value": "hi"}]))
    assert bad_history.status_code == 400 and "history" in message(bad_history)
    for hostile in ("5", '"a string"', '{"from": "human"}', "[1, 2]", "null"):  # JSON, but not turns
        reply = post(service, images["good"], history=hostile, generate="false", map="none")
        assert reply.status_code == 400 and "history" in message(reply, "bad_request"), hostile
    assert post(service, images["good"], map="huge").json()["error"]["code"] == "bad_request"
    assert "Traceback" not in oversized.text and message(oversized, "too_large")


def test_the_api_needs_the_token_and_the_page_and_health_check_do_not(service, images):
    import requests

    for token in (None, "wrong-token-of-32-characters-xxxx", ""):
        refused = post(service, images["good"], token=token, category="coin", generate="false")
        assert refused.status_code == 401, (token, refused.text)
        assert "Authorization: Bearer" in message(refused, "unauthorized")
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    basic = requests.post(f"{service}/v1/inspect", headers={"Authorization": f"Basic {TOKEN}"}, timeout=30)
    assert basic.status_code == 401
    feedback = requests.post(f"{service}/v1/feedback", data={"label": "normal"}, timeout=30)
    assert feedback.status_code == 401  # checked before anything else about the request
    assert requests.get(f"{service}/healthz", timeout=30).status_code == 200
    assert requests.get(f"{service}/", timeout=30).status_code == 200
    unknown = requests.get(f"{service}/v2/nothing", timeout=30)
    assert unknown.status_code == 404 and message(unknown, "not_found")
    accepted = post(service, images["good"], category="coin", generate="false", map="none")
    assert accepted.status_code == 200, accepted.text


def test_a_server_side_fault_is_a_500_with_an_error_id_and_no_server_paths(service, images, references_dir):
    answer = post(service, images["good"], category="broken")
    assert answer.status_code == 500
    detail = message(answer, "internal_error")
    assert re.fullmatch(
        r"the service could not answer \(error [0-9a-f]{12}; the server log has the details\)", detail
    )
    assert str(references_dir) not in answer.text and "Traceback" not in answer.text


def test_few_shot_references_give_the_few_shot_map(service, predictor, images):
    category, image, refs = images["category"], images["bad"][0], images["references"]
    shot = post(service, image, category=category, references=refs, map="full")
    assert shot.status_code == 200, shot.text
    result = shot.json()
    want = direct(predictor, image, category, references=refs)
    zero = direct(predictor, image, category)
    assert result["shots"] == len(refs)
    assert result["score"] == pytest.approx(want.score, abs=1e-5)
    check_regions(result, image, want.anomaly_map)
    assert want.score != pytest.approx(zero.score, abs=1e-4)  # the references changed the map
    amap = png_array(result["map_png"]).astype(np.float32) / 255.0
    np.testing.assert_allclose(amap, want.anomaly_map, atol=0.5 / 255 + 1e-6)


def test_a_chat_turn_keeps_the_history(service, images):
    category, image = images["category"], images["bad"][0]
    first = post(service, image, category=category, map="none").json()
    history = [{"from": "human", "value": first["question"]}, {"from": "gpt", "value": first["answer"]}]
    follow = post(
        service, image, category=category, map="none", question="Where?", history=json.dumps(history)
    )
    assert follow.status_code == 200, follow.text
    assert follow.json()["question"] == "Where?" and isinstance(follow.json()["answer"], str)


def test_eight_concurrent_requests_are_all_answered_each_with_its_own_result(service, images):
    """Batched together (same bank or none, mixed questions and generate flags), no request is lost
    and none gets another's result: each equals the same request sent alone."""
    category = images["category"]
    pool = [images["good"], *images["bad"]]
    requests_ = []
    for i in range(8):
        fields = {"category": category, "map": "none", "generate": "true" if i % 2 else "false"}
        if i % 3 == 0:
            fields["question"] = f"Question {i}: is anything wrong?"
        requests_.append((pool[i % len(pool)], fields))
    import requests

    alone = [post(service, image, **fields).json() for image, fields in requests_]
    before = requests.get(f"{service}/healthz", timeout=30).json()["served"]
    with ThreadPoolExecutor(max_workers=8) as threads:
        together = list(threads.map(lambda item: post(service, item[0], **item[1]), requests_))
    after = requests.get(f"{service}/healthz", timeout=30).json()["served"]
    assert [r.status_code for r in together] == [200] * 8
    assert after["images"] - before["images"] == 8
    assert after["batches"] - before["batches"] < 8  # some went through the model together
    for got, want in zip((r.json() for r in together), alone, strict=True):
        assert got["question"] == want["question"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
        assert got["answer"] == want["answer"]


def test_a_full_queue_answers_503_with_retry_after_at_once(service, images):
    """A burst of 32: the proxy holds at most MAX_QUEUED waiting for the replica (which runs
    2 x max_batch_size at once); the rest are refused at once with 503 and Retry-After, and none
    fails otherwise."""
    fields = {"category": images["category"], "map": "none", "generate": "true"}
    with ThreadPoolExecutor(max_workers=32) as threads:
        replies = list(threads.map(lambda _: post(service, images["bad"][0], **fields), range(32)))
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503}, codes
    refused = [r for r in replies if r.status_code == 503]
    assert refused and codes.count(200) >= 8, codes
    assert all(r.headers.get("Retry-After") == "3" for r in refused)
    assert post(service, images["bad"][0], **fields).status_code == 200  # the queue drained


def test_a_long_chat_is_trimmed_to_the_token_cap_and_many_pixels_are_refused(service, images):
    from PIL import Image

    from pipeline.serve.inspection import MAX_REQUEST_PIXELS

    history = []
    for i in range(16):
        history += [{"from": "human", "value": f"Look again, part {i}: " + "is it scratched? " * 100},
                    {"from": "gpt", "value": "No, there is no anomaly in the image."}]  # fmt: skip
    reply = post(service, images["good"], category="coin", map="none", history=json.dumps(history))
    assert reply.status_code == 200, reply.text
    dropped = reply.json()["history_dropped"]
    assert 0 < dropped <= len(history) and dropped % 2 == 0

    big = io.BytesIO()
    Image.new("1", (6000, 6000)).save(big, format="PNG")  # 36 Mpx in a few kB
    files = [("image", ("part.png", big.getvalue()))] + [
        ("reference", (f"r{i}.png", big.getvalue())) for i in range(3)
    ]
    import requests

    refused = requests.post(
        f"{service}/v1/inspect", files=files, data={"category": "coin"}, headers=AUTH, timeout=60
    )
    assert refused.status_code == 413 and f"{MAX_REQUEST_PIXELS:,}" in message(refused, "too_large")


def test_prometheus_metrics_and_json_access_logs_with_the_request_id(service, images):
    import time
    import urllib.request

    import ray
    import requests

    reply = post(
        service, images["bad"][0], category=images["category"], references=images["references"], map="none"
    )
    assert reply.status_code == 200, reply.text
    request_id = reply.headers["X-Request-ID"]
    metrics = requests.get(f"{service}/healthz", timeout=30).json()["metrics"]
    assert metrics["url"].startswith("http://") and metrics["url"].endswith("/metrics")

    wanted = [
        'ray_anomalygpt_serve_requests_total{', 'route="/v1/inspect"', 'code="200"', 'code="401"',
        "ray_anomalygpt_serve_request_seconds_bucket", "ray_anomalygpt_serve_batch_size_bucket",
        'ray_anomalygpt_serve_bank_cache_total{', 'result="hit"',
        'ray_anomalygpt_serve_images_total{', f'category="{images["category"]}"', 'verdict="anomalous"',
    ]  # fmt: skip
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:  # the metrics agent exports every few seconds
        with urllib.request.urlopen(metrics["url"], timeout=10) as scraped:
            text = scraped.read().decode()
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    assert all(w in text for w in wanted), [w for w in wanted if w not in text]

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    deadline, found = time.monotonic() + 30, []
    while not found and time.monotonic() < deadline:
        for path in logs.glob("replica_*AnomalyGPT*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if request_id in line:
                    found.append(json.loads(line))  # every line is one JSON object
        time.sleep(0.5)
    assert found and all(entry.get("request_id") == request_id for entry in found)
    assert any("/v1/inspect" in entry.get("message", "") and "200" in entry["message"] for entry in found), (
        found
    )
