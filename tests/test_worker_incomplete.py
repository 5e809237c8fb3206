"""Requests that stop short, and bodies the app never reads, against the real ``blackbox serve`` (serving/worker.py).

One server on 127.0.0.1 per worker class (the default ThreadWorker, and SyncWorker with ``--threads 1``), 1 worker,
a 2 s read timeout and a 6 s gunicorn ``--timeout``: a slow client gets the JSON 408 well before the worker could be
killed for it. Each case is a raw request on its own socket, every read bounded.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from _helpers import Server, call, received

pytestmark = pytest.mark.slow
READ_TIMEOUT = 2
WORKER_TIMEOUT = 6


@pytest.fixture(scope="module", params=[[], ["--threads", "1"]], ids=["threads", "sync"])
def server(request, served_artifact, serving_keys, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("worker-incomplete") / "server.log"
    running = Server([str(served_artifact), "--host", "127.0.0.1", "--workers", "1", *request.param,
                      "--timeout", str(WORKER_TIMEOUT), "--request-timeout", "3", "--read-timeout", str(READ_TIMEOUT),
                      "--trusted-keys", str(serving_keys[1])], log)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def answers(sock: socket.socket, seconds: float = 8) -> bytes:
    """Everything the server sends on ``sock`` until it closes (or ``seconds`` pass: a hang)."""
    return received(sock, seconds)


def statuses(data: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def exchange(server: Server, request: bytes, *, half_close: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return answers(sock)


def test_a_slow_client_gets_a_408_and_the_worker_serves_others(server):
    # A request line and one header, then nothing (the connection left open), and another that trickles headers.
    partial = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    trickling = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    stop = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(OSError):
            trickling.sendall(b"GET /ready HTTP/1.1\r\n")
            while not stop.wait(0.5):
                trickling.sendall(b"X-Slow: a\r\n")

    sender = threading.Thread(target=trickle, daemon=True)
    begun = time.monotonic()
    try:
        partial.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n")
        sender.start()
        time.sleep(0.3)
        # The sync worker takes it after the slow ones (each: the read timeout, then gunicorn's 2 s linger).
        assert call(server.url + "/health", timeout=20)[0] == 200
        first, second = answers(partial, 10), answers(trickling, 10)
    finally:
        stop.set()
        sender.join()
        partial.close()
        trickling.close()
    for got in (first, second):
        assert statuses(got) == [408] and b'"code":"request_timeout"' in got, got[:300]
    time.sleep(max(0.0, begun + WORKER_TIMEOUT + 2 - time.monotonic()))  # past gunicorn's --timeout
    assert call(server.url + "/health", timeout=5)[0] == 200
    log = server.log.read_text()
    assert "WORKER TIMEOUT" not in log and "Traceback" not in log, log[-3000:]


CHUNKED = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("body", [
    b"ZZ\r\nabc\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"3\r\nabc\r\n0\r\nBad Trailer\r\n\r\n",
], ids=["bad-size", "no-terminator", "bad-trailer"])
def test_a_malformed_chunked_body_the_app_never_reads_gets_one_answer_then_the_connection_closes(server, body):
    # No Content-Type: the app answers 415 without reading the body; gthread then drained it and answered again.
    got = exchange(server, CHUNKED + body)
    assert len(statuses(got)) == 1 and 400 <= statuses(got)[0] < 500, got[:600]
    if body != b"3\r\nabc\r\n0\r\nBad Trailer\r\n\r\n":  # bad framing is refused before the app, with Connection: close
        assert statuses(got) == [400] and b"\r\nConnection: close\r\n" in got and b"chunk" in got, got[:600]


def test_a_malformed_request_line_is_answered_at_once(server):
    # HTTP/0.9 (no version): the default worker waited for the end of a head that never comes, then sent a 408.
    got = exchange(server, b"GET /ready\r\n")
    assert statuses(got) == [400] and b'"code":"malformed_body"' in got and b"request line" in got, got[:400]


@pytest.mark.parametrize("request_bytes, said", [
    (b"GET /ready\r\n", b"request line"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"Age\": 3}",
     b"ended after 10 of the 100 bytes"),
], ids=["http-0.9", "short-body"])
def test_a_request_cut_short_by_a_half_close_is_answered_then_closed(server, request_bytes, said):
    # The default worker closed such connections without an answer.
    got = exchange(server, request_bytes, half_close=True)
    assert statuses(got) == [400] and said in got and b"\r\nConnection: close\r\n" in got, got[:400]
