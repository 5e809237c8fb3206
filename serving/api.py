"""Prediction routes: ``POST /predict``, the MLflow-compatible ``POST /invocations``, and ``POST /feedback``.

Scope: HTTP glue. With several models, ``/models/{name}/predict`` and
``/models/{name}/invocations`` address one (the bare routes answer 404 naming
them); with one, both forms work. ``/models/{name}/feedback`` addresses the
model whose classes a label not logged yet must match. :func:`score` and :func:`record` are the one
scoring path, which :mod:`.v2` uses too. Both routes read the body into records (:mod:`.payloads`),
score them in one call (:class:`.inference.Scorer`) with the model read once from
the holder, and answer ``{"predictions", "probabilities", "classes", "model",
"warnings", "request_id"}`` (``model``: :func:`identity`); ``predictions`` is also what MLflow clients read.

Only a request that is answered 200 is recorded (prediction metrics, drift
window, prediction log), and only once its body is serialised: an answer that
cannot be sent records nothing. A model answering NaN or infinity is logged
(``invalid_model_output``, with the request id and rows) and counted before the
error reaches the client.
"""

from __future__ import annotations

import logging
from typing import Any

from blackbox import Model
from blackbox.errors import ModelOutputError
from flask import Blueprint, Response, g, request

from . import jsonio, payloads, predlog, state
from .inference import Scored
from .lifecycle import request_id
from .state import Served

bp = Blueprint("api", __name__)


@bp.post("/predict")
@bp.post("/models/<name>/predict")
def predict(name: str | None = None) -> Response:
    return _predict(name, payloads.native)


@bp.post("/invocations")
@bp.post("/models/<name>/invocations")
def invocations(name: str | None = None) -> Response:
    return _predict(name, payloads.invocation)


def _predict(name: str | None, shape: payloads.Shape) -> Response:
    current = state.current()
    served = current.served(name)
    model = held(served)
    records = payloads.read_records(request, shape, max_records=current.settings.max_records)
    scored = score(served, model, records)
    body: dict[str, Any] = {"predictions": scored.predictions}
    if scored.probabilities is not None:
        body["probabilities"] = scored.probabilities
    if model.classes is not None:
        body["classes"] = model.classes
    body["model"] = identity(model)
    body["warnings"] = scored.warnings
    body["request_id"] = request_id()
    response = jsonio.response(body)  # before recording: an answer that cannot be serialised records nothing
    record(served, model, records, scored)
    return response


def identity(model: Model) -> dict[str, str]:
    """The ``model`` object of every answer: name, version and the payload's sha256.

    ``payload_sha256`` names the hash (the payload the manifest binds, what ``blackbox
    inspect`` and the prediction log show; not the file's, which ``push`` and ``list``
    show); ``sha256`` repeats it for clients written before the rename.
    """
    return {"name": model.name, "version": model.version, "payload_sha256": model.sha256, "sha256": model.sha256}


def held(served: Served) -> Model:
    """The model ``served`` holds now (503 when none), read once for the whole request and named in its log line."""
    g.model_name = served.name
    model = served.holder.require()
    g.model_version = model.version
    return model


def score(served: Served, model: Model, records: list[Any]) -> Scored:
    """Validate and predict ``records`` with ``model`` in its own scorer; an invalid output is logged and counted, then raised."""
    current = state.current()
    g.records = len(records)
    try:
        scored = served.scorer.score(model, records, strict=current.settings.strict_fields)
    except ModelOutputError as exc:
        current.metrics.invalid_output(served.name, model.version, len(exc.rows))
        current.log.event("invalid_model_output", logging.ERROR, request_id=request_id(), model=served.name,
                          model_version=model.version, output=exc.output, rows=exc.rows[:100], records=len(records))
        raise
    g.warnings = scored.warnings
    return scored


def record(served: Served, model: Model, records: list[Any], scored: Scored) -> None:
    """An answered request, once its body is serialised: metrics, the model's drift window, the prediction log."""
    current = state.current()
    current.metrics.predicted(served.name, len(records), model.version, scored.warnings)
    served.monitor.observe(model, records)
    if current.predlog is not None:
        current.predlog.record(model, records, scored)


@bp.post("/feedback")
@bp.post("/models/<name>/feedback")
def feedback(name: str | None = None) -> Response:
    """Labels observed after the fact, for logged predictions (see :func:`.predlog.store_feedback`).

    Each label is checked against the model that made its logged prediction; one
    not logged yet, against the addressed model (the only one, or ``NAME``'s).
    """
    current = state.current()
    if current.predlog is None:
        raise predlog.PredictionLogOff()
    addressed = held(current.served(name)) if name is not None or len(current.models) == 1 else None
    models = {served.name: served.holder.model for served in current.models.values()}
    return jsonio.response(predlog.store_feedback(current.predlog, request, max_entries=current.settings.max_records,
                                                  models=models, addressed=addressed))
