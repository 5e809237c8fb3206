"""Open Inference Protocol v2 REST routes (KServe, Triton, Seldon clients) over the served models.

Scope: the protocol's shapes, mapped onto the same models, scorers and schema
as ``/predict``. Routes: ``GET /v2`` (server metadata), ``/v2/health/live``,
``/v2/health/ready`` (200 when every model is ready, else 503), and per model
``GET /v2/models/{name}[/versions/{version}]`` (metadata generated from the
schema), ``.../ready`` (200 or 503) and ``POST .../infer``. A version other
than the one served is 404, as is an unknown model.

Tabular input is one tensor per column, MLServer's ``content_type: "pd"``
convention: ``{"name": column, "shape": [N] or [N, 1], "datatype", "data"}``,
``data`` flat or nested. Every element must be of its declared datatype
(integers for INT*/UINT*, numbers for FP*, booleans for BOOL, strings for
BYTES); JSON null is a missing value, and so is NaN in an FP tensor (what a
numpy client sends for one). Element ``i`` of every tensor makes record ``i``,
which the model's schema then validates exactly as for ``/predict``, so the
field-level problems are the same. Outputs: ``predict`` (shape ``[N]``) and,
for classifiers, ``predict_proba`` (shape ``[N, n_classes]``, FP64, columns in
the order of the metadata's ``classes`` parameter); ``outputs`` in the request
picks among them. The response echoes ``id`` (our request id when none was
sent) and carries the payload sha256 (``payload_sha256``, and as ``sha256`` for
older clients), the request id and any input warnings (a JSON string) in ``parameters``.

Errors have the spec's form ``{"error": "message"}`` (plus our ``details``
entries and ``request_id``); a malformed request or records the schema refuses
are 400, as the spec asks, and the other statuses are those of
:mod:`serving.errors`. Not supported, and refused with a 400 that says so: the binary
tensor data extension (send JSON data: tritonclient's ``binary_data=False``),
one 2-D tensor for the whole table, shared memory. Auth is that of the
matching native routes (:mod:`serving.auth`).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import BadRequest, NotFound, UnsupportedMediaType

from blackbox import Model, SchemaError
from blackbox.errors import problem as _problem

from .. import errors, jsonio
from ..http_errors import TooManyRecords
from ..lifecycle import request_id
from . import api, current, ops

bp = Blueprint("v2", __name__, url_prefix="/v2")

INTEGERS = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
FLOATS = frozenset({"FP16", "FP32", "FP64"})
DATATYPES = INTEGERS | FLOATS | {"BOOL", "BYTES"}
INTEGER_RANGES = {
    t: (0, 2 ** int(t[4:]) - 1) if t.startswith("U") else (-(2 ** (int(t[3:]) - 1)), 2 ** (int(t[3:]) - 1) - 1)
    for t in INTEGERS
}
"""What each integer datatype holds: an element outside it is not that datatype (INT8 300 is refused)."""
FLOAT_MAX = {"FP16": 65504.0, "FP32": 3.4028234663852886e38, "FP64": sys.float_info.max}
KIND_DATATYPES = {"integer": "INT64", "number": "FP64", "boolean": "BOOL", "string": "BYTES", "category": "BYTES"}
TABULAR = ("pd", None)
SHOWN = 100
"""Bad elements listed per tensor before the rest are summed up."""


@bp.errorhandler(Exception)
def error(exc: Exception) -> Response:
    """The app's error (logged and counted as for any route), in the spec's ``{"error": "..."}`` form; 422 becomes 400."""
    native = errors.handle(exc)
    body = native.get_json()["error"]
    status = 400 if native.status_code == 422 else native.status_code
    answer = {"error": body["message"] + _problems(body["details"]), "details": body["details"], "request_id": request_id()}
    headers = {k: v for k, v in native.headers.items() if k.lower() not in ("content-type", "content-length")}
    return jsonio.response(answer, status, headers)


@bp.get("")
def server_metadata() -> Response:
    return jsonio.response({"name": "blackbox", "version": importlib.metadata.version("blackbox"), "extensions": []})


@bp.get("/health/live")
def server_live() -> Response:
    return jsonio.response({"live": True})


@bp.get("/health/ready")
def server_ready() -> Response:
    ready = all(ops.not_ready(served) is None for served in current().models.values())
    return jsonio.response({"ready": ready}, 200 if ready else 503)


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    served = current().served(name)
    model = _version(api.held(served), version)
    inputs = [{"name": f.name, "datatype": KIND_DATATYPES.get(f.kind, "BYTES"), "shape": [-1]} for f in model.schema.fields]
    body: dict[str, Any] = {
        "name": served.name, "versions": [model.version], "platform": "blackbox", "inputs": inputs,
        "outputs": [{"name": "predict", "datatype": _predict_datatype(model), "shape": [-1]}],
        "parameters": {"content_type": "pd", "payload_sha256": model.sha256, "sha256": model.sha256},
    }
    if model.has_proba and model.classes:
        body["outputs"].append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(model.classes)]})
        body["parameters"]["classes"] = json.dumps(model.classes)
    return jsonio.response(body)


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    served = current().served(name)
    model = served.holder.model
    if model is not None and version is not None:
        _version(model, version)
    ready = ops.not_ready(served) is None
    return jsonio.response({"name": served.name, "ready": ready}, 200 if ready else 503)


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    state = current()
    served = state.served(name)
    model = _version(api.held(served), version)
    body = _body()
    records = _records(body, state.settings.max_records)
    wanted = _wanted_outputs(body, model)
    scored = api.score(served, model, records)
    outputs = []
    if "predict" in wanted:
        outputs.append({"name": "predict", "datatype": _datatype(scored.predictions, _predict_datatype(model)),
                        "shape": [len(records)], "data": scored.predictions})
    if "predict_proba" in wanted and scored.probabilities is not None:
        width = len(scored.probabilities[0]) if scored.probabilities else len(model.classes or ())
        outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [len(records), width],
                        "data": [p for row in scored.probabilities for p in row]})
    parameters: dict[str, Any] = {"payload_sha256": model.sha256, "sha256": model.sha256, "request_id": request_id()}
    if scored.warnings:
        parameters["warnings"] = json.dumps(scored.warnings)
    given = body.get("id")
    answer = {"model_name": served.name, "model_version": model.version,
              "id": given if isinstance(given, str) else request_id(), "parameters": parameters, "outputs": outputs}
    response = jsonio.response(answer)  # before recording, as /predict
    api.record(served, model, records, scored)
    return response


def _version(model: Model, version: str | None) -> Model:
    if version is not None and version != model.version:
        raise NotFound(f"Model {model.name!r} has no version {version[:100]!r} here; this server serves {model.version}.")
    return model


def _body() -> dict[str, Any]:
    """The request as JSON (no Content-Type, as tritonclient sends it, or application/json)."""
    if request.headers.get("Inference-Header-Content-Length"):
        raise BadRequest("The binary tensor data extension is not supported: send the tensors as JSON data "
                         "(tritonclient: set_data_from_numpy(array, binary_data=False), and "
                         "InferRequestedOutput(name, binary_data=False)).")
    if request.mimetype not in ("", jsonio.MIMETYPE):
        raise UnsupportedMediaType(f"Send the body as application/json (UTF-8); got {request.content_type[:100]}.")
    body = jsonio.loads(request.get_data(cache=False)).value
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise _invalid("The request is not an inference request.", None, "shape",
                       'an object {"inputs": [{"name", "shape", "datatype", "data"}, ...]}', _describe(body))
    content_type = (body.get("parameters") or {}).get("content_type") if isinstance(body.get("parameters"), dict) else None
    if content_type not in TABULAR:
        raise _invalid(f"content_type {str(content_type)[:40]!r} is not supported.", None, "content_type",
                       'one tensor per column (content_type "pd", or none)', str(content_type)[:40])
    return body


def _records(body: dict[str, Any], max_records: int) -> list[dict[str, Any]]:
    """One record per row from the column tensors; SchemaError naming the tensor and element for any bad one."""
    columns: dict[str, list[Any]] = {}
    problems: list[dict[str, Any]] = []
    rows: int | None = None
    for position, tensor in enumerate(body["inputs"]):
        where = tensor.get("name") if isinstance(tensor, dict) else None
        if not isinstance(where, str):
            problems.append(_problem(None, f"inputs[{position}]", "shape", 'a tensor {"name", "shape", "datatype", "data"}',
                                     _describe(tensor)))
            continue
        if where in columns:
            problems.append(_problem(None, where, "duplicate", "each column once", "a second tensor of that name"))
            continue
        found, bad = _tensor(tensor, where)
        if bad:
            problems += bad
            continue
        if rows is not None and len(found) != rows:
            problems.append(_problem(None, where, "shape", f"{rows} elements, as the first tensor", f"{len(found)} elements"))
            continue
        rows = len(found)
        columns[where] = found
    if problems:
        raise SchemaError(f"{len(problems)} problem(s) in the request's input tensors.", problems)
    assert rows is not None
    if rows > max_records:
        raise TooManyRecords(
            f"The request has {rows} records; this server takes at most {max_records} per request. Split the batch.",
            [_problem(None, None, "too_many_records", f"at most {max_records} records", f"{rows} records")],
        )
    return [{name: values[row] for name, values in columns.items()} for row in range(rows)]


def _tensor(tensor: dict[str, Any], name: str) -> tuple[list[Any], list[dict[str, Any]]]:
    """A column tensor's values, one per row, and the problems with it (none: the values are good)."""
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2 or not all(type(d) is int and d >= 0 for d in shape)
            or (len(shape) == 2 and shape[1] != 1)):
        return [], [_problem(None, name, "shape", "a column's shape: [N] or [N, 1]", str(shape)[:40])]
    if datatype not in DATATYPES:
        return [], [_problem(None, name, "datatype", f"one of {', '.join(sorted(DATATYPES))}", str(datatype)[:40])]
    if not isinstance(data, list):
        return [], [_problem(None, name, "shape", "data as a list of values", _describe(data))]
    values = _flatten(data)
    if values is None or len(values) != shape[0]:
        got = "data nested deeper than [N, 1]" if values is None else f"{len(values)} elements"
        return [], [_problem(None, name, "shape", f"{shape[0]} elements, as its shape {shape} says", got)]
    problems = []
    for row, value in enumerate(values):
        if isinstance(value, float) and math.isnan(value) and datatype in FLOATS:
            values[row] = None  # NaN: numpy's missing value
        elif value is not None and not _fits(value, datatype):
            problems.append(_problem(row, name, "datatype", f"a {datatype} element", _describe(value)))
    if len(problems) > SHOWN:
        problems = [*problems[:SHOWN], _problem(None, name, "datatype", "as above", f"{len(problems) - SHOWN} more elements")]
    return values, problems


def _flatten(data: list[Any]) -> list[Any] | None:
    """Row-major values of [N] or [N, 1] data, flat or nested one level (None: nested otherwise)."""
    if not any(isinstance(item, list) for item in data):
        return list(data)
    if all(isinstance(item, list) and len(item) == 1 and not isinstance(item[0], list) for item in data):
        return [item[0] for item in data]
    return None


def _fits(value: Any, datatype: str) -> bool:
    if datatype == "BOOL":
        return isinstance(value, bool)
    if datatype == "BYTES":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if datatype in INTEGERS:
        low, high = INTEGER_RANGES[datatype]
        return isinstance(value, int) and low <= value <= high
    return isinstance(value, (int, float)) and math.isfinite(value) and abs(value) <= FLOAT_MAX[datatype]


def _wanted_outputs(body: dict[str, Any], model: Model) -> set[str]:
    available = {"predict", *(("predict_proba",) if model.has_proba and model.classes else ())}
    requested = body.get("outputs")
    if requested is None:
        return available
    names = [item.get("name") if isinstance(item, dict) else None for item in requested] if isinstance(requested, list) else [None]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise _invalid(f"Unknown output {str(unknown[0])[:40]!r}.", "outputs", "unknown_output",
                       f"outputs among {', '.join(sorted(available))}", str(unknown[0])[:40])
    return available.intersection(names)  # all of names, now known to be among them


def _predict_datatype(model: Model) -> str:
    return _datatype(list(model.classes), "BYTES") if model.classes else "FP64"


def _datatype(values: Sequence[Any], default: str) -> str:
    """The datatype of a list of JSON scalars: BOOL, INT64, FP64 or BYTES."""
    if values and all(isinstance(v, bool) for v in values):
        return "BOOL"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "FP64"
    if values and all(isinstance(v, str) for v in values):
        return "BYTES"
    return default


def _invalid(message: str, field: str | None, issue: str, expected: str, received: str) -> SchemaError:
    return SchemaError(message, [_problem(None, field, issue, expected, received)])


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return "null" if value is None else type(value).__name__


def _problems(details: list[dict[str, Any]]) -> str:
    """The field-level problems in words, for clients that read only the spec's error string."""
    shown = [
        f"{'record ' + str(d['row']) + ', ' if d.get('row') is not None else ''}"
        f"{('field ' + repr(d['field']) + ': ') if d.get('field') else ''}{d['issue']} "
        f"(expected {d['expected']}, received {d['received']})"
        for d in details[:5]
    ]
    more = f"; and {len(details) - 5} more" if len(details) > 5 else ""
    return f" Problems: {'; '.join(shown)}{more}." if shown else ""
