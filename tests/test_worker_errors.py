"""Requests gunicorn's own parser refuses get our JSON error shape (serving/worker.py ``handle_error``), not its HTML.

One real ``blackbox serve`` on 127.0.0.1 (1 worker) per worker class (ours over gthread, and sync with ``--threads 1``);
each case is one raw request on its own socket.
The statuses are gunicorn's (400, 414, 431); the messages name the limit and gunicorn's setting for it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from _helpers import Server, call, received

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["4", "1"], ids=["threads", "sync"])
def server(request, served_artifact, serving_keys, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("worker-errors") / "server.log"
    running = Server([str(served_artifact), "--host", "127.0.0.1", "--workers", "1", "--threads", request.param,
                      "--read-timeout", "5", "--trusted-keys", str(serving_keys[1])], log)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def answer(server: Server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the one answer to ``request``, read until the server closes (bounded)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        data = received(sock, 10)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def get(target: str = "/health", headers: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode("latin-1")


CASES = {
    "long-uri": (get("/health?pad=" + "a" * 5000), 414, ["4094", "limit_request_line"]),
    "many-headers": (get(headers="".join(f"X-H{i}: v\r\n" for i in range(101))), 431,
                     ["100", "limit_request_fields"]),
    "large-header": (get(headers=f"X-Big: {'b' * 9000}\r\n"), 431, ["8190", "limit_request_field_size"]),
    "bad-header-name": (get(headers="Bad Name: v\r\n"), 400, ["header"]),
    "bad-header-value": (get(headers="X-Ctl: a\x01b\r\n"), 400, ["header"]),
    "bad-request-line": (b"HELLO\r\n\r\n", 400, ["request line"]),
    "bad-method": (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, ["method"]),
}


@pytest.mark.parametrize("case", CASES)
def test_requests_gunicorn_refuses_are_answered_in_our_json_shape(server, case):
    request, status, named = CASES[case]
    got, headers, body = answer(server, request)
    assert got == status, body[:300]
    assert headers["content-type"] == "application/json", body[:300]
    assert int(headers["content-length"]) == len(body)
    problem = json.loads(body)
    assert set(problem) == {"error", "request_id"} and set(problem["error"]) == {"code", "message", "details"}
    assert problem["request_id"] == headers["x-request-id"]
    message = problem["error"]["message"]
    assert all(word in message for word in named), message
    assert b"<html" not in body.lower()
    assert call(server.url + "/health")[0] == 200  # the worker lives on


def test_the_refusal_is_logged_with_its_request_id(server):
    _, headers, _ = answer(server, CASES["long-uri"][0])
    time.sleep(0.5)
    lines = [line for line in server.log.read_text().splitlines() if headers["x-request-id"] in line]
    assert lines and "414" in lines[0], server.log.read_text()[-2000:]
