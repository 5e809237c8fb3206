"""JSON on the wire: strict RFC 8259 parsing of request bodies, and JSON responses.

Scope: bytes <-> Python values. Bodies are parsed once with orjson, which
accepts only standard JSON. When it refuses a body, the standard library parses
it again only to say why: a non-UTF-8 body or broken JSON is a 400, while a
body that is JSON apart from ``NaN``/``Infinity`` literals, huge exponents or
lone surrogates is returned with ``strict=False`` so that the caller reports
each offending record and field (422) instead of a bare syntax error. Text
from the client that goes back in an answer (a field name) passes through
:func:`text`, so a lone surrogate can never make an answer unserialisable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response
from werkzeug.exceptions import BadRequest

MIMETYPE = "application/json"


@dataclass(frozen=True)
class Parsed:
    """A parsed body; ``strict`` is False when it used non-standard literals (NaN, Infinity)."""

    value: Any
    strict: bool = True
    constants: bool = False


def loads(data: bytes) -> Parsed:
    """Parse a request body, raising BadRequest (400) with the reason when it is not JSON."""
    try:
        return Parsed(orjson.loads(data))
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"The body is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); send JSON encoded as UTF-8."
        ) from None
    seen: list[str] = []

    def constant(name: str) -> float:
        seen.append(name)
        return float(name)

    try:
        value = json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError):  # ValueError covers JSONDecodeError and 4300+ digit integers
        raise BadRequest(f"The body is not valid JSON: {reason}.") from None
    return Parsed(value, strict=False, constants=bool(seen))


def text(value: str) -> str:
    """``value`` as valid Unicode: a lone surrogate (which UTF-8 cannot encode) becomes its escape, ``\\ud800``."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response, serialised here (orjson raises on what JSON cannot hold; NaN becomes null).

    Predictions never hold NaN (:class:`blackbox.errors.ModelOutputError`); a NaN
    elsewhere (an unset drift gauge) is null.
    """
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status, headers=headers, mimetype=MIMETYPE)
