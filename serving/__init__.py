"""The blackbox prediction server: a Flask app that serves verified artifacts (one or several).

Scope: :func:`create_app`, the app factory. It imports only ``blackbox`` and
its own modules (never ``training``), so it runs wherever an artifact can be
loaded. ``blackbox serve PATH`` runs it under gunicorn (:mod:`serving.cli`);
``gunicorn 'serving:create_app()'`` with ``BLACKBOX_ARTIFACT`` set works too.

The rule of its layers: the worker core (``config``, ``holder``, ``follow``,
``inference``, ``monitor``, ``recorder``, ``metrics``, ``logs`` and ``state``)
never imports flask or werkzeug, not even through another serving module
(tests/test_serving_layers.py imports each one with both blocked). It takes the
facts of a request (request id, client id, latency, time) as arguments and
raises plain exceptions; only the HTTP side reads requests, and
:mod:`serving.errors` maps both sides' exceptions to statuses.

Module map. The core: ``config`` (settings), ``holder`` (the model, loading
and vetting, readiness), ``follow`` (hot reload from a store), ``inference``
(records -> predictions, concurrent requests micro-batched), ``monitor`` (the
live drift window and its report), ``recorder`` (the prediction log's queue and
writer thread; the log itself is :mod:`blackbox.monitoring.predlog`),
``metrics``, ``logs``, and ``state`` (what one app shares: the served models
and their parts). The HTTP side: ``app`` (the factory), ``routes`` (every
route, one blueprint per module: ``api``, ``feedback``, ``ops``, ``v2``, and the
accessor of the current app's state), ``payloads`` / ``jsonio`` (bodies ->
records, JSON answers), ``lifecycle`` (request id, log line, metrics per
request), ``auth`` (API keys and scopes), ``errors`` (the one error table),
``http_errors`` (the one module defining HTTP exceptions), ``openapi``; and
running it: ``cli``, ``gunicorn_app``, ``worker``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from blackbox import Model

__all__ = ["create_app"]


def create_app(config: Mapping[str, Any] | None = None, *, model: Model | None = None) -> Flask:
    """Build the app (see :func:`serving.app.create_app`); the model is loaded and self-tested, or this raises.

    Flask, prometheus_client and the model stack are imported here, not when the
    package is: ``blackbox``'s command line imports :mod:`serving.cli` cheaply,
    and ``blackbox serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
    prometheus_client is first imported, which is when it picks its mode.
    """
    from .app import create_app as build

    return build(config, model=model)
