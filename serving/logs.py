"""Structured log lines: one per request, plus start-up events.

Scope: rendering and emitting. Each event is exactly one line, as JSON or as
``key=value`` text; every string is JSON-escaped in both formats, so a value
holding a newline (a path, a request id, a traceback) can never forge a second
line; non-ASCII is escaped too, since U+2028 and NEL end a line for some readers.
Request bodies and API keys are never logged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Any

import orjson

LOGGER = logging.getLogger("serving")


class RequestLog:
    """Writes events in one format to the ``serving`` logger (stderr unless the host configured it)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        if not LOGGER.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            LOGGER.addHandler(handler)
            LOGGER.setLevel(logging.INFO)

    def event(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        """Emit one line: timestamp, level, event name, process id, then the fields in the order given (None: left out)."""
        if not LOGGER.isEnabledFor(level):
            return
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = {"ts": now, "level": logging.getLevelName(level).lower(), "event": event, "pid": os.getpid()}
        line.update((key, value) for key, value in fields.items() if value is not None)
        LOGGER.log(level, self.render(line))

    def render(self, line: dict[str, Any]) -> str:
        if self.fmt == "json":
            return _json(line)
        return " ".join(f"{key}={_text(value)}" for key, value in line.items())


def _text(value: Any) -> str:
    """A value for ``key=value`` text: bare when it is a plain token, JSON-quoted otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    text = value if isinstance(value, str) else _json(value)
    if text and text.isascii() and text.isprintable() and not any(c in text for c in ' "='):
        return text
    return _json(text)


def _json(value: Any) -> str:
    """Compact JSON, non-ASCII escaped: orjson when it gives ASCII (~10x cheaper; every request has a line), else json."""
    try:
        text = orjson.dumps(value, default=str).decode()
    except TypeError:  # what orjson refuses (a lone surrogate, an int beyond 64 bits, a non-string key): json decides
        text = ""
    if text and text.isascii():
        return text
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)
