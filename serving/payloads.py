"""Request bodies -> a list of raw records, for every body shape the API accepts.

Scope: content type, JSON parsing and the shape of the body; whether each
record fits the model is the schema's job (:meth:`blackbox.Model.prepare`).
``/predict`` takes one record, a list of records, or ``{"records": [...]}``;
``/invocations`` also takes MLflow's scoring formats (``dataframe_records``,
``dataframe_split``, ``instances``, ``inputs``). Shape problems raise a
:class:`blackbox.SchemaError` whose problems have the schema's
``{"row", "field", "issue", "expected", "received"}`` form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from flask import Request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

from blackbox import SchemaError
from blackbox.errors import problem as _problem

from . import jsonio
from .http_errors import BodyTimeout, TooManyRecords

Shape = Callable[[Any], list[Any]]

NATIVE = 'one record (a JSON object), a list of records, or {"records": [...]}'
MLFLOW_PARAMS = "params"
SHOWN_ROWS = 100  # per-row shape problems listed before "N more rows", as the schema does for frames


def read_records(request: Request, shape: Shape, *, max_records: int) -> list[Any]:
    """The records of a request: checked content type and encoding, size, one parse, the body's shape, the limits."""
    parsed = jsonio.loads(_body(request))
    records = shape(parsed.value)
    if len(records) > max_records:
        raise TooManyRecords(
            f"The request has {len(records)} records; this server takes at most {max_records} per request. "
            "Split the batch.",
            [_problem(None, None, "too_many_records", f"at most {max_records} records", f"{len(records)} records")],
        )
    if not parsed.strict:
        _reject_non_finite(records, parsed.constants)
    return records


def native(body: Any) -> list[Any]:
    """``/predict``: a record, a list of records, or ``{"records": [...]}``."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        return _list(body["records"], "records as a list of records") if body.keys() == {"records"} else [body]
    raise _shape_error("not_a_list", NATIVE, _describe(body))


def invocation(body: Any) -> list[Any]:
    """``/invocations``: one of MLflow's scoring formats (plus ``params``, which must be empty), else :func:`native`."""
    if not isinstance(body, dict) or not body.keys() & MLFLOW_FORMATS.keys():
        return native(body)
    extra = sorted(body.keys() - {MLFLOW_PARAMS})
    if len(extra) != 1 or body.get(MLFLOW_PARAMS):
        expected = f"exactly one of {', '.join(MLFLOW_FORMATS)} (and no params: this model takes none)"
        raise _shape_error("shape", expected, f"keys {', '.join(sorted(body))[:100]}")
    (key,) = extra
    return MLFLOW_FORMATS[key](body[key])


def dataframe_records(value: Any) -> list[Any]:
    """MLflow ``dataframe_records``: ``[{"col": value, ...}, ...]``."""
    return _list(value, "dataframe_records as a list of records")


def dataframe_split(value: Any) -> list[Any]:
    """MLflow ``dataframe_split``: ``{"columns": [...], "data": [[...], ...]}`` (``index`` is ignored)."""
    if not isinstance(value, dict) or not {"columns", "data"} <= value.keys():
        raise _shape_error("shape", 'an object {"columns": [...], "data": [[...], ...]}', _describe(value))
    columns, data = value["columns"], _list(value["data"], "dataframe_split.data as a list of rows")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise _shape_error("shape", "dataframe_split.columns as a list of field names", _describe(columns))
    bad = [row for row, values in enumerate(data) if not isinstance(values, list) or len(values) != len(columns)]
    if bad:
        expected = f"a list of {len(columns)} values"
        problems = [_problem(row, None, "shape", expected, _describe(data[row])) for row in bad[:SHOWN_ROWS]]
        if len(bad) > SHOWN_ROWS:
            problems.append(_problem(None, None, "shape", "as above", f"{len(bad) - SHOWN_ROWS} more rows"))
        raise SchemaError(f"{len(bad)} rows of dataframe_split.data do not have one value per column.", problems)
    return [dict(zip(columns, values)) for values in data]


def instances(value: Any) -> list[Any]:
    """MLflow (TF-serving row format) ``instances``: a list of records."""
    return _list(value, "instances as a list of records")


def inputs(value: Any) -> list[Any]:
    """MLflow (TF-serving columnar format) ``inputs``: ``{"col": [values...], ...}``, or a list of records."""
    if not isinstance(value, dict):
        return _list(value, "inputs as a list of records or {field: [values...]}")
    lengths = {len(column) if isinstance(column, list) else -1 for column in value.values()}
    if len(lengths) != 1 or -1 in lengths:
        raise _shape_error("shape", "inputs as {field: [values...]} with lists of equal length", _describe(value))
    return [dict(zip(value, row)) for row in zip(*value.values())]


MLFLOW_FORMATS: Mapping[str, Shape] = {
    "dataframe_records": dataframe_records,
    "dataframe_split": dataframe_split,
    "instances": instances,
    "inputs": inputs,
}


def _body(request: Request) -> bytes:
    """The raw body once its headers say uncompressed UTF-8 JSON (415 otherwise), at most the size limit (413).

    A chunked body has no Content-Length to check up front: it is read up to one
    byte past the limit, so a longer one is a 413 too, never a cut body parsed
    as broken JSON. Broken chunk framing (a size that is not hex, a chunk shorter
    than its size or without its CRLF: gunicorn's parse errors) is a 400.
    """
    environ = request.environ  # the headers read straight from it: werkzeug's parsers cost microseconds a request
    if environ.get("CONTENT_TYPE") != jsonio.MIMETYPE:  # anything but the plain header is parsed
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if request.mimetype != jsonio.MIMETYPE or charset not in ("utf-8", "utf8"):
            received = request.content_type or "no Content-Type"
            raise UnsupportedMediaType(f"Send the body as application/json (UTF-8); got {received[:100]}.")
    encoding = environ.get("HTTP_CONTENT_ENCODING", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"The body is sent with Content-Encoding {encoding[:40]}; this server reads bodies only as they are: "
            "send it uncompressed (no Content-Encoding)."
        )
    limit = request.max_content_length
    length = request.content_length
    if limit is not None and length is not None and length > limit:
        raise _too_large(limit, f"{length} bytes")
    try:
        if length is not None:  # one read of that many bytes (werkzeug's stream would read in chunks until EOF)
            data: bytes = environ["wsgi.input"].read(length)
            if len(data) < length:
                raise BadRequest(
                    f"The body ended after {len(data)} of the {length} bytes its Content-Length announced; "
                    "send the whole body."
                )
            return data
        if not environ.get("wsgi.input_terminated"):
            return request.get_data(cache=False)
        stream = environ["wsgi.input"]
        data = stream.read() if limit is None else stream.read(limit + 1)
    except TimeoutError:  # the socket's read timeout (serving/worker.py)
        raise BodyTimeout(
            "The body did not arrive within the server's read timeout (setting READ_TIMEOUT, "
            "blackbox serve --read-timeout); send the whole request at once."
        ) from None
    except (ParseException, NoMoreData) as exc:
        raise BadRequest(
            f"The chunked body is malformed ({type(exc).__name__}: {str(exc)[:100]}); send each chunk as its size in hex, "
            "CRLF, that many bytes, CRLF, and end with a zero-size chunk (or send a Content-Length instead)."
        ) from None
    if limit is not None and len(data) > limit:
        raise _too_large(limit, "a longer chunked body")
    return data


def _too_large(limit: int, received: str) -> RequestEntityTooLarge:
    return RequestEntityTooLarge(
        f"The body is over this server's limit of {limit} bytes (got {received}); send fewer records per request, "
        "or raise the limit with blackbox serve --max-body-bytes (env BLACKBOX_MAX_CONTENT_LENGTH)."
    )


def _list(value: Any, expected: str) -> list[Any]:
    if not isinstance(value, list):
        raise _shape_error("not_a_list", expected, _describe(value))
    return value


def _shape_error(issue: str, expected: str, received: str) -> SchemaError:
    return SchemaError(f"The body does not have the expected shape: expected {expected}, got {received}.", [_problem(None, None, issue, expected, received)])


def _describe(value: Any) -> str:
    """A short description of a value, never the value itself (bodies are not echoed)."""
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if value is None:
        return "null"
    return type(value).__name__


def _reject_non_finite(records: list[Any], constants: bool) -> None:
    """422 for every NaN/Infinity in the records (JSON has none; Python's parser invents them)."""
    problems = [
        _problem(row, jsonio.text(str(key))[:40], "non_finite", "a finite number (JSON has no NaN or Infinity; send null for a missing value)", "NaN or Infinity")
        for row, record in enumerate(records)
        if isinstance(record, dict)
        for key, value in record.items()
        if _non_finite(value)
    ]
    if not problems and constants:  # outside the records (e.g. in params): still not JSON
        problems = [_problem(None, None, "non_finite", "standard JSON (no NaN or Infinity literals)", "NaN or Infinity")]
    if problems:
        raise SchemaError(f"The body has NaN or Infinity in {len(problems)} places; JSON has neither: send null for a missing value.", problems)


def _non_finite(value: Any) -> bool:
    """Whether a value holds NaN or Infinity at any depth (iterative: bodies may nest deeply)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, (list, dict)):
            pending.extend(item.values() if isinstance(item, dict) else item)
    return False
