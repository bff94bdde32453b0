"""The Ray Serve application: one deployment whose replicas each load the model once, batch the
requests that arrive together, and answer HTTP through FastAPI (``POST /v1/inspect``,
``GET /healthz``, ``GET /`` the page). docs/serving.md describes the API.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at run time, and
# Ray's class-based view cannot resolve string annotations (`request: Request` became a query field).
import asyncio
import functools
import hashlib
import hmac
import importlib.resources
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve import Application
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.core.config import from_dict
from pipeline.core.errors import PipelineError
from pipeline.feedback import FeedbackStore
from pipeline.references import ReferenceFolders
from pipeline.serve.error_shape import error_body
from pipeline.serve.inspection import (
    MAX_REFERENCES,
    InspectJob,
    RequestError,
    check_pixel_budget,
    decode_image,
    inspection_result,
    new_job,
    parse_category,
    parse_flag,
    parse_history,
    parse_map_mode,
    parse_question,
    run_batch,
    upload_size,
)
from pipeline.serve.metrics import metrics_address, service_metrics
from pipeline.serve.options import ServeOptions, ServeSettings, resolve_options
from train.model.config import DECISION_POINT
from train.model.predictor import Predictor

APP_NAME = "anomalygpt"
MAX_TEXT_FIELD = 256 * 1024
"""Bytes in one text field of the form (the chat history is the longest)."""

log = logging.getLogger(__name__)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every 4xx and 5xx of the service: ``{"error": {"code", "message"}}``, nothing else."""
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


def require_token(request: Request, digest: str | None) -> None:
    """With a token set (serve --token-file), ``Authorization: Bearer <token>`` or a 401. The
    replica holds the token's sha256, never the token; the comparison takes constant time."""
    if digest is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = hashlib.sha256(token.strip().encode()).hexdigest()
    if scheme.lower() != "bearer" or not token.strip() or not hmac.compare_digest(given, digest):
        raise HTTPException(
            401,
            "this service needs its token: send the header 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def server_fault(exc: BaseException) -> HTTPException:
    """A 500 for a fault on the server's side: the client gets an id, the server log gets the id
    with the message and traceback; server paths and internals stay out of the response."""
    error_id = uuid.uuid4().hex[:12]
    log.error("error %s: the service could not answer: %s", error_id, exc, exc_info=exc)
    return HTTPException(
        500, f"the service could not answer (error {error_id}; the server log has the details)"
    )


api = FastAPI(title="AnomalyGPT inspection", docs_url=None, redoc_url=None)


@api.middleware("http")
async def _measure(request: Request, call_next):
    """Every request's route, status and latency into the replica's Prometheus metrics."""
    started, code = time.perf_counter(), 500
    try:
        response = await call_next(request)
        code = response.status_code
        return response
    finally:
        service_metrics().request(request.url.path, code, time.perf_counter() - started)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), exc.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()) or "the request"
    return error_response(422, f"the request does not match the API at {fields} (docs/serving.md)")


@functools.cache
def page_html() -> str:
    """The web page: one self-contained file (no CDN, no network), stored beside this module."""
    return importlib.resources.files("pipeline.serve").joinpath("static", "index.html").read_text("utf-8")


# Everything the routes call is defined above the class: @serve.ingress freezes (pickles) the routes
# when the class is decorated, so a helper defined below it would be missing in the replicas.
class RecentUploads:
    """The last images this replica inspected, by sha256: ``POST /v1/feedback`` may name one instead
    of sending it again. Bounded in count and bytes (oldest dropped first)."""

    def __init__(self, max_images: int = 64, max_bytes: int = 128 * 2**20) -> None:
        self.max_images, self.max_bytes = max_images, max_bytes
        self._data: OrderedDict[str, bytes] = OrderedDict()

    def add(self, data: bytes) -> None:
        if not data or len(data) > self.max_bytes:
            return
        key = hashlib.sha256(data).hexdigest()
        self._data[key] = data
        self._data.move_to_end(key)
        while len(self._data) > self.max_images or sum(map(len, self._data.values())) > self.max_bytes:
            self._data.popitem(last=False)

    def get(self, sha256: str) -> bytes | None:
        return self._data.get(sha256)


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise RequestError(f"{name} must be a text field, not a file")
    return value


@serve.deployment(name="AnomalyGPT")
@serve.ingress(api)
class InspectionService:
    """One replica: the model, loaded once, and the HTTP routes over it."""

    def __init__(self, options: ServeOptions) -> None:
        from pipeline.core.runtime import configure_environment

        configure_environment()
        self.options = options
        # Loaded once per replica; few-shot banks are cached per category and reference content.
        self.predictor = Predictor.from_checkpoint(
            options.checkpoint, device=options.device, bank_budget=options.settings.bank_budget
        )
        settings = options.settings
        roots = options.reference_roots
        self.references = ReferenceFolders(roots) if roots else None
        self.feedback = FeedbackStore(settings.feedback_dir) if settings.feedback_dir else None
        self.recent: RecentUploads = RecentUploads()
        tokenizer = getattr(self.predictor.model, "tokenizer", None)
        self._count_tokens = None if tokenizer is None else (lambda text: len(tokenizer(text)["input_ids"]))
        self.served = {"images": 0, "batches": 0}
        """What this replica has inspected, and in how many model batches (batching at work)."""
        self.metrics_address = metrics_address()
        for batcher in (self.map_batch, self.answer_batch):
            batcher.set_max_batch_size(options.settings.max_batch_size)
            batcher.set_batch_wait_timeout_s(options.settings.batch_wait_ms / 1000.0)
        log.info("replica ready: %s on %s", options.checkpoint, self.predictor.device)

    @api.get("/", response_class=HTMLResponse)
    def page(self) -> str:
        return page_html()

    @api.get("/healthz")
    def healthz(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.options.settings.model,
            "device": str(self.predictor.device),
            "reference_categories": self.references.categories() if self.references else [],
            "feedback": self.feedback is not None,
            "served": dict(self.served),
            "metrics": self.metrics_address,
        }

    @api.post("/v1/inspect")
    async def inspect(self, request: Request) -> dict[str, Any]:
        require_token(request, self.options.token_sha256)
        self._check_length(request)
        limits = {"max_files": MAX_REFERENCES + 1, "max_fields": 16, "max_part_size": MAX_TEXT_FIELD}
        try:
            async with request.form(**limits) as form:  # closes the uploads' spooled files
                job, map_mode = await self._job(form)
            # Maps alone and answers queue apart: a map does not wait for a batch's answers.
            prediction = await (self.answer_batch(job) if job.generate else self.map_batch(job))
            if isinstance(prediction, BaseException):
                raise prediction
            return await asyncio.to_thread(inspection_result, job, prediction, map_mode)
        except RequestError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        except PipelineError as exc:  # the server's side: e.g. a corrupt file in --references-dir
            raise server_fault(exc) from exc

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)  # replaced in __init__ from the options
    async def map_batch(self, jobs: list[InspectJob]) -> list[Any]:
        """Requests for the map alone (generate=false) that arrived together."""
        return await self._predict(jobs)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)  # replaced in __init__ from the options
    async def answer_batch(self, jobs: list[InspectJob]) -> list[Any]:
        """Requests for the map and the answer that arrived together."""
        return await self._predict(jobs)

    async def _predict(self, jobs: list[InspectJob]) -> list[Any]:
        """The requests that arrived together, through the model in as few calls as possible."""
        self.served["images"] += len(jobs)
        self.served["batches"] += 1
        hits, misses = self.predictor.bank_hits, self.predictor.bank_misses
        results = await asyncio.to_thread(run_batch, self.predictor, jobs)
        metrics = service_metrics()
        metrics.batch(len(jobs), self.predictor.bank_hits - hits, self.predictor.bank_misses - misses)
        for job, result in zip(jobs, results, strict=True):
            if not isinstance(result, BaseException):
                metrics.scored(job.category, None if result.score is None else result.score > DECISION_POINT)
        return results

    @api.post("/v1/feedback")
    async def feedback(self, request: Request) -> dict[str, Any]:
        """A person's verdict on an image: kept in the feedback folder; a confirmed normal joins
        its category's bank at the next request (docs/serving.md)."""
        require_token(request, self.options.token_sha256)
        self._check_length(request)
        if self.feedback is None:
            raise HTTPException(404, "feedback is off: start the service with --feedback-dir DIR")
        try:
            async with request.form(max_files=1, max_fields=8, max_part_size=MAX_TEXT_FIELD) as form:
                image = form.get("image")
                data = await image.read() if isinstance(image, UploadFile) else None
                texts = {name: _text(form, name) for name in ("sha256", "category", "label", "note", "who")}
            return await asyncio.to_thread(self._keep_feedback, data, texts)
        except RequestError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        except PipelineError as exc:  # a bad label, note or image: the client's to fix
            raise HTTPException(400, str(exc)) from exc

    def _keep_feedback(self, data: bytes | None, texts: dict[str, str | None]) -> dict[str, Any]:
        category = parse_category(texts["category"])
        if data is None:
            sha = (texts["sha256"] or "").strip().lower()
            if not sha:
                raise RequestError(
                    "send the image as file field 'image', or the 'sha256' an inspection returned"
                )
            data = self.recent.get(sha)
            if data is None:
                raise RequestError(
                    f"sha256 {sha[:16]}... is not among this replica's recent images: send the image itself",
                    404,
                )
        entry = self.feedback.add(  # type: ignore[union-attr]
            data,
            category,
            (texts["label"] or "").strip().lower(),
            note=(texts["note"] or "").strip(),
            who=(texts["who"] or "").strip() or "serve",
            model_version=self.options.settings.model,
            source="upload",
        )
        references = len(self.references.paths(category)) if self.references else 0
        return {"sha256": entry.sha256, "category": category, "label": entry.label, "references": references}

    def _check_length(self, request: Request) -> None:
        """Refuse a large upload from its header, before a byte of it is read."""
        limit = self.options.max_upload_bytes
        length = request.headers.get("content-length")
        if length is None:
            if "chunked" in request.headers.get("transfer-encoding", "").lower():
                raise HTTPException(411, "send the upload with a Content-Length header, not chunked")
            return  # no body at all
        if not length.isdigit():
            raise HTTPException(400, f"bad Content-Length {length[:40]!r}")
        if int(length) > limit:
            raise HTTPException(
                413,
                f"the upload is {int(length) / 2**20:.1f} MB; this service takes at most "
                f"{self.options.settings.max_upload_mb:g} MB per request (serve --max-upload-mb)",
            )

    async def _job(self, form: FormData) -> tuple[InspectJob, str]:
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise RequestError("no image: send the image as the multipart form file field 'image'", 422)
        uploads = form.getlist("reference")
        if any(not isinstance(upload, UploadFile) for upload in uploads):
            raise RequestError("reference: send each normal image as a file field 'reference'")
        data = await image.read()
        self.recent.add(data)
        references = [(upload.filename, await upload.read()) for upload in uploads]
        texts = {name: _text(form, name) for name in ("category", "question", "history", "map", "generate")}
        return await asyncio.to_thread(self._parse, image.filename, data, references, texts)

    def _parse(
        self, name: str | None, data: bytes, uploads: list[tuple[str | None, bytes]], texts: dict
    ) -> tuple[InspectJob, str]:
        """Check and decode every field (in a thread: decoding images is CPU work)."""
        size = self.predictor.image_size
        category = parse_category(texts["category"])
        map_mode = parse_map_mode(texts["map"])
        generate = parse_flag(texts["generate"], "generate", default=True)
        question = parse_question(texts["question"])
        history = parse_history(texts["history"])
        labelled = [
            (f"reference {i + 1} {filename or ''}".rstrip(), payload)
            for i, (filename, payload) in enumerate(uploads)
        ]
        check_pixel_budget([(f"the image {name or ''}".rstrip(), data), *labelled])
        image = decode_image(data, size, f"the image {name or ''}".rstrip())
        references = [decode_image(payload, size, label) for label, payload in labelled]
        pinned = not references and self.references is not None
        cover: list = []
        if pinned:
            references, cover = self.references.split(category, size)
        job = new_job(
            image,
            category,
            question,
            history,
            generate,
            references,
            original_size=upload_size(data),
            sha256=hashlib.sha256(data).hexdigest(),
            references_pinned=pinned,
            count_tokens=self._count_tokens,
            cover=cover,
        )
        return job, map_mode


def build_app(options: ServeOptions) -> Application:
    """The application for ``serve.run``: replicas and their resources from the options."""
    from ray.serve.config import BackpressureConfig

    settings = options.settings
    return InspectionService.options(
        num_replicas=settings.replicas,
        # Room for one batch running and the next one filling.
        max_ongoing_requests=2 * settings.max_batch_size,
        # One JSON object per line in the replica logs, access lines with their request id.
        logging_config={"encoding": "JSON", "enable_access_log": True},
        # Beyond that, a bounded queue at each proxy; past it an immediate 503 with Retry-After.
        max_queued_requests=settings.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=settings.retry_after_s),
        ray_actor_options={"num_cpus": settings.cpus_per_replica, "num_gpus": options.gpus_per_replica},
    ).bind(options)


def app_builder(args: dict[str, Any]) -> Application:
    """The application from a Ray Serve config's ``args`` (the keys of
    :class:`~pipeline.serve.options.ServeSettings`), as a KubeRay RayService deploys it:
    ``import_path: pipeline.serve.app:app_builder``. The model is resolved here, once; ``cuda``
    replicas wait for GPU workers that have not joined yet instead of failing the deploy."""
    settings = from_dict(ServeSettings, args, source="serve application args")
    return build_app(resolve_options(settings, check_gpus=False))
