"""Hostile clients against the real ``blackbox serve`` (serving/worker.py): lingering, pipelined and 100-continue
slowloris, and requests whose framing can never complete.

One server on 127.0.0.1 (2 workers x the default threads, a 4 s read timeout, a 10 s worker timeout) serves every test of
the module; each test opens a bounded number of sockets (100, more than the threads) and closes them.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from _helpers import PASSENGER, Server, call, received

pytestmark = pytest.mark.slow
CLIENTS = 100
READ_TIMEOUT = 4


@pytest.fixture(scope="module")
def server(served_artifact, serving_keys, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    running = Server([str(served_artifact), "--host", "127.0.0.1", "--workers", "2", "--timeout", "10",
                      "--request-timeout", "5", "--read-timeout", str(READ_TIMEOUT),
                      "--trusted-keys", str(serving_keys[1])], log)
    try:
        running.wait_ready(workers=2)
        yield running
    finally:
        running.stop()


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def open_all(server: Server, sockets: list[socket.socket], payload: bytes) -> None:
    for _ in range(CLIENTS):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(payload)
        sockets.append(sock)


def served_promptly(server: Server, times: int = 4) -> None:
    """Normal clients are answered within a few seconds (generous: a hang is what fails)."""
    for _ in range(times):
        begun = time.monotonic()
        assert call(server.url + "/predict", PASSENGER, timeout=6)[0] == 200
        assert time.monotonic() - begun < 4
        time.sleep(0.3)


def read_until(sock: socket.socket, marker: bytes, seconds: float) -> bytes:
    """What the server sent on ``sock`` until ``marker`` appeared, it closed, or ``seconds`` passed."""
    return received(sock, seconds, marker)


def trickle(socks: list[socket.socket], piece: bytes, stop: threading.Event) -> threading.Thread:
    """``piece`` on every socket once a second until ``stop``."""
    def run() -> None:
        while not stop.wait(1.0):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(piece)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_clients_that_never_close_do_not_stop_the_workers(server, sockets):
    # Each sends a whole request, is answered and closed by the server, and never reads nor closes its end.
    open_all(server, sockets, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    time.sleep(1)
    served_promptly(server)
    assert all(read_until(sock, b"\r\n\r\n", 3).startswith(b"HTTP/1.1 200") for sock in sockets)
    time.sleep(8)  # past the 10 s worker timeout since the sockets were opened
    served_promptly(server, times=1)
    assert "WORKER TIMEOUT" not in server.log.read_text()


def test_a_slow_request_pipelined_behind_a_whole_one_is_buffered_by_the_loop(server, sockets):
    open_all(server, sockets, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n")
    stop = threading.Event()
    sender = trickle(sockets, b"X-Slow: a\r\n", stop)
    try:
        time.sleep(1)
        served_promptly(server)
        time.sleep(READ_TIMEOUT)
    finally:
        stop.set()
        sender.join()
    answers = [read_until(sock, b"request_timeout", 5) for sock in sockets]
    # The first request is answered, the second, still incomplete at the read timeout, gets the loop's JSON 408.
    assert all(a.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in a and b'"code":"request_timeout"' in a
               for a in answers), answers[0]
    assert "WORKER TIMEOUT" not in server.log.read_text()


def test_100_continue_is_sent_by_the_loop_and_a_slow_body_holds_no_thread(server, sockets):
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: 100000\r\n\r\n")
    open_all(server, sockets, head)
    assert all(read_until(sock, b"\r\n\r\n", 3) == b"HTTP/1.1 100 Continue\r\n\r\n" for sock in sockets)
    stop = threading.Event()
    sender = trickle(sockets, b" ", stop)
    try:
        served_promptly(server)
        time.sleep(READ_TIMEOUT)
    finally:
        stop.set()
        sender.join()
    assert all(read_until(sock, b"request_timeout", 5).startswith(b"HTTP/1.1 408") for sock in sockets)
    # A client that waits for the 100 and then sends its body is served, with one 100 Continue only.
    body = json.dumps(PASSENGER).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head.replace(b"100000", str(len(body)).encode() + b"\r\nConnection: close"))
        assert read_until(sock, b"\r\n\r\n", 3) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = read_until(sock, b"until the server closes", 5)
    assert answer.startswith(b"HTTP/1.1 200") and b"100 Continue" not in answer, answer


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /health HTTP/1.1\nHost: x\n\n", 400),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: xchunked\r\n\r\n{}",
     400),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n", 413),
], ids=["bare-LF", "xchunked", "huge-chunk"])
def test_a_request_that_can_never_complete_is_refused_at_once(server, request_bytes, status):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request_bytes)
        begun = time.monotonic()
        answer = read_until(sock, b"\r\n\r\n", READ_TIMEOUT + 3)
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer
    assert time.monotonic() - begun < READ_TIMEOUT - 1  # not the read timeout's 408


def test_a_thread_timing_out_on_a_slow_client_logs_one_warning_line(monkeypatch):
    from gunicorn.workers import gthread

    from serving.worker import ThreadWorker

    def stuck(self, req, conn):
        raise TimeoutError("timed out")

    monkeypatch.setattr(gthread.ThreadWorker, "handle_request", stuck)
    worker = ThreadWorker.__new__(ThreadWorker)  # no process: only handle_request is exercised
    worker._slow_logged = 0.0
    logged: list[tuple[str, tuple]] = []
    worker.log = type("Log", (), {"warning": lambda self, *a: logged.append(("warning", a)),
                                  "exception": lambda self, *a: logged.append(("exception", a))})()
    conn = type("Conn", (), {"client": ("127.0.0.1", 5), "read_timeout": 4.0, "ended": False})()
    assert worker.handle_request(object(), conn) is False  # the connection is closed, nothing re-raised
    assert worker.handle_request(object(), conn) is False
    assert [kind for kind, _ in logged] == ["warning"]  # one line, and the second within the second is not logged
    assert "too slow" in logged[0][1][0] and "127.0.0.1" in str(logged[0][1][1])


def test_whole_requests_pipelined_on_one_connection_are_all_answered_in_order(server):
    body = json.dumps(PASSENGER).encode()

    def request(path: bytes, last: bool = False) -> bytes:
        return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                % len(body) + (b"Connection: close\r\n" if last else b"") + b"\r\n" + body)

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        # The body of the 404 is unread by the app; the body of the Expect one comes without waiting for a 100.
        expecting = request(b"/predict").replace(b"Host: x\r\n", b"Host: x\r\nExpect: 100-continue\r\n")
        sock.sendall(request(b"/predict") + request(b"/nope") + expecting + request(b"/predict", last=True))
        answer = read_until(sock, b"until the server closes", 10)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3})", answer)
    assert statuses == [b"200", b"404", b"200", b"200"], answer[:600]
