"""The OpenAPI 3 document of the running server, generated from the served model's schema and the app's routes.

Scope: documentation only; validation is the schema's job. Records are
described by :func:`record_schema`, from the model's schema, so a client generated from
``/openapi.json`` knows every field, its type and its allowed values without
anyone writing a line per model. The paths are the app's own ``url_map``, every
rule and method (``/models/{name}/...``, ``/v2/...`` included), so a route
cannot be served undocumented: an endpoint this module does not describe is
documented from its view's docstring. With API keys, each operation names the
scope it needs (``x-required-scope``, from :data:`serving.auth.ENDPOINT_SCOPES`)
and its 401 and 403 answers.
"""

from __future__ import annotations

import copy
import inspect
import re
from typing import Any

from flask import current_app
from werkzeug.routing import Rule

from blackbox import Model
from blackbox.schema import EXPECTED, NUMERIC_PATTERN, Schema, max_chars

from .routes.feedback import MAX_LABEL_CHARS

_REF = "#/components/schemas/"
_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def record_schema(schema: Schema) -> dict[str, Any]:
    """JSON Schema (OpenAPI 3.0) of one record; ranges and seen values are documentation, not limits."""
    properties = {}
    for field in schema.fields:
        prop: dict[str, Any] = {"type": "string" if field.kind == "category" else field.kind}
        notes = [f"Training dtype {field.dtype}."]
        if field.kind in ("string", "category"):
            prop["maxLength"] = max_chars(field)
        if field.kind == "category":
            prop["enum"] = [*(field.categories or ()), *([None] if field.nullable else [])]
        elif field.categories is not None:
            notes.append(f"Values seen in training: {', '.join(field.categories)}.")
        if field.minimum is not None:
            notes.append(f"Range seen in training: {field.minimum:g} to {field.maximum:g}.")
        if field.limit is not None:
            prop["minimum"], prop["maximum"] = -field.limit, field.limit
        if field.nullable:
            prop["nullable"] = True
            notes.append("May be null or left out: the model fills it in, and the answer warns (null_imputed, missing_imputed).")
        if field.kind in ("integer", "number"):
            text = {"type": "string", "pattern": NUMERIC_PATTERN, "description": f"{EXPECTED[field.kind]} as text, e.g. \"22\"."}
            prop = {"anyOf": [prop, text]}
        prop["description"] = " ".join(notes)
        properties[field.name] = prop
    required = [field.name for field in schema.fields if not field.nullable]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": True}


def document(model: Model, *, max_records: int, auth: bool) -> dict[str, Any]:
    """The OpenAPI 3.0 document for ``model`` behind the current app's routes and this server's limits."""
    records = {"type": "array", "items": _ref("Record"), "minItems": 1, "maxItems": max_records}
    schemas: dict[str, Any] = {
        "Record": record_schema(model.schema),
        "PredictRequest": {
            "oneOf": [_ref("Record"), records, _object({"records": records}, ["records"])],
            "description": "One record, a list of records, or {\"records\": [...]}.",
        },
        "MLflowRequest": {
            "oneOf": [
                _object({"dataframe_records": records}, ["dataframe_records"]),
                _object({"dataframe_split": _object({
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "data": {"type": "array", "items": {"type": "array", "items": {}}},
                }, ["columns", "data"])}, ["dataframe_split"]),
                _object({"instances": records}, ["instances"]),
                _object({"inputs": {"type": "object", "additionalProperties": {"type": "array", "items": {}}}}, ["inputs"]),
                _ref("PredictRequest"),
            ],
            "description": "MLflow's scoring formats, or any /predict body.",
        },
        "Issue": _object({
            "row": {"type": "integer", "nullable": True, "description": "0-based record index; null for the whole body."},
            "field": {"type": "string", "nullable": True},
            "issue": {"type": "string"},
            "expected": {"type": "string"},
            "received": {"type": "string", "description": "A description of the value, never the value itself."},
        }, ["row", "field", "issue", "expected", "received"]),
        "Prediction": _object({
            "predictions": {"type": "array", "items": _prediction(model)},
            **({"probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "classes": {"type": "array", "items": _prediction(model)}} if model.has_proba else {}),
            "model": _object({name: {"type": "string"} for name in ("name", "version", "sha256")}, ["name", "version", "sha256"]),
            "warnings": {"type": "array", "items": _ref("Issue")},
            "request_id": {"type": "string"},
        }, ["predictions", "model", "warnings", "request_id"]),
        "Feedback": {
            "oneOf": [_ref("Label"), {"type": "array", "items": _ref("Label"), "minItems": 1, "maxItems": max_records}],
            "description": "One label or a list; a later label for the same request_id and row replaces the earlier one.",
        },
        "Label": _object({
            "request_id": {"type": "string", "maxLength": 128, "description": "The request_id the prediction answered with."},
            "row": {"type": "integer", "minimum": 0, "default": 0, "description": "The record's index in that request."},
            "label": {"oneOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string", "maxLength": MAX_LABEL_CHARS}],
                      "description": "The observed outcome."},
        }, ["request_id", "label"]),
        "FeedbackAnswer": _object({
            "stored": {"type": "integer"},
            "feedback": {"type": "array", "items": _object({
                "request_id": {"type": "string"}, "row": {"type": "integer"}, "known": {"type": "boolean"},
            }, ["request_id", "row", "known"])},
            "request_id": {"type": "string"},
        }, ["stored", "feedback", "request_id"]),
        "Error": _object({
            "error": _object({
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": _ref("Issue")},
            }, ["code", "message", "details"]),
            "request_id": {"type": "string"},
        }, ["error", "request_id"]),
    }
    errors = {str(status): _answer(text, "Error") for status, text in (
        (400, "Malformed JSON body, or a key repeated in one object"), (401, "Missing or unknown API key"),
        (408, "The request did not arrive within the read timeout"),
        (413, "Body or batch over the limit"), (415, "Not application/json (UTF-8), or compressed"),
        (422, "Records that do not fit the schema; details name each record and field"),
        (500, "Failure inside the model"), (503, "No model loaded yet"),
        (504, "The model did not answer within the request timeout"),
    )}
    scoring = {"200": _answer("Predictions in input order", "Prediction"), **errors}
    schemas.update(_V2_SCHEMAS)
    operations = _operations(scoring)
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(current_app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(_path(rule.rule), {})[method.lower()] = _documented(rule, operations, auth=auth)
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": f"{model.name} prediction API", "version": model.version,
                 "description": f"Serves {model.name} {model.version} (payload sha256 {model.sha256})."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer", "description": (
            "An API key as `Authorization: Bearer KEY` (401 without a known one). Each key is granted scopes; "
            "each operation needs the one its x-required-scope names (403 without it): predict (scoring, v2 "
            "infer), feedback (labels), read (metadata, schema, this document, drift, metrics), admin (reload, and "
            "any other route). A key given without scopes has predict, feedback and read."
        )}}
        doc["security"] = [{"bearer": []}]
    return doc


def _operations(scoring: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each endpoint the app registers does and answers (a route also served as /models/{name}/... shares it)."""
    v2_errors = {str(status): _answer(text, "V2Error") for status, text in (
        (400, "A malformed request, or records the schema refuses (details name each)"),
        (404, "No such model, or another version than the one served"), (503, "The model is not loaded yet"),
    )}
    ready = {"200": {"description": "Ready"}, "503": _answer("Not ready, and why", "Error")}
    return {
        "api.predict": _operation("Predict records", scoring, body="PredictRequest"),
        "api.invocations": _operation("Predict records (MLflow-compatible)", scoring, body="MLflowRequest"),
        "feedback.feedback": _operation("Labels observed later, for logged predictions (needs --prediction-log)", {
            "200": {"description": "Stored; per entry, whether its prediction is in the log yet (it is written "
                    "asynchronously: a label for one not logged yet is kept all the same)",
                    "content": {"application/json": {"schema": _ref("FeedbackAnswer")}}},
            **{str(status): _answer(text, "Error") for status, text in (
                (400, "Malformed JSON body"), (401, "Missing or unknown API key"),
                (409, "The prediction log is off"), (422, "Entries that cannot be stored; details name each"),
                (503, "The prediction log database is unreachable"),
            )},
        }, body="Feedback"),
        "ops.health": _operation("Liveness", {"200": {"description": "Alive"}}),
        "ops.ready": _operation("Readiness: every model loaded and self-tested (with a store, each reload status)", ready),
        "ops.models": _operation("Every served model: name, version, sha256, readiness (and why not), reload status",
                                 {"200": _answer("The served models", "ModelList")}),
        "ops.model_ready": _operation("One model's readiness", {"200": _answer("Ready", "ModelEntry"),
                                                                 "503": _answer("Not ready, and why", "Error")}),
        "ops.model": _operation("The served model's manifest (without golden records and source)",
                                {"200": {"description": "Manifest"}}),
        "ops.reload": _operation("Check the followed store reference now", {
            "200": {"description": "Unchanged or swapped"}, "409": {"description": "The new target failed its checks"},
            "503": {"description": "Nothing serves yet"},
        }),
        "ops.schema": _operation("The input schema captured at training", {"200": {"description": "Schema"}}),
        "ops.openapi_json": _operation("This document", {"200": {"description": "OpenAPI 3 document"}}),
        "ops.metrics": _operation("Prometheus metrics", {"200": {"description": "Text exposition format"}}),
        "ops.drift_view": _operation("Drift of this worker's recent inputs from the training profile", {"200": {
            "description": "Per feature: PSI, unseen-category share, missing rate (live and training) and status "
            "(stable, moderate, major); or status off, no_profile or no_data with a message. Each worker "
            "answers for its own window (worker.pid, window.records).",
        }}),
        "v2.server_metadata": _operation("Open Inference Protocol v2: server metadata", {"200": {"description": "Metadata"}}),
        "v2.server_live": _operation("v2 liveness", {"200": {"description": "Live"}}),
        "v2.server_ready": _operation("v2 readiness: every model ready", {"200": {"description": "Ready"},
                                                                         "503": {"description": "Not ready"}}),
        "v2.model_metadata": _operation("v2 model metadata: one tensor per input column, from the schema",
                                        {"200": {"description": "Model metadata"}, **v2_errors}),
        "v2.model_ready": _operation("v2 model readiness", {"200": {"description": "Ready"}, **v2_errors}),
        "v2.infer": _operation("v2 inference: one tensor per column; outputs predict and predict_proba",
                               {"200": _answer("Outputs", "V2InferResponse"), **v2_errors}, body="V2InferRequest"),
    }


def _documented(rule: Rule, operations: dict[str, dict[str, Any]], *, auth: bool) -> dict[str, Any]:
    """The operation of one route: its endpoint's, or its view's docstring; path parameters; scope and auth answers."""
    from .auth import ENDPOINT_SCOPES, OPEN_ENDPOINTS  # auth reads the app's state; imported when documenting

    operation = copy.deepcopy(operations.get(rule.endpoint)) or _operation(
        _summary(current_app.view_functions[rule.endpoint]), {"200": {"description": "OK"}}
    )
    responses = operation["responses"]
    if rule.arguments:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"},
             "description": _PARAMETERS.get(name, name)} for name in sorted(rule.arguments)
        ]
        if "name" in rule.arguments:
            responses.setdefault("404", _answer("No served model has this name (GET /models lists them)", "Error"))
    if rule.endpoint in OPEN_ENDPOINTS:
        operation["security"] = []
    elif auth:
        scope = ENDPOINT_SCOPES.get(rule.endpoint, "admin")
        operation["x-required-scope"] = scope
        responses.setdefault("401", _answer("Missing or unknown API key", "Error"))
        responses["403"] = _answer(f"The API key lacks the {scope!r} scope this route needs", "Error")
    return operation


def _path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: ``<name>`` and ``<converter:name>`` become ``{name}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def _summary(view: Any) -> str:
    doc = inspect.getdoc(view) or ""
    return doc.splitlines()[0] if doc else getattr(view, "__name__", "")


def _prediction(model: Model) -> dict[str, Any]:
    """The JSON type of one prediction: the classes' type (as an enum) or a number."""
    classes = model.classes
    if not classes:
        return {"type": "number"}
    kinds = {_KINDS.get(type(c), "string") for c in classes}
    return {"type": kinds.pop(), "enum": list(classes)} if len(kinds) == 1 else {"enum": list(classes)}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def _answer(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _operation(summary: str, responses: dict[str, Any], *, body: str | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    return operation


_PARAMETERS = {"name": "The model's name (GET /models lists them)", "version": "The served version (another is 404)"}
_V2_TENSOR = _object({
    "name": {"type": "string", "description": "The column (input) or output name"},
    "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string", "enum": ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                                            "UINT64", "FP16", "FP32", "FP64", "BYTES"]},
    "data": {"type": "array", "items": {}, "description": "Flat or nested; null (or NaN in FP) is a missing value"},
}, ["name", "shape", "datatype", "data"])
_V2_SCHEMAS: dict[str, Any] = {
    "V2InferRequest": _object({
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _V2_TENSOR, "description": "One tensor per column (content_type pd)"},
        "outputs": {"type": "array", "items": _object({"name": {"type": "string", "enum": ["predict", "predict_proba"]}},
                                                      ["name"])},
    }, ["inputs"]),
    "V2InferResponse": _object({
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": {"type": "object"}, "outputs": {"type": "array", "items": _V2_TENSOR},
    }, ["model_name", "model_version", "id", "outputs"]),
    "V2Error": _object({"error": {"type": "string"}, "details": {"type": "array", "items": _ref("Issue")},
                        "request_id": {"type": "string"}}, ["error"]),
    "ModelEntry": _object({
        "name": {"type": "string"}, "version": {"type": "string", "nullable": True},
        "sha256": {"type": "string", "nullable": True}, "ready": {"type": "boolean"},
        "reason": {"type": "string"}, "reload": {"type": "object", "description": "Following a store: the last check"},
    }, ["name", "version", "sha256", "ready"]),
    "ModelList": _object({"models": {"type": "array", "items": _ref("ModelEntry")}}, ["models"]),
}
