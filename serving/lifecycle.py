"""What happens around every request: its id, its timing, its log line and its metrics.

Scope: the before/after hooks. The request id is the client's ``X-Request-ID``
when it is a plain token (visible ASCII, at most 128 characters), otherwise a
new one, 32 random hex digits (128 bits from ``os.urandom``: unique across
workers and restarts, and as unguessable as a ``uuid4``, which costs three
times as much); it is echoed in the header and in every JSON body. After the answer is
built, one line is logged and the metrics are updated, whatever the status.
"""

from __future__ import annotations

import logging
import os
import re
import time
import traceback

from flask import Flask, Response, g, request

from blackbox import SchemaError

from . import routes

HEADER = "X-Request-ID"
_CLIENT_ID = re.compile(r"[\x21-\x7e]{1,128}")


def init_app(app: Flask) -> None:
    """Register the hooks; ``start`` runs first, so even a 401 carries a request id."""
    app.before_request(start)
    app.after_request(finish)


def request_id() -> str:
    """This request's id (made on first use, so error handlers always have one)."""
    here = g._get_current_object()  # one context lookup, not one per attribute (this runs on every request)
    found = here.get("request_id")
    if found is None:
        sent = request.headers.get(HEADER, "")
        found = here.request_id = sent if _CLIENT_ID.fullmatch(sent) else os.urandom(16).hex()
    return str(found)


def start() -> None:
    g.started = time.perf_counter()
    request_id()


def finish(response: Response) -> Response:
    """Stamp the request id, then log and count the request.

    The request's ``g`` and ``request`` are looked up once: each access through
    Flask's context proxies costs about a microsecond, and this hook reads a dozen.
    """
    here, asked = g._get_current_object(), request._get_current_object()  # type: ignore[attr-defined]  # a LocalProxy
    rid = request_id()
    response.headers[HEADER] = rid
    now = time.perf_counter()
    seconds = now - here.get("started", now)
    current = routes.current()
    rule = asked.url_rule
    status = response.status_code
    current.metrics.observe(route=rule.rule if rule else "<unmatched>", method=asked.method, status=status, seconds=seconds)
    error = here.get("error")
    if isinstance(error, SchemaError):
        current.metrics.rejected(here.get("model_name", ""), error.problems)
    code = here.get("error_code")
    failed = code == "internal_error"
    version = here.get("model_version")
    if not version:
        held = current.sole_model()
        version = held.version if held else None
    current.log.event(
        "request",
        logging.ERROR if failed else logging.INFO,
        request_id=rid,
        method=asked.method,
        path=asked.path[:200],
        status=status,
        records=here.get("records", 0),
        warnings=len(here.get("warnings", ())),
        latency_ms=round(seconds * 1000, 3),
        key_id=here.get("key_id"),
        client=asked.remote_addr,
        model=here.get("model_name"),
        model_version=version,
        error=code,
        traceback="".join(traceback.format_exception(error)) if failed else None,
    )
    return response
