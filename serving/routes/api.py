"""Prediction routes: ``POST /predict`` and the MLflow-compatible ``POST /invocations``.

Scope: HTTP glue. With several models, ``/models/{name}/predict`` and
``/models/{name}/invocations`` address one (the bare routes answer 404 naming
them); with one, both forms work. :func:`held`, :func:`score` and :func:`record`
are the one scoring path, which :mod:`.v2` uses too. Both routes read the body into records (:mod:`serving.payloads`),
score them in one call (:class:`serving.inference.Scorer`) with the model read once from
the holder, and answer ``{"predictions", "probabilities", "classes", "model",
"warnings", "request_id"}`` (``model``: :func:`serving.holder.identity`); ``predictions`` is also what MLflow clients read.

Only a request that is answered 200 is recorded (prediction metrics, drift
window, prediction log), and only once its body is serialised: an answer that
cannot be sent records nothing. The prediction log gets the request's facts
(request id, key id, latency, time) as arguments from here. A model answering NaN or infinity is logged
(``invalid_model_output``, with the request id and rows) and counted before the
error reaches the client.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from flask import Blueprint, Response, g, request

from blackbox import Model
from blackbox.errors import ModelOutputError

from .. import jsonio, payloads
from ..holder import identity
from ..inference import Scored
from ..lifecycle import request_id
from ..state import Served
from . import current

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
    state = current()
    served = state.served(name)
    model = held(served)
    records = payloads.read_records(request, shape, max_records=state.settings.max_records)
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


def held(served: Served) -> Model:
    """The model ``served`` holds now (503 when none), read once for the whole request and named in its log line."""
    g.model_name = served.name
    model = served.holder.require()
    g.model_version = model.version
    return model


def score(served: Served, model: Model, records: list[Any]) -> Scored:
    """Validate and predict ``records`` with ``model`` in its own scorer; an invalid output is logged and counted, then raised."""
    state = current()
    g.records = len(records)
    try:
        scored = served.scorer.score(model, records, strict=state.settings.strict_fields)
    except ModelOutputError as exc:
        state.metrics.invalid_output(served.name, model.version, len(exc.rows))
        state.log.event("invalid_model_output", logging.ERROR, request_id=request_id(), model=served.name,
                        model_version=model.version, output=exc.output, rows=exc.rows[:100], records=len(records))
        raise
    g.warnings = scored.warnings
    return scored


def record(served: Served, model: Model, records: list[Any], scored: Scored) -> None:
    """An answered request, once its body is serialised: metrics, the model's drift window, the prediction log."""
    state = current()
    state.metrics.predicted(served.name, len(records), model.version, scored.warnings)
    served.monitor.observe(model, records)
    if state.predlog is not None:
        state.predlog.record(
            model, records, scored, request_id=request_id(), client_id=g.get("key_id"),
            latency_ms=(time.perf_counter() - g.get("started", time.perf_counter())) * 1000,
            ts=dt.datetime.now(dt.UTC),
        )
