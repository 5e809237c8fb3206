"""The OpenAPI 3 document of the running server, generated from the served model's schema.

Scope: documentation only; validation is the schema's job. Records are
described by :meth:`blackbox.Schema.openapi`, so a client generated from
``/openapi.json`` knows every field, its type and its allowed values without
anyone writing a line per model.
"""

from __future__ import annotations

from typing import Any

from blackbox import Model

from .predlog import MAX_LABEL_CHARS

_REF = "#/components/schemas/"
_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def document(model: Model, *, max_records: int, auth: bool) -> dict[str, Any]:
    """The OpenAPI 3.0 document for ``model`` behind this server's routes and limits."""
    records = {"type": "array", "items": _ref("Record"), "minItems": 1, "maxItems": max_records}
    schemas: dict[str, Any] = {
        "Record": model.schema.openapi(),
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
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": f"{model.name} prediction API", "version": model.version,
                 "description": f"Serves {model.name} {model.version} (payload sha256 {model.sha256})."},
        "paths": {
            "/predict": {"post": _operation("Predict records", scoring, body="PredictRequest")},
            "/invocations": {"post": _operation("Predict records (MLflow-compatible)", scoring, body="MLflowRequest")},
            "/feedback": {"post": _operation("Labels observed later, for logged predictions (needs --prediction-log)", {
                "200": {"description": "Stored; per entry, whether its prediction is in the log yet (it is written "
                        "asynchronously: a label for one not logged yet is kept all the same)",
                        "content": {"application/json": {"schema": _ref("FeedbackAnswer")}}},
                **{str(status): _answer(text, "Error") for status, text in (
                    (400, "Malformed JSON body"), (401, "Missing or unknown API key"),
                    (409, "The prediction log is off"), (422, "Entries that cannot be stored; details name each"),
                    (503, "The prediction log database is unreachable"),
                )},
            }, body="Feedback")},
            "/health": {"get": {**_operation("Liveness", {"200": {"description": "Alive"}}), "security": []}},
            "/ready": {"get": {**_operation("Readiness: model loaded and self-tested",
                                            {"200": {"description": "Ready"}, "503": _answer("Not ready", "Error")}), "security": []}},
            "/model": {"get": _operation("The served model's manifest", {"200": {"description": "Manifest"}})},
            "/schema": {"get": _operation("The input schema captured at training", {"200": {"description": "Schema"}})},
            "/openapi.json": {"get": _operation("This document", {"200": {"description": "OpenAPI 3 document"}})},
            "/metrics": {"get": _operation("Prometheus metrics", {"200": {"description": "Text exposition format"}})},
            "/drift": {"get": _operation("Drift of this worker's recent inputs from the training profile", {"200": {
                "description": "Per feature: PSI, unseen-category share, missing rate (live and training) and status "
                "(stable, moderate, major); or status off, no_profile or no_data with a message. Each worker "
                "answers for its own window (worker.pid, window.records).",
            }})},
        },
        "components": {"schemas": schemas},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc


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
