"""The HTTP side's routes, one blueprint per module, and the one way a request reaches the app's state.

Scope: turning requests into calls on the worker core and its answers into
responses. ``api`` (``/predict``, ``/invocations``), ``feedback``
(``/feedback``), ``ops`` (health, readiness, what is served, ``/drift``,
metrics, reload) and ``v2`` (the Open Inference Protocol) each register one
blueprint (:func:`serving.app.create_app` does). Routes read the request
(:mod:`serving.payloads`, :mod:`serving.jsonio`), gather its facts (request id,
key id, timing: Flask's ``g``) and pass them to the core as arguments; the core
never reads them itself. Errors are raised, never answered here: the one table
(:mod:`serving.errors`) answers them.
"""

from __future__ import annotations

from flask import current_app

from ..state import EXTENSION, State


def current() -> State:
    """The state of the app handling the current request."""
    state: State = current_app.extensions[EXTENSION]
    return state
