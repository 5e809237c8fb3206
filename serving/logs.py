"""Structured log lines: one per request, plus start-up events.

Scope: rendering and emitting. Each event is exactly one line, as JSON or as
``key=value`` text; every string is JSON-escaped in both formats, so a value
holding a newline (a path, a request id, a traceback) can never forge a second
line; non-ASCII is escaped too, since U+2028 and NEL end a line for some readers.
Request bodies and API keys are never logged.

Lines go through the ``serving`` logger, so a host that configures logging
(handlers, filters, levels, pytest's ``caplog``) gets every line as a record.
Every request has a line, so the default set-up is kept cheap: the handler this
module installs when the logger has none writes each line to stderr in one
``write(2)`` and takes no lock (threads never wait for one another's line; on a
pipe, lines up to its atomic size, 4 KiB, never interleave), and while that
handler is the only one a line can reach, no ``LogRecord`` is made for it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any

import orjson

LOGGER = logging.getLogger("serving")
_LEVELS = {level: logging.getLevelName(level).lower() for level in (10, 20, 30, 40, 50)}


class RequestLog:
    """Writes events in one format to the ``serving`` logger (stderr unless the host configured it)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        if not LOGGER.handlers:
            LOGGER.addHandler(LineHandler(sys.stderr))
            LOGGER.setLevel(logging.INFO)
        self._stamp = (0, "")  # (a second, its ISO text): one strftime a second, not one a line

    def event(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        """Emit one line: timestamp, level, event name, process id, then the fields in the order given (None: left out)."""
        if not LOGGER.isEnabledFor(level):
            return
        line = {"ts": self._now(), "level": _LEVELS.get(level) or logging.getLevelName(level).lower(), "event": event,
                "pid": os.getpid()}
        for key, value in fields.items():
            if value is not None:
                line[key] = value
        text = self.render(line)
        handler = _sole_handler(level)
        if handler is not None:
            handler.write(text)
        else:  # the host's handlers (or filters) are in play: a real record, without findCaller's stack walk
            LOGGER.handle(LOGGER.makeRecord(LOGGER.name, level, __file__, 0, text, (), None, "event"))

    def render(self, line: dict[str, Any]) -> str:
        if self.fmt == "json":
            return _json(line)
        return " ".join(f"{key}={_text(value)}" for key, value in line.items())

    def _now(self) -> str:
        """UTC now as ``2026-03-01T12:00:00.123Z`` (what ``datetime.isoformat(timespec="milliseconds")`` gives)."""
        now = time.time()
        second = int(now)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{stamp[1]}.{int((now - second) * 1000):03d}Z"


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Each message as one line, in one ``write(2)`` on the stream's file descriptor, with no lock.

    A stream without a descriptor (or one that buffers whole blocks) gets the
    line through its own ``write`` and ``flush``.
    """

    terminator = "\n"

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._fd: int | None = None
        try:
            if getattr(stream, "line_buffering", False) or getattr(stream, "write_through", False):
                self._fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
            self._fd = None

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record))
        except Exception:  # noqa: BLE001  logging's own rule: a broken log never breaks the caller
            self.handleError(record)

    def write(self, message: str) -> None:
        """Write ``message`` and a newline (a line stderr refuses is dropped: a request never fails for its log line)."""
        if self._fd is None:
            self.stream.write(message + self.terminator)
            self.stream.flush()
            return
        data = (message + self.terminator).encode("utf-8", "backslashreplace")
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError:  # stderr closed: nowhere left to say so, as logging.Handler.handleError finds too
            return


def _sole_handler(level: int) -> LineHandler | None:
    """The installed :class:`LineHandler` when it is the only handler a ``serving`` line reaches and nothing filters it."""
    handlers = LOGGER.handlers
    if len(handlers) != 1 or LOGGER.filters or (LOGGER.propagate and logging.root.handlers):
        return None
    handler = handlers[0]
    return handler if type(handler) is LineHandler and not handler.filters and handler.level <= level else None


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
