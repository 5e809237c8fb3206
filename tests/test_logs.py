"""serving.logs: the line format, and the cheap default handler (one write per line, no lock, no LogRecord)."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import re
import threading

import pytest

from serving import logs
from serving.logs import LOGGER, LineHandler, RequestLog


class Piped:
    """The serving logger with only a LineHandler on a pipe (as blackbox serve's stderr); ``done()`` reads it all."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        self.stream = io.TextIOWrapper(io.FileIO(write_fd, "w"), line_buffering=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(read_fd,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with open(fd, encoding="utf-8") as lines:
            self.lines.extend(lines)

    def done(self) -> list[str]:
        self.stream.close()
        self._reader.join(30)
        return self.lines


@pytest.fixture
def piped(monkeypatch):
    pipe = Piped()
    monkeypatch.setattr(LOGGER, "handlers", [LineHandler(pipe.stream)])
    monkeypatch.setattr(LOGGER, "level", logging.INFO)
    LOGGER.manager._clear_cache()
    yield pipe
    pipe.done()
    LOGGER.manager._clear_cache()


def test_lines_from_many_threads_arrive_whole_without_making_records(piped, monkeypatch):
    def no_record(*args, **kwargs):
        raise AssertionError("a LogRecord was made although the LineHandler is the only handler")

    monkeypatch.setattr(LOGGER, "makeRecord", no_record)
    monkeypatch.setattr(logging.root, "handlers", [])  # pytest's capture handlers, added for the test's call
    log = RequestLog("json")
    path = "/p" + "x" * 1500  # lines of ~1.6 KB: several threads' writes would tear them if they were split

    def burst(n: int) -> None:
        for i in range(200):
            log.event("request", request_id=f"t{n}-{i}", path=path, status=200, key_id=None)

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    parsed = [json.loads(line) for line in piped.done()]
    assert sorted(p["request_id"] for p in parsed) == sorted(f"t{n}-{i}" for n in range(8) for i in range(200))
    first = parsed[0]
    assert list(first) == ["ts", "level", "event", "pid", "request_id", "path", "status"]  # None left out, order kept
    assert first["level"] == "info" and first["event"] == "request" and first["pid"] == os.getpid()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    stamped = dt.datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - stamped).total_seconds()) < 600


def test_a_host_filter_or_handler_gets_real_records(piped, monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])
    log = RequestLog("text")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    LOGGER.addFilter(lambda record: "secret" not in record.getMessage())
    try:
        log.event("request", logging.ERROR, path="/secret")  # filtered by the host: nowhere
        log.event("request", logging.ERROR, path="/ok")
        logging.root.addHandler(Keep())  # the host's handler: a record reaches it, and stderr still gets the line
        log.event("request", logging.WARNING, path="/both")
    finally:
        LOGGER.filters.clear()
    assert [line.split(" path=")[1].strip() for line in piped.done()] == ["/ok", "/both"]
    assert [(r.levelno, r.name) for r in seen] == [(logging.WARNING, "serving")]
    assert seen[0].getMessage().startswith("ts=") and "level=warning" in seen[0].getMessage()


def test_a_stream_without_a_descriptor_gets_whole_lines():
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.write('{"a":1}')
    handler.write('{"b":2}')
    assert stream.getvalue() == '{"a":1}\n{"b":2}\n'


def test_timestamps_are_utc_milliseconds_like_isoformat(monkeypatch):
    log = RequestLog("json")
    for now in (1_700_000_000.0, 1_700_000_000.9994, 1_700_000_001.25):
        monkeypatch.setattr(logs.time, "time", lambda now=now: now)
        expected = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert log._now() == expected
