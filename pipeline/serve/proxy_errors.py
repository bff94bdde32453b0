"""The errors Ray Serve's HTTP proxy answers itself, in the service's one error shape.

Most errors come from the replica's FastAPI app, already as ``{"error": {"code", "message"}}``. A
few never reach a replica: a full queue (503 with ``Retry-After``, ``--max-queued``), a request
that timed out in the proxy (408), and a replica that died under a request (the proxy logs it and
ends the request without an answer, which the web server turns into a bare 500). This ASGI
middleware, which Ray Serve installs in every proxy from ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
(set by ``serve`` before it starts Ray), rewrites the plain-text answers as JSON and answers the
unanswered request itself: 503 with ``Retry-After``, since Serve starts another replica and the
request may be sent again. What the proxy said goes to its log. It also refuses a body larger
than ``--max-upload-mb`` (413) or chunked without a length (411) from the headers, before the proxy
reads and buffers it; the replica checks again.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from pipeline.serve.error_shape import error_body

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
MAX_BODY_ENV = "ANOMALYGPT_SERVE_MAX_BODY_BYTES"
"""The proxy's request-body limit in bytes (``--max-upload-mb``): a larger request is refused from
its Content-Length before the proxy reads (and buffers) a byte of it."""
CALLBACK = "pipeline.serve.proxy_errors:proxy_middlewares"
RETRY_AFTER_S = 2
"""Retry-After of a request whose replica died (Serve restarts one within seconds)."""
MESSAGES = {
    404: "no such route: the API is POST /v1/inspect, POST /v1/feedback, GET /healthz and GET / (the page)",
    408: "the request took longer than the service allows; retry, or send a smaller one",
    503: "the service is busy (its queue is full) or starting: retry after the Retry-After seconds",
}

log = logging.getLogger(__name__)


def proxy_middlewares() -> list[Any]:
    """What Ray Serve's proxy calls (through ``CALLBACK_ENV``): the middlewares it wraps itself in."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyErrorShape)]


class ProxyErrorShape:
    """Pure ASGI middleware: a 4xx/5xx response that is not JSON is held, then sent as the JSON
    error shape; everything else passes through untouched, streamed as it comes."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.max_body = int(os.environ.get(MAX_BODY_ENV) or 0)
        """Largest request body in bytes (0: no limit here), checked before any of it is read."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self._refused(scope)
        if refused is not None:
            for message in json_error(*refused):
                await send(message)
            return
        held: dict[str, Any] | None = None
        started = False
        body = bytearray()

        async def send_shaped(message: dict) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                started = True
                if _plain_error(message):
                    held = message
                    return
            if held is None:
                await send(message)
                return
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                for shaped in shaped_error(held, bytes(body)):
                    await send(shaped)

        said = "the proxy ended the request without an answer"
        try:
            await self.app(scope, receive, send_shaped)
        except Exception as exc:
            if started:
                raise
            said = str(exc)
        if not started:  # a replica died under the request: the proxy logs it and answers nothing
            for shaped in shaped_error({"status": 500, "headers": []}, said.encode()):
                await send(shaped)

    def _refused(self, scope: dict) -> tuple[int, str] | None:
        """(status, message) for a body too large to read, from its headers alone; else None."""
        if not self.max_body:
            return None
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length = headers.get(b"content-length")
        if length is None:
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                return 411, "send the upload with a Content-Length header, not chunked"
            return None
        if not length.isdigit():
            return 400, "bad Content-Length header"
        if int(length) > self.max_body:
            return 413, (
                f"the upload is {int(length) / 2**20:.1f} MB; this service takes at most "
                f"{self.max_body / 2**20:g} MB per request (serve --max-upload-mb)"
            )
        return None


def json_error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> list[dict]:
    """The ASGI messages of an error response in the service's shape."""
    payload = json.dumps(error_body(status, message)).encode()
    headers = [
        *(headers or []),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": payload, "more_body": False},
    ]


def shaped_error(start: dict, text: bytes) -> list[dict]:
    """The ASGI messages of ``start``'s error (plain ``text``) as ``{"error": {"code", "message"}}``;
    a proxy 500 (the replica died) as 503 with ``Retry-After``."""
    status = int(start["status"])
    headers = [
        (k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")
    ]
    said = text.decode("utf-8", "replace").strip()
    if status == 500:
        log.warning("a replica failed while answering (sent as 503): %s", said[:2000])
        status = 503
        if not any(k.lower() == b"retry-after" for k, _ in headers):
            headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
        message = "the replica answering this request stopped; the service is starting another: retry"
    else:
        message = MESSAGES.get(status, said[:300] or "the request failed")
    return json_error(status, message, headers)


def _plain_error(start: dict) -> bool:
    if int(start["status"]) < 400:
        return False
    content_type = dict((k.lower(), v) for k, v in start.get("headers", [])).get(b"content-type", b"")
    return not content_type.startswith(b"application/json")
