"""Prediction routes: ``POST /predict``, the MLflow-compatible ``POST /invocations``, and ``POST /feedback``.

Scope: HTTP glue. Both routes read the body into records (:mod:`.payloads`),
score them in one call (:class:`.inference.Scorer`) with the model read once from
the holder, and answer ``{"predictions", "probabilities", "classes", "model",
"warnings", "request_id"}``; ``predictions`` is also what MLflow clients read.

Only a request that is answered 200 is recorded (prediction metrics, drift
window, prediction log), and only once its body is serialised: an answer that
cannot be sent records nothing. A model answering NaN or infinity is logged
(``invalid_model_output``, with the request id and rows) and counted before the
error reaches the client.
"""

from __future__ import annotations

import logging
from typing import Any

from blackbox.errors import ModelOutputError
from flask import Blueprint, Response, g, request

from . import jsonio, payloads, predlog, state
from .lifecycle import request_id

bp = Blueprint("api", __name__)


@bp.post("/predict")
def predict() -> Response:
    return _predict(payloads.native)


@bp.post("/invocations")
def invocations() -> Response:
    return _predict(payloads.invocation)


def _predict(shape: payloads.Shape) -> Response:
    current = state.current()
    model = current.holder.require()
    g.model_version = model.version
    records = payloads.read_records(request, shape, max_records=current.settings.max_records)
    g.records = len(records)
    try:
        scored = current.scorer.score(model, records, strict=current.settings.strict_fields)
    except ModelOutputError as exc:
        current.metrics.invalid_output(model.version, len(exc.rows))
        current.log.event("invalid_model_output", logging.ERROR, request_id=request_id(), model_version=model.version,
                          output=exc.output, rows=exc.rows[:100], records=len(records))
        raise
    g.warnings = scored.warnings
    body: dict[str, Any] = {"predictions": scored.predictions}
    if scored.probabilities is not None:
        body["probabilities"] = scored.probabilities
    if model.classes is not None:
        body["classes"] = model.classes
    body["model"] = {"name": model.name, "version": model.version, "sha256": model.sha256}
    body["warnings"] = scored.warnings
    body["request_id"] = request_id()
    response = jsonio.response(body)  # before recording: an answer that cannot be serialised records nothing
    current.metrics.predicted(len(records), model.version, scored.warnings)
    current.monitor.observe(model, records)
    if current.predlog is not None:
        current.predlog.record(model, records, scored)
    return response


@bp.post("/feedback")
def feedback() -> Response:
    """Labels observed after the fact, for logged predictions (see :func:`.predlog.store_feedback`)."""
    current = state.current()
    return jsonio.response(predlog.store_feedback(current.predlog, request, max_entries=current.settings.max_records))
