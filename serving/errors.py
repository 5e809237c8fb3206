"""Every failure as one JSON shape, from one table of exception class -> (HTTP status, code).

Scope: mapping exceptions to responses. The worker core raises blackbox errors
and its own plain exceptions (:class:`~serving.holder.NotReady`,
:class:`~serving.state.UnknownModel`, :class:`~serving.inference.ModelTimeout`);
the HTTP side raises werkzeug's exceptions and those of
:mod:`serving.http_errors`, the one module that defines any. Nothing else in
serving picks a status code. A
blackbox error's code in the table is its class's ``code`` (so the library and
the wire cannot disagree); a validation error's message gets the route that
describes the fields (the library's messages name no routes). The
body is always ``{"error": {"code", "message", "details": [...]}, "request_id"}``
with ``details`` the schema's ``{"row", "field", "issue", "expected",
"received"}`` entries. Anything not in the table is a bug or a failure inside
the model: a 500 ``internal_error`` whose traceback goes to the log (found by
its request id), never to the client.

Two model failures have their own codes. A model that refuses records which
passed the schema (a value that becomes infinite in its float32 cast or its
transforms) is the client's: 422 ``model_rejected_input``, the rows in the
details. A model that answers NaN or infinity is the model's fault, so the
status is 500, but with its own code ``invalid_model_output``, a message that
says so and the rows in the details (never a 200 with ``null``).

A model call past the request timeout is a 504 ``timeout`` whose message names
the limit and its setting (the server is slow, not broken), and so is a request
in hand when gunicorn stops the worker for its timeout (504 ``worker_timeout``,
answered by the worker); a body not received within the read timeout is a 408
``request_timeout``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g
from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    HTTPException,
    InternalServerError,
    MethodNotAllowed,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)

from blackbox import SchemaError
from blackbox.errors import ModelInputError, ModelOutputError

from . import jsonio
from .holder import NotReady
from .http_errors import (
    BodyTimeout,
    InvalidFeedback,
    PredictionLogOff,
    PredictionLogUnavailable,
    TooManyRecords,
    WorkerTimeout,
)
from .inference import ModelTimeout
from .lifecycle import request_id
from .state import UnknownModel

TABLE: Mapping[type[BaseException], tuple[int, str]] = {
    TooManyRecords: (413, TooManyRecords.code),  # a blackbox error's code is its class's own
    ModelInputError: (422, ModelInputError.code),
    SchemaError: (422, SchemaError.code),
    ModelOutputError: (500, ModelOutputError.code),
    InvalidFeedback: (422, "invalid_feedback"),
    PredictionLogOff: (409, "prediction_log_off"),
    PredictionLogUnavailable: (503, "prediction_log_unavailable"),
    ModelTimeout: (504, "timeout"),
    WorkerTimeout: (504, "worker_timeout"),
    NotReady: (503, "not_ready"),
    UnknownModel: (404, "not_found"),
    BodyTimeout: (408, "request_timeout"),
    BadRequest: (400, "malformed_body"),
    Unauthorized: (401, "unauthenticated"),
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    MethodNotAllowed: (405, "method_not_allowed"),
    RequestEntityTooLarge: (413, "payload_too_large"),
    UnsupportedMediaType: (415, "unsupported_media_type"),
    ServiceUnavailable: (503, "not_ready"),
    InternalServerError: (500, "internal_error"),
    Exception: (500, "internal_error"),
}
"""Looked up along the exception's MRO, so the most specific class wins."""

INTERNAL_MESSAGE = "The server failed while handling this request; the request id finds the details in its log."
RETRY_AFTER = 5
"""Seconds a client is told to wait (``Retry-After``) before asking a model that is not ready again."""
SCHEMA_HINT = "GET /schema describes the fields."
"""Appended to the message of a validation error (code ``validation_error``) and of a refused input."""


def init_app(app: Flask) -> None:
    """Answer every exception, HTTP errors included (so 404/405/413/415 are JSON too)."""
    app.register_error_handler(Exception, handle)


def classify(exc: BaseException) -> tuple[int, str]:
    """The (status, code) of an exception; HTTP errors outside the table keep their own status."""
    cls = next(cls for cls in type(exc).__mro__ if cls in TABLE)
    if cls is Exception and isinstance(exc, HTTPException) and exc.code:
        return exc.code, re.sub(r"\W+", "_", (exc.name or "http_error").lower()).strip("_")
    return TABLE[cls]


def handle(exc: Exception) -> Response:
    """The JSON answer for ``exc``; remembers it so the request's log line can report it."""
    status, code = classify(exc)
    g.error = (exc.original_exception or exc) if isinstance(exc, InternalServerError) else exc
    g.error_code = code
    details: list[Any] = list(exc.problems) if isinstance(exc, (SchemaError, InvalidFeedback, ModelOutputError)) else []
    if status >= 500 and not isinstance(exc, (ServiceUnavailable, NotReady, ModelOutputError, ModelTimeout)):
        message = INTERNAL_MESSAGE
    elif isinstance(exc, HTTPException):
        message = exc.description or code
    else:
        message = str(exc)
        if code in (SchemaError.code, ModelInputError.code):
            message += f"\n{SCHEMA_HINT}"
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"} if isinstance(exc, HTTPException) else {}
    if isinstance(exc, NotReady):
        headers["Retry-After"] = str(RETRY_AFTER)
    body = {"error": {"code": code, "message": message, "details": details}, "request_id": request_id()}
    return jsonio.response(body, status, headers)
