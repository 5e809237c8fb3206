"""Chunked request bodies whose framing costs more than their data, against the real ``blackbox serve``
(serving/worker.py): many tiny chunks, a long chunk-size line trickled, unbounded trailers and extensions.

One server on 127.0.0.1 per worker class (the default ThreadWorker, and SyncWorker with ``--threads 1``), 1 worker,
a 2 MB body limit and a 3 s read timeout. Each case is a raw request on its own socket, every read bounded; the
time bounds are for hangs only (before the fix these took far longer, or never got an answer).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator

import pytest

from _helpers import PASSENGER, Server, received

pytestmark = pytest.mark.slow
LIMIT = 2_000_000
HEADER_LIMIT = 64 * 1024  # serving.worker.HEADER_LIMIT
MAX_CHUNKS = 8192  # serving.worker.MAX_CHUNKS
HEAD = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


@pytest.fixture(scope="module", params=[[], ["--threads", "1"]], ids=["threads", "sync"])
def server(request, served_artifact, serving_keys, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("worker-chunks") / "server.log"
    running = Server([str(served_artifact), "--host", "127.0.0.1", "--workers", "1", *request.param,
                      "--max-body-bytes", str(LIMIT), "--read-timeout", "3", "--request-timeout", "20",
                      "--timeout", "30", "--trusted-keys", str(serving_keys[1])], log)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def statuses(data: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def chunked(body: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in
                    (body[i:i + size] for i in range(0, len(body), size))) + b"0\r\n\r\n"


def padded(length: int) -> bytes:
    """One record's JSON, padded with spaces to ``length`` bytes."""
    return json.dumps([PASSENGER]).encode().ljust(length)


def exchange(server: Server, data: bytes, seconds: float = 20) -> bytes:
    """Send ``data`` (the server may refuse and close before it is all sent) and what came back within ``seconds``."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        return received(sock, seconds)


def refused(got: bytes, status: int, *said: bytes) -> None:
    assert statuses(got) == [status] and b"\r\nConnection: close\r\n" in got, got[:600]
    for words in said:
        assert words in got, got[:600]


def test_a_body_in_as_many_chunks_as_allowed_is_served(server):
    # The largest count of the smallest chunks is within the limits (framing counts against limit + HEADER_LIMIT).
    got = exchange(server, HEAD + chunked(padded(MAX_CHUNKS), 1) + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(got)[0] == 200 and b'"predictions"' in got, got[:600]


def test_many_large_chunks_near_the_body_limit_are_served_in_bounded_time(server):
    # 8,000 chunks of 250 bytes (2 MB): gunicorn's chunk parser, handed the whole buffer, copied what remained of it
    # per chunk (~20 s of a worker; 79 s at the default 8 MB limit). Now each read it is given is a piece.
    got = exchange(server, HEAD + chunked(padded(LIMIT), LIMIT // 8000), seconds=15)
    assert statuses(got)[:1] == [200] and b'"predictions"' in got, got[:600]


def test_more_chunks_than_allowed_are_refused(server):
    # Before: read whole, re-parsed from the start on every read (quadratic); the app then answered.
    got = exchange(server, HEAD + chunked(padded(MAX_CHUNKS + 1), 1))
    refused(got, 400, b"chunks", b"Content-Length", b"8192")


def test_a_long_chunk_size_line_trickled_is_refused_at_once(server):
    # A chunk-size line over 1 KiB went to a thread that read it with a per-read timeout only: a byte every second
    # held it (the sync worker ended as a 504 worker_timeout).
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(HEAD + b"5;" + b"a" * 2000)
        stop = threading.Event()

        def trickle() -> None:
            with contextlib.suppress(OSError):
                while not stop.wait(1.0):
                    sock.sendall(b"a")

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            got = received(sock, 20)
        finally:
            stop.set()
            sender.join()
    refused(got, 400, b"chunk-size line", b"1024")


def test_unbounded_trailers_are_refused(server):
    # Before: buffered without a limit, here limit + HEADER_LIMIT + 1 bytes of trailer lines, then a 408 or worse.
    trailers = b"X-Pad: " + b"a" * 900 + b"\r\n"
    data = HEAD + b"3\r\n[1]\r\n0\r\n" + trailers * ((LIMIT + HEADER_LIMIT) // len(trailers) + 2)
    refused(exchange(server, data), 413, b"framing")


def test_chunk_extensions_count_against_the_limit(server):
    # 2 KB of data in 1 KB-extended chunks: 2 MB of framing, read whole and served before.
    chunk = b"1;e=" + b"x" * 1000 + b"\r\n \r\n"
    data = HEAD + chunk * ((LIMIT + HEADER_LIMIT) // len(chunk) + 2) + b"0\r\n\r\n"
    refused(exchange(server, data), 413, b"framing")
