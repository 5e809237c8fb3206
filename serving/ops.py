"""Operations routes: liveness, readiness, what is served, its schema and API, and metrics.

Scope: read-only views of the app's state. ``/health`` and ``/ready`` stay open
when API keys are on and answer with minimal bodies (no paths, no environment).
``/health`` answers as soon as the worker runs, whatever the model; ``/ready``
is a 503 ``not_ready`` whose message says which: the model is loading, none
could be loaded yet (and why), or the worker is draining after SIGTERM.
``/model`` shows the manifest without the golden records (training rows) and
the embedded source code.
"""

from __future__ import annotations

from flask import Blueprint, Response
from werkzeug.exceptions import Conflict

from . import jsonio, openapi, state
from .holder import NotReady
from .metrics import CONTENT_TYPE

bp = Blueprint("ops", __name__)

HIDDEN_MANIFEST_KEYS = frozenset({"golden", "source"})


@bp.get("/health")
def health() -> Response:
    """Alive: the process answers (says nothing about the model)."""
    return jsonio.response({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """Ready: a verified, self-tested model is held and the worker is not stopping (503 saying which otherwise); with a store, how the last check went."""
    current = state.current()
    holder = current.holder
    model = holder.model
    if holder.draining:
        raise NotReady("This worker is draining (it was told to stop); send requests to another one.")
    if model is None:
        if holder.loading:
            raise NotReady("The model is loading (verifying and self-testing it); retry shortly.")
        reason = current.follower.status.get("reason") if current.follower is not None else None
        raise NotReady(f"No model could be loaded yet ({reason or 'see load_failed in the log'}); the server keeps retrying.")
    body = {"status": "ready", "model_version": model.version}
    if current.follower is not None:
        body["reload"] = current.follower.status
    return jsonio.response(body)


@bp.get("/model")
def model() -> Response:
    current = state.current()
    held = current.holder.require()
    manifest = {key: value for key, value in held.manifest.items() if key not in HIDDEN_MANIFEST_KEYS}
    if current.follower is not None:
        manifest["reload"] = current.follower.status
    return jsonio.response(manifest)


@bp.post("/reload")
def reload() -> Response:
    """Check the followed store reference now; 200 when unchanged or swapped, 409 when the new target failed, 503 when nothing serves yet."""
    follower = state.current().follower
    if follower is None:
        raise Conflict("This server serves a file, not a store reference; start it with --store and --model to reload.")
    outcome = follower.check()
    return jsonio.response(outcome, status={"failed": 409, "unavailable": 503}.get(outcome["result"], 200))


@bp.get("/schema")
def schema() -> Response:
    return jsonio.response(state.current().holder.require().schema.to_dict())


@bp.get("/openapi.json")
def openapi_json() -> Response:
    current = state.current()
    doc = openapi.document(current.holder.require(), max_records=current.settings.max_records, auth=bool(current.keys))
    return jsonio.response(doc)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(state.current().metrics.exposition(), content_type=CONTENT_TYPE)
