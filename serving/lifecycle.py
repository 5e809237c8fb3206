"""What happens around every request: its id, its timing, its log line and its metrics.

Scope: the before/after hooks. The request id is the client's ``X-Request-ID``
when it is a plain token (visible ASCII, at most 128 characters), otherwise a
new one; it is echoed in the header and in every JSON body. After the answer is
built, one line is logged and the metrics are updated, whatever the status.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
import uuid

from blackbox import SchemaError
from flask import Flask, Response, g, request

from . import routes

HEADER = "X-Request-ID"
_CLIENT_ID = re.compile(r"[\x21-\x7e]{1,128}")


def init_app(app: Flask) -> None:
    """Register the hooks; ``start`` runs first, so even a 401 carries a request id."""
    app.before_request(start)
    app.after_request(finish)


def request_id() -> str:
    """This request's id (made on first use, so error handlers always have one)."""
    if "request_id" not in g:
        sent = request.headers.get(HEADER, "")
        g.request_id = sent if _CLIENT_ID.fullmatch(sent) else uuid.uuid4().hex
    return str(g.request_id)


def start() -> None:
    g.started = time.perf_counter()
    request_id()


def finish(response: Response) -> Response:
    """Stamp the request id, then log and count the request."""
    response.headers[HEADER] = request_id()
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    current = routes.current()
    route = request.url_rule.rule if request.url_rule else "<unmatched>"
    current.metrics.observe(route=route, method=request.method, status=response.status_code, seconds=seconds)
    error = g.get("error")
    if isinstance(error, SchemaError):
        current.metrics.rejected(g.get("model_name", ""), error.problems)
    failed = g.get("error_code") == "internal_error"
    held = current.sole_model()
    current.log.event(
        "request",
        logging.ERROR if failed else logging.INFO,
        request_id=request_id(),
        method=request.method,
        path=request.path[:200],
        status=response.status_code,
        records=g.get("records", 0),
        warnings=len(g.get("warnings", ())),
        latency_ms=round(seconds * 1000, 3),
        key_id=g.get("key_id"),
        client=request.remote_addr,
        model=g.get("model_name"),
        model_version=g.get("model_version") or (held.version if held else None),
        error=g.get("error_code"),
        traceback="".join(traceback.format_exception(error)) if failed else None,
    )
    return response
