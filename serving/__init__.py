"""The blackbox prediction server: a Flask app that serves one verified artifact.

Scope: :func:`create_app`, the app factory. It imports only ``blackbox`` and
its own modules (never ``training``), so it runs wherever an artifact can be
loaded. ``blackbox serve PATH`` runs it under gunicorn (:mod:`serving.cli`);
``gunicorn 'serving:create_app()'`` with ``BLACKBOX_ARTIFACT`` set works too.

Module map: ``config`` (settings), ``holder`` (the model and loading),
``payloads`` / ``jsonio`` (bodies -> records), ``inference`` (records ->
predictions, concurrent requests micro-batched), ``api`` and ``ops`` (routes),
``predlog`` (the prediction log's queue and writer, ``POST /feedback``),
``monitor`` (the live drift window, ``GET /drift``), ``follow`` (hot reload from
a store), ``errors`` (the one error table), ``auth``, ``lifecycle`` (request id,
log line, metrics per request), ``logs``, ``metrics``, ``openapi``, ``cli`` and
``gunicorn_app`` (running it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blackbox import Model
    from flask import Flask

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
