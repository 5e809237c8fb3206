"""Prediction routes: ``POST /predict``, the MLflow-compatible ``POST /invocations``, and ``POST /feedback``.

Scope: HTTP glue. Both routes read the body into records (:mod:`.payloads`),
score them in one call (:class:`.inference.Scorer`) with the model read once from
the holder, and answer ``{"predictions", "probabilities", "classes", "model",
"warnings", "request_id"}``; ``predictions`` is also what MLflow clients read.
"""

from __future__ import annotations

from typing import Any

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
    scored = current.scorer.score(model, records, strict=current.settings.strict_fields)
    g.warnings = scored.warnings
    current.metrics.predicted(len(records), model.version, scored.warnings)
    current.monitor.observe(model, records)
    if current.predlog is not None:
        current.predlog.record(model, records, scored)
    body: dict[str, Any] = {"predictions": scored.predictions}
    if scored.probabilities is not None:
        body["probabilities"] = scored.probabilities
    if model.classes is not None:
        body["classes"] = model.classes
    body["model"] = {"name": model.name, "version": model.version, "sha256": model.sha256}
    body["warnings"] = scored.warnings
    body["request_id"] = request_id()
    return jsonio.response(body)


@bp.post("/feedback")
def feedback() -> Response:
    """Labels observed after the fact, for logged predictions (see :func:`.predlog.store_feedback`)."""
    current = state.current()
    return jsonio.response(predlog.store_feedback(current.predlog, request, max_entries=current.settings.max_records))
