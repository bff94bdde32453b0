"""The serving rules without Ray or HTTP: form values, image uploads, batching, the JSON answer, the
map PNGs, reference folders, settings and the page file."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import ConfigError, from_dict
from pipeline.inference import SMALL_MAP
from pipeline.references import NO_IMAGES_DIGEST, ReferenceFolders
from pipeline.serve.inspection import (
    MAX_HISTORY_TURNS,
    InspectJob,
    RequestError,
    decode_image,
    inspection_result,
    parse_category,
    parse_flag,
    parse_history,
    parse_map_mode,
    parse_question,
    run_batch,
)
from pipeline.serve.options import ServeSettings
from pipeline.serve.pictures import map_png, overlay_png
from train.model.batch import Prediction

# Ray Serve's own pydantic models (imported with pipeline.serve.app), not ours:
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def decoded(data: str | bytes) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.asarray(Image.open(io.BytesIO(raw)))


def test_history_must_be_alternating_turns_that_end_with_an_answer():
    turns = [{"from": "human", "value": "Any defect?"}, {"from": "gpt", "value": "Yes, top left."}]
    assert parse_history(json.dumps(turns)) == turns
    assert parse_history(None) == [] and parse_history("  ") == []
    too_many = [{"from": ("human", "gpt")[i % 2], "value": "x"} for i in range(MAX_HISTORY_TURNS + 2)]
    for bad, message in (
        ("[{", "not JSON"),
        ('{"from": "human"}', "JSON list"),
        (json.dumps(turns[::-1]), "turn 0 must be from 'human'"),
        (json.dumps(turns[:1]), "end with the service's answer"),
        (json.dumps([{"from": "human", "value": 3}, turns[1]]), "turn 0 must be"),
        (json.dumps([{**turns[0], "extra": 1}, turns[1]]), "turn 0 must be"),
        (json.dumps(too_many), "at most the last"),
    ):
        with pytest.raises(RequestError, match=message) as caught:
            parse_history(bad)
        assert caught.value.status == 400


def test_form_values():
    assert parse_category(None) == "object" and parse_category(" metal_nut ") == "metal_nut"
    for bad in ("../etc", "a/b", "x" * 65, "{}"):
        with pytest.raises(RequestError, match="category"):
            parse_category(bad)
    assert parse_map_mode(None) == "small" and parse_map_mode("FULL") == "full"
    with pytest.raises(RequestError, match="none, small, full"):
        parse_map_mode("big")
    assert parse_flag(None, "generate", True) is True and parse_flag("false", "generate", True) is False
    assert parse_flag("1", "generate", False) is True
    with pytest.raises(RequestError, match="generate must be true or false"):
        parse_flag("maybe", "generate", True)
    assert parse_question("  ") is None and parse_question(" Where? ") == "Where?"
    with pytest.raises(RequestError, match="at most"):
        parse_question("x" * 5000)


def test_uploads_decode_like_training_images_or_are_refused():
    rgb = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    image = decode_image(png_bytes(rgb), 64, "the image a.png")
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    from evaluate.data import load_image

    np.testing.assert_array_equal(image, load_image(io.BytesIO(png_bytes(rgb)), 64))
    gray = decode_image(png_bytes(rgb[:, :, 0]), 64, "gray")
    assert gray.shape == (64, 64, 3)
    for data, message in (
        (b"", "the image a.png is empty"),
        (b"GIF89a but no more", "the image a.png is"),
        (b"plain text, not an image", "the image a.png is not an image file"),
        (png_bytes(rgb)[:60], "the image a.png is not a readable image"),
    ):
        with pytest.raises(RequestError, match=message) as caught:
            decode_image(data, 64, "the image a.png")
        assert caught.value.status == 400
    bomb = io.BytesIO()
    Image.new("1", (8000, 6000)).save(bomb, format="PNG")  # 48 Mpx, a few kB
    with pytest.raises(RequestError, match="8000x6000 pixels") as caught:
        decode_image(bomb.getvalue(), 64, "the image")
    assert caught.value.status == 413


class RecordingPredictor:
    """Records each model call; a call holding the image marked 'poison' fails, as a broken input would."""

    image_size = 8

    def __init__(self) -> None:
        self.calls: list[tuple[int, str | None, bool, list[str]]] = []
        self.banks: list[tuple[str, int]] = []

    def memory_bank(self, category, references, pinned=False, cover=()):
        self.banks.append((category, len(references) + len(cover)))
        return f"bank:{category}:{len(references)}"

    def predict(self, images, categories, *, memory_bank=None, questions=None, generate=True):
        self.calls.append((len(images), memory_bank, generate, list(questions)))
        if any(q == "poison" for q in questions):
            raise ValueError("this image breaks the model")
        return [
            Prediction(c, np.full((8, 8), 0.1, np.float32), 0.1, q if generate else None)
            for c, q in zip(categories, questions, strict=True)
        ]


def job(category="coin", question="q", generate=True, references=()):
    image = np.zeros((8, 8, 3), np.uint8)
    return InspectJob(image, category, question, question, generate, list(references))


def test_a_batch_shares_model_calls_by_bank_and_generate_and_keeps_the_order():
    ref = np.ones((8, 8, 3), np.uint8)
    jobs = [
        job(question="a"),
        job(question="b", generate=False),
        job(category="brick", question="c"),
        job(question="d", references=[ref, ref]),
        job(question="e", references=[ref, ref]),
        job(question="f", generate=False),
    ]
    predictor = RecordingPredictor()
    results = run_batch(predictor, jobs)
    assert [r.answer for r in results] == ["a", None, "c", "d", "e", None]
    assert [r.category for r in results] == ["coin", "coin", "brick", "coin", "coin", "coin"]
    assert sorted(predictor.calls, key=str) == sorted(
        [
            (2, None, True, ["a", "c"]),  # zero-shot: categories may differ within a call
            (2, None, False, ["b", "f"]),
            (2, "bank:coin:2", True, ["d", "e"]),
        ],
        key=str,
    )
    assert predictor.banks == [("coin", 2)]


def test_a_failing_group_is_retried_one_by_one_so_only_the_bad_job_fails():
    predictor = RecordingPredictor()
    results = run_batch(predictor, [job(question="a"), job(question="poison"), job(question="c")])
    assert results[0].answer == "a" and results[2].answer == "c"
    assert isinstance(results[1], ValueError)
    assert [call[0] for call in predictor.calls] == [3, 1, 1, 1]


def test_inspection_result_reports_the_map_and_the_decision():
    amap = np.zeros((32, 32), np.float32)
    amap[4:8, 20:28] = 0.8
    bad = Prediction("coin", amap, 0.8, "Yes, there is an anomaly at the top right.")
    result = inspection_result(job(), bad, "full")
    assert result["score"] == pytest.approx(0.8) and result["anomalous"] is True
    assert result["threshold"] == 0.5 and result["positions"] == ["top right"]
    assert decoded(result["map_png"]).shape == (32, 32)
    assert decoded(result["overlay_png"]).ndim == 3
    small = inspection_result(job(), bad, "small")
    assert decoded(small["map_png"]).shape == (SMALL_MAP, SMALL_MAP) and "overlay_png" not in small
    at_threshold = Prediction("coin", np.full((32, 32), 0.5, np.float32), 0.5, "No.")
    result = inspection_result(job(), at_threshold, "none")
    assert result["anomalous"] is False and "map_png" not in result  # above 0.5, not at it
    no_map = inspection_result(job(), Prediction("coin", None, None, "No."), "full")
    assert no_map["score"] is None and no_map["anomalous"] is None and "map_png" not in no_map


def test_map_png_stores_the_values_and_the_overlay_has_a_colour_bar():
    amap = np.linspace(0.0, 0.999, 64 * 64, dtype=np.float32).reshape(64, 64)
    exact = decoded(map_png(amap, 64))
    np.testing.assert_allclose(exact / 255.0, amap, atol=0.5 / 255 + 1e-6)
    assert decoded(map_png(amap, 16)).shape == (16, 16)
    picture = decoded(overlay_png(np.zeros((64, 64, 3), np.uint8), amap, 0.5, 0.7))
    height, width, _ = picture.shape
    assert height >= 256 and width > height  # the panel and the legend beside it
    bar = picture[:, height + 14 + 9]  # the middle column of the colour bar (RGB)
    assert bar[15][0] > 100 and bar[15][2] < 50  # red at the top
    assert bar[height - 15][2] > 100 and bar[height - 15][0] < 50  # blue at the bottom


def test_reference_folders_read_mvtec_or_flat_layouts(tmp_path):
    good = tmp_path / "bottle" / "train" / "good"
    good.mkdir(parents=True)
    flat = tmp_path / "tile"
    flat.mkdir()
    (tmp_path / "empty").mkdir()
    for folder in (good, flat):
        for i in range(2):
            (folder / f"{i}.png").write_bytes(png_bytes(np.full((10, 10, 3), i * 50, np.uint8)))
    (flat / "notes.txt").write_text("not an image")
    refs = ReferenceFolders(tmp_path)
    assert refs.categories() == ["bottle", "tile"]
    assert [p.name for p in refs.paths("tile")] == ["0.png", "1.png"]
    assert refs.paths("missing") == [] and refs.paths("empty") == []
    first = refs.images("bottle", 16)
    assert len(first) == 2 and first[0].shape == (16, 16, 3)
    assert refs.images("bottle", 16) is first  # read once per replica
    # names a client sends that the folders do not have are not remembered (no growth per name)
    for name in ("missing", "empty", *(f"made-up {i}" for i in range(100))):
        assert refs.images(name, 16) == [] and refs.digest(name, 16) == NO_IMAGES_DIGEST
    assert sorted(key[0] for key in refs._images) == ["bottle"]


def test_reference_folders_split_the_references_from_the_confirmed_normals(tmp_path):
    def folder(path, values):
        path.mkdir(parents=True)
        for i, value in enumerate(values):
            (path / f"{i}.png").write_bytes(png_bytes(np.full((10, 10, 3), value, np.uint8)))

    folder(tmp_path / "refs" / "bottle" / "train" / "good", (10, 20, 30))
    folder(tmp_path / "feedback" / "bottle" / "train" / "good", (200,))
    folder(tmp_path / "feedback" / "tile" / "train" / "good", (90, 100))
    refs = ReferenceFolders([tmp_path / "refs", tmp_path / "feedback"], max_count=2)
    own, cover = refs.split("bottle", 8)
    assert [int(i[0, 0, 0]) for i in own] == [10, 30] and [int(i[0, 0, 0]) for i in cover] == [200]
    assert len(refs.images("bottle", 8)) == 3
    own, cover = refs.split("tile", 8)  # only confirmed normals: all cover (the bank calibrates on them)
    assert own == [] and len(cover) == 2
    # a references root that links a confirmed normal in (retrain --feedback's data) holds it once, as cover
    (tmp_path / "refs" / "bottle" / "train" / "good" / "feedback_0.png").symlink_to(
        tmp_path / "feedback" / "bottle" / "train" / "good" / "0.png"
    )
    refs = ReferenceFolders([tmp_path / "refs", tmp_path / "feedback"])
    own, cover = refs.split("bottle", 8)
    assert [int(i[0, 0, 0]) for i in own] == [10, 20, 30] and [int(i[0, 0, 0]) for i in cover] == [200]
    assert len(ReferenceFolders(tmp_path / "refs").images("bottle", 8)) == 4  # alone, it is a reference


def test_settings_are_checked_where_they_are_given():
    assert ServeSettings().model == "models:/anomalygpt@champion"
    for bad, message in (
        ({"device": "tpu"}, "device must be one of"),
        ({"replicas": 0}, "replicas must be at least 1"),
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"max_upload_mb": 0}, "max_upload_mb must be positive"),
        ({"batch_wait_ms": -1}, "batch_wait_ms must not be negative"),
    ):
        with pytest.raises(ConfigError, match=message):
            ServeSettings(**bad)
    args = {"model": "runs/x/train", "replicas": 2, "max_upload_mb": 5}
    assert from_dict(ServeSettings, args).replicas == 2
    with pytest.raises(ConfigError, match="unknown key 'gpus'"):
        from_dict(ServeSettings, {"gpus": 1}, source="serve application args")


def test_the_page_is_one_self_contained_file():
    from pipeline.serve.app import page_html

    page = page_html()
    for element in ('id="file-input"', 'id="category"', 'id="overlay"', 'id="answer"', 'id="chat-input"'):
        assert element in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    # relative paths: the page works under a route prefix
    assert 'apiPost("v1/inspect"' in page and 'apiPost("v1/feedback"' in page and 'fetch("healthz")' in page
    assert "Authorization: `Bearer ${token}`" in page and "body.error?.message" in page


def test_the_api_token_comes_from_the_file_or_the_environment_and_must_be_long(tmp_path, monkeypatch):
    import hashlib

    from pipeline.serve.options import TOKEN_ENV, _token_sha256

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert _token_sha256(None) is None  # no file, no variable: an open API
    token = "x" * 20
    (tmp_path / "token").write_text(f"  {token}\nsecond line ignored\n")
    assert _token_sha256(str(tmp_path / "token")) == hashlib.sha256(token.encode()).hexdigest()
    monkeypatch.setenv(TOKEN_ENV, "y" * 16)
    assert _token_sha256(None) == hashlib.sha256(b"y" * 16).hexdigest()
    assert _token_sha256(str(tmp_path / "token")) == hashlib.sha256(token.encode()).hexdigest()  # file wins
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        _token_sha256(None)
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="token file"):
        _token_sha256(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="token file not found"):
        _token_sha256(str(tmp_path / "missing"))


def test_error_codes_are_the_status_names():
    from pipeline.serve.app import error_response
    from pipeline.serve.error_shape import error_code

    codes = [error_code(s) for s in (400, 401, 404, 411, 413, 422, 429, 500, 503)]
    assert codes == [
        "bad_request",
        "unauthorized",
        "not_found",
        "length_required",
        "too_large",
        "unprocessable",
        "too_many_requests",
        "internal_error",
        "unavailable",
    ]
    assert error_code(418) == "http_418"
    response = error_response(401, "needs a token", {"WWW-Authenticate": "Bearer"})
    assert json.loads(response.body) == {"error": {"code": "unauthorized", "message": "needs a token"}}
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def _png_of_size(width: int, height: int) -> bytes:
    """A PNG whose header says width x height; one bit per pixel, all black: a few kB on disk."""
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG")
    return out.getvalue()


def test_a_request_is_refused_when_its_images_hold_too_many_pixels_in_all():
    from pipeline.serve.inspection import MAX_REQUEST_PIXELS, check_pixel_budget

    big = _png_of_size(6000, 6000)  # 36 Mpx: under the per-image limit
    check_pixel_budget([("the image", big), ("reference 1", big), ("reference 2", big)])  # 108 Mpx
    with pytest.raises(RequestError, match=f"more than {MAX_REQUEST_PIXELS:,}") as refused:
        check_pixel_budget([("the image", big)] + [(f"reference {i}", big) for i in range(3)])
    assert refused.value.status == 413
    check_pixel_budget([("the image", b"not an image"), ("reference 1", big)])  # left for decode to name


def test_a_long_history_is_trimmed_from_its_oldest_turns_to_fit_the_token_cap():
    from pipeline.inference import chat_question
    from pipeline.serve.inspection import fit_history, new_job

    def count(text: str) -> int:  # one token per word: enough to test the rule
        return len(text.split())

    turns = []
    for i in range(6):
        turns += [
            {"from": "human", "value": f"question {i} " + "word " * 50},
            {"from": "gpt", "value": f"answer {i}"},
        ]
    kept, dropped = fit_history(turns, "Where?", count, max_tokens=130)
    assert dropped % 2 == 0 and dropped > 0 and kept == turns[dropped:]  # whole pairs, oldest first
    assert count(chat_question(kept, "Where?")) <= 130 < count(chat_question(turns[dropped - 2 :], "Where?"))
    assert fit_history(turns, "Where?", None) == (turns, 0)  # no LLM: nothing to cap
    with pytest.raises(RequestError, match="question alone"):
        fit_history([], "word " * 200, count, max_tokens=100)
    image = np.zeros((8, 8, 3), np.uint8)
    job = new_job(image, "coin", "Where?", turns, True, count_tokens=lambda t: count(t) * 30)
    assert job.history_dropped == len(turns) and job.prompt == "Where?"


def test_the_proxys_own_plain_text_errors_leave_it_as_json():
    """Ray Serve's proxy answers some requests itself, in plain text: a full queue (503), a replica
    that died while answering (500). Wrapped in ProxyErrorShape they come out in the error shape,
    the death as 503 with Retry-After; JSON answers and successes pass through untouched."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from pipeline.serve.proxy_errors import ProxyErrorShape

    def route(path, response):
        return Route(path, lambda request: response, methods=["GET"])

    def dies(request):
        raise RuntimeError("The actor died unexpectedly before finishing this task")

    async def silent(scope, receive, send):  # what the proxy does when a replica dies under a request
        return None

    app = Starlette(routes=[
        route("/busy", PlainTextResponse("Request dropped due to backpressure", 503, {"Retry-After": "2"})),
        route("/died", PlainTextResponse("ActorDiedError: The actor died unexpectedly", 500)),
        route("/replica-json", JSONResponse({"error": {"code": "bad_request", "message": "x"}}, 400)),
        route("/ok", PlainTextResponse("fine")),
        Route("/raises", dies, methods=["GET"]),
        Route("/silent", silent, methods=["GET"]),
    ])  # fmt: skip
    client = TestClient(ProxyErrorShape(app), raise_server_exceptions=False)
    busy = client.get("/busy")
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert busy.json()["error"]["code"] == "unavailable" and "Retry-After" in busy.json()["error"]["message"]
    died = client.get("/died")
    assert died.status_code == 503 and died.headers["retry-after"] == "2"
    assert set(died.json()) == {"error"} and "ActorDiedError" not in died.text
    assert int(died.headers["content-length"]) == len(died.content)
    assert client.get("/replica-json").json() == {"error": {"code": "bad_request", "message": "x"}}
    assert client.get("/ok").text == "fine"
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    raised = client.get("/raises")  # the proxy raises a replica's death rather than answering it
    assert raised.status_code == 503 and raised.json()["error"]["code"] == "unavailable"
    assert "The actor died" not in raised.text and raised.headers["retry-after"] == "2"
    unanswered = client.get("/silent")
    assert unanswered.status_code == 503 and unanswered.json()["error"]["code"] == "unavailable"


def test_the_proxy_refuses_a_body_over_the_limit_before_reading_it(monkeypatch):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from pipeline.serve.proxy_errors import MAX_BODY_ENV, ProxyErrorShape

    reached = []

    async def handler(request):
        reached.append(len(await request.body()))
        return PlainTextResponse("read")

    app = Starlette(routes=[Route("/v1/inspect", handler, methods=["POST"])])
    monkeypatch.setenv(MAX_BODY_ENV, str(1000))
    client = TestClient(ProxyErrorShape(app))
    assert client.post("/v1/inspect", content=b"x" * 1000).text == "read" and reached == [1000]
    big = client.post("/v1/inspect", content=b"x" * 1001)
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large" and reached == [1000]
    assert "--max-upload-mb" in big.json()["error"]["message"]

    def chunks():
        yield b"x" * 10

    chunked = client.post("/v1/inspect", content=chunks())  # no Content-Length: chunked
    assert chunked.status_code == 411 and reached == [1000]
    monkeypatch.delenv(MAX_BODY_ENV)
    assert TestClient(ProxyErrorShape(app)).post("/v1/inspect", content=b"x" * 5000).text == "read"
