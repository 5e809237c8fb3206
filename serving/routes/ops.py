"""Operations routes: liveness, readiness, what is served, its schema and API, its drift, metrics, and reload.

Scope: views of the app's state (``POST /reload`` alone acts: a store check now). ``GET /models`` lists every served
model (name, version, payload sha256, readiness and why not); each per-model
route also answers as ``/models/{name}/...`` (``/models/{name}`` is its
manifest). ``/ready`` is 200 only when every served model is ready (strict, as
Triton's readiness): a model that failed its checks makes it 503 naming that
model, while the others keep answering their own routes. ``/health`` and ``/ready`` stay open
when API keys are on and answer with minimal bodies (no paths, no environment).
``/health`` answers as soon as the worker runs, whatever the model; ``/ready``
is a 503 ``not_ready`` whose message says which: the model is loading, none
could be loaded yet (and why), the worker is draining after SIGTERM, or a
model call is overdue (it ran past the request timeout and still runs, so
every request on this worker is a 504 until it ends).
``/model`` shows the manifest without the golden records (training rows) and
the embedded source code. ``/drift`` is the worker's drift report
(:meth:`serving.monitor.Monitor.report`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response
from werkzeug.exceptions import Conflict

from .. import jsonio, openapi
from ..holder import NotReady
from ..metrics import CONTENT_TYPE
from ..state import Served
from . import current

bp = Blueprint("ops", __name__)

HIDDEN_MANIFEST_KEYS = frozenset({"golden", "source"})


@bp.get("/health")
def health() -> Response:
    """Alive: the process answers (says nothing about the model)."""
    return jsonio.response({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """Ready: every served model is held, verified and self-tested, and the worker is not stopping (503 saying which otherwise).

    With a store, how each model's last check went.
    """
    models = current().models
    waiting = {name: reason for name, served in models.items() if (reason := not_ready(served)) is not None}
    if waiting:
        if len(models) == 1:
            raise NotReady(next(iter(waiting.values())))
        listed = " ".join(f"{name}: {reason}" for name, reason in waiting.items())
        raise NotReady(f"{len(waiting)} of {len(models)} models are not ready, the others serve. {listed}")
    body: dict[str, Any] = {"status": "ready"}
    if len(models) == 1:
        (served,) = models.values()
        body["model_version"] = served.holder.require().version
        if served.follower is not None:
            body["reload"] = served.follower.status
    else:
        body["models"] = {name: served.holder.require().version for name, served in models.items()}
    return jsonio.response(body)


@bp.get("/models")
def models() -> Response:
    """Every served model: name, version, payload sha256, readiness (and why not), reload status."""
    return jsonio.response({"models": [entry(served) for served in current().models.values()]})


@bp.get("/models/<name>/ready")
def model_ready(name: str) -> Response:
    """One model's readiness: 200 with its entry, or 503 saying why not."""
    served = current().served(name)
    reason = not_ready(served)
    if reason is not None:
        raise NotReady(f"Model {name!r} is not ready. {reason}")
    return jsonio.response(entry(served))


def not_ready(served: Served) -> str | None:
    """Why ``served`` cannot answer now (None: it can): its own reason, or a model call overdue on this worker."""
    reason = served.not_ready()
    if reason is None and served.scorer.overdue:
        timeout = served.scorer.timeout
        return (f"A model call overdue: it ran past the request timeout ({timeout:g} s) and still runs, so this worker "
                "answers 504 to every request until it ends; send requests to another worker (or restart this one).")
    return reason


def entry(served: Served) -> dict[str, Any]:
    """What ``GET /models`` says about one model."""
    model = served.holder.model
    item: dict[str, Any] = {
        "name": served.name,
        "version": model.version if model else None,
        "payload_sha256": model.sha256 if model else None,
        "sha256": model.sha256 if model else None,  # the same, for clients written before payload_sha256
    }
    reason = not_ready(served)
    item["ready"] = reason is None
    if reason is not None:
        item["reason"] = reason
    if served.follower is not None:
        item["reload"] = served.follower.status
    return item


@bp.get("/model")
@bp.get("/models/<name>")
def model(name: str | None = None) -> Response:
    served = current().served(name)
    held = served.holder.require()
    manifest = {key: value for key, value in held.manifest.to_json().items() if key not in HIDDEN_MANIFEST_KEYS}
    if served.follower is not None:
        manifest["reload"] = served.follower.status
    return jsonio.response(manifest)


@bp.post("/reload")
@bp.post("/models/<name>/reload")
def reload(name: str | None = None) -> Response:
    """Check the followed store reference now; 200 when unchanged or swapped, 409 when the new target failed, 503 when nothing serves yet."""
    follower = current().served(name).follower
    if follower is None:
        raise Conflict("This server serves a file, not a store reference; start it with --store and --model to reload.")
    outcome = follower.check()
    return jsonio.response(outcome, status={"failed": 409, "unavailable": 503}.get(outcome["result"], 200))


@bp.get("/schema")
@bp.get("/models/<name>/schema")
def schema(name: str | None = None) -> Response:
    return jsonio.response(current().served(name).holder.require().schema.to_dict())


@bp.get("/openapi.json")
@bp.get("/models/<name>/openapi.json")
def openapi_json(name: str | None = None) -> Response:
    state = current()
    held = state.served(name).holder.require()
    doc = openapi.document(held, max_records=state.settings.max_records, auth=bool(state.keys))
    return jsonio.response(doc)


@bp.get("/drift")
@bp.get("/models/<name>/drift")
def drift_view(name: str | None = None) -> Response:
    """Per-feature drift of this worker's recent inputs to one model from its training data."""
    return jsonio.response(current().served(name).monitor.report())


@bp.get("/metrics")
def metrics() -> Response:
    return Response(current().metrics.exposition(), content_type=CONTENT_TYPE)
