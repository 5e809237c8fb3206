"""JSON on the wire: strict RFC 8259 parsing of request bodies, and JSON responses.

Scope: bytes <-> Python values. Bodies are parsed once with orjson, which
accepts only standard JSON. When it refuses a body, the standard library parses
it again only to say why: a non-UTF-8 body or broken JSON is a 400, while a
body that is JSON apart from ``NaN``/``Infinity`` literals, huge exponents or
lone surrogates is returned with ``strict=False`` so that the caller reports
each offending record and field (422) instead of a bare syntax error. Text
from the client that goes back in an answer (a field name) passes through
:func:`text`, so a lone surrogate can never make an answer unserialisable.

A key repeated in one object is a 400 naming the key and the object (parsers
disagree on which copy wins, so a proxy or an audit log could read another
record than the model). orjson keeps the last copy silently, so a cheap test
decides when to look: each member of an object has exactly one ``:`` outside
strings, and re-serialising the parsed value keeps every string, so a body
whose ``:`` count equals its re-serialisation's has dropped no member. Only
when the counts differ (a repeat, or a ``\u003a`` escape) is the body parsed
again by the standard library, which sees every pair.

A body may nest at most :data:`MAX_DEPTH` levels of arrays and objects (records
are flat objects; orjson parses 1024 levels but serialises only 254, and the
standard library's parser runs out of stack before that): deeper is a 400
naming the limit, checked right after the parse. Only a body with more than
:data:`MAX_DEPTH` opening brackets is walked for its depth, so a single record
costs two byte counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response
from werkzeug.exceptions import BadRequest

MIMETYPE = "application/json"
_ESCAPED_COLON = re.compile(rb"\\u003[aA]")
MAX_DEPTH = 64
"""Levels of arrays and objects a body may nest (a record in ``{"records": [...]}`` is at level 3)."""


@dataclass(frozen=True)
class Parsed:
    """A parsed body; ``strict`` is False when it used non-standard literals (NaN, Infinity)."""

    value: Any
    strict: bool = True
    constants: bool = False


def loads(data: bytes) -> Parsed:
    """Parse a request body, raising BadRequest (400) with the reason when it is not JSON."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
    else:
        _check_depth(data, value)
        if data.count(b":") != orjson.dumps(value).count(b":") or _ESCAPED_COLON.search(data):
            _loads_checked(data)  # raises on a repeated key
        return Parsed(value)
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
        value = _loads_checked(text, parse_constant=constant)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # JSONDecodeError and 4300+ digit integers
        raise BadRequest(f"The body is not valid JSON: {reason}.") from None
    _check_depth(data, value)
    return Parsed(value, strict=False, constants=bool(seen))


def _check_depth(data: bytes, value: Any) -> None:
    """BadRequest when ``value`` nests deeper than :data:`MAX_DEPTH` (walked only when its brackets could)."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return
    pending: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
                       if isinstance(child, (dict, list)))


def _too_deep() -> BadRequest:
    return BadRequest(
        f"The body nests arrays and objects more than {MAX_DEPTH} levels deep, this server's limit; "
        "send records as flat objects."
    )


class _Repeated(dict):  # type: ignore[type-arg]
    """An object in which ``key`` appeared more than once (found by :func:`_reject_repeats`)."""

    key: str


def _loads_checked(data: str | bytes, **options: Any) -> Any:
    """The standard library's parse, seeing every pair: BadRequest for a repeated key."""
    repeats: list[_Repeated] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) == len(items):
            return obj
        seen: set[str] = set()
        repeated = _Repeated(obj)
        repeated.key = next(key for key, _ in items if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        repeats.append(repeated)
        return repeated

    value = json.loads(data, object_pairs_hook=pairs, **options)
    if repeats:
        _reject_repeats(value)
    return value


def _reject_repeats(value: Any) -> None:
    """BadRequest naming the first repeated key (depth first) and the path of its object."""
    for path, item in _walk(value):
        if isinstance(item, _Repeated):
            where = f"the object at {path[:100]}" if path else "the body's top-level object"
            raise BadRequest(
                f'The key "{text(item.key)[:40]}" appears more than once in {where}; '
                "send each key once (JSON parsers disagree on which copy counts)."
            )


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    """(path, value) for every object and list, iteratively (bodies may nest deeply): ``records[1]``."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, dict):
            yield path, item
            pending.extend((f"{path}.{text(str(k))[:40]}" if path else text(str(k))[:40], v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            pending.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))


def text(value: str) -> str:
    """``value`` as valid Unicode: a lone surrogate (which UTF-8 cannot encode) becomes its escape, ``\\ud800``."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response, serialised here (orjson raises on what JSON cannot hold; NaN becomes null).

    Predictions never hold NaN (:class:`blackbox.errors.ModelOutputError`); a NaN
    elsewhere (an unset drift gauge) is null.
    """
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status, headers=headers, mimetype=MIMETYPE)
