"""The one shape of every error the service answers: ``{"error": {"code", "message"}}``.

Light on purpose (no FastAPI, no torch): the replica's app and the HTTP proxy's middleware
(:mod:`pipeline.serve.proxy_errors`) both use it.
"""

from __future__ import annotations

from typing import Any

ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    411: "length_required",
    413: "too_large",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}
"""The ``code`` of each status the service answers: fixed here, so clients can match on it (the
standard's phrases change: 413 was "Request Entity Too Large", now "Content Too Large")."""


def error_code(status: int) -> str:
    """The machine-readable ``code`` of an error response (``http_<status>`` for one not listed)."""
    return ERROR_CODES.get(status, f"http_{status}")


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON body of an error answered with ``status``."""
    return {"error": {"code": error_code(status), "message": message}}
