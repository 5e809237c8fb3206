"""Three edges of the gunicorn workers' answers (serving/worker.py), against real servers on 127.0.0.1.

- Over TLS, the sync worker reads a request whole within the read timeout as over plain HTTP: a client that stalls
  mid-request gets the JSON 408, and the log no traceback (the default worker does not yet: a strict xfail).
- A request in hand when gunicorn's master kills the sync worker for its ``--timeout`` (SIGABRT) is answered with a
  JSON 504 naming that timeout, the worker still exits, and the master replaces it.
- A chunked body whose trailer is malformed gets one answer, and it says ``Connection: close`` (the server closes).

TLS has no ``blackbox serve`` option, and ``blackbox serve`` refuses a request timeout at or over the worker timeout:
those two servers are plain ``gunicorn 'serving:create_app()' -k serving.worker.SyncWorker`` (the documented other
way to run the app), configured by ``BLACKBOX_*`` variables. Every socket read is bounded.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import blackbox

from _helpers import Server, free_port, received, user_module, wait_for

pytestmark = pytest.mark.slow
READ_TIMEOUT = 2


class Gunicorn(Server):
    """Plain gunicorn serving ``serving:create_app()`` with the sync worker, one process, its output in a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], *, tls: ssl.SSLContext | None = None,
                 worker: str = "SyncWorker") -> None:
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log = log
        self.tls = tls
        self.worker = worker
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "serving:create_app()", "--bind", f"127.0.0.1:{self.port}",
                 "--workers", "1", "--worker-class", f"serving.worker.{worker}", "--no-control-socket", *args],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        connection = (http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.tls)
                      if self.tls else http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout))
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def wait_ready(self, workers: int = 1, seconds: float = 40) -> None:
        def ready() -> bool:
            try:
                return self.get("/ready", timeout=2)[0] == 200
            except OSError:
                return False
        wait_for(ready, seconds, interval=0.2, what="/ready", server=self)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return self.tls.wrap_socket(sock, server_hostname="127.0.0.1") if self.tls else sock


def statuses(data: bytes) -> list[int]:
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


# -- 1. over TLS, a stalled request on the sync worker --------------------------------------------------


def throwaway_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files), valid for a day."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


@pytest.fixture(scope="module", params=["SyncWorker", "ThreadWorker"])
def tls_server(request, served_artifact, serving_keys, tmp_path_factory) -> Iterator[Gunicorn]:
    directory = tmp_path_factory.mktemp("tls")
    certfile, keyfile = throwaway_cert(directory)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(certfile)
    running = Gunicorn(["--timeout", "6", "--certfile", str(certfile), "--keyfile", str(keyfile)],
                       directory / "server.log",
                       {"BLACKBOX_ARTIFACT": str(served_artifact), "BLACKBOX_TRUSTED_KEYS": str(serving_keys[1]),
                        "BLACKBOX_READ_TIMEOUT": str(READ_TIMEOUT)}, tls=client, worker=request.param)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def known_gap(server: Gunicorn, request: pytest.FixtureRequest) -> None:
    if server.worker == "ThreadWorker":
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "the default worker reads TLS in a thread as gthread does: a stall there is gunicorn's 'Socket error "
            "processing request.' traceback (and no answer)")))


def test_over_tls_a_stalled_request_gets_the_json_408(tls_server, request):
    known_gap(tls_server, request)
    with tls_server.connect() as sock:
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        got = received(sock, READ_TIMEOUT + 8)
    assert statuses(got) == [408] and b'"code":"request_timeout"' in got and b"--read-timeout" in got, got[:400]
    assert b"\r\nConnection: close\r\n" in got
    assert tls_server.get("/health")[0] == 200  # the worker serves on
    log = tls_server.log.read_text()
    assert "Traceback" not in log and "WORKER TIMEOUT" not in log, log[-3000:]


def test_over_tls_a_failed_or_stalled_handshake_is_closed_with_at_most_a_warning_line(tls_server, request):
    known_gap(tls_server, request)
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as plain:
        plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to the TLS port
        assert b"HTTP/1.1 200" not in received(plain, READ_TIMEOUT + 8)
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as silent:
        silent.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        assert received(silent, READ_TIMEOUT + 8) == b""
    assert tls_server.get("/health")[0] == 200
    log = tls_server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_over_tls_a_whole_request_and_an_expect_100_continue_are_served(tls_server):
    with tls_server.connect() as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        assert received(sock, 5, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        got = received(sock, 8)
    assert len(statuses(got)) == 1 and 400 <= statuses(got)[0] < 500 and b'"error"' in got, got[:400]
    assert tls_server.get("/health")[0] == 200


# -- 2. the worker timeout with a request in hand -------------------------------------------------------

SLOW_SOURCE = '''
import time

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class Slow(BaseEstimator, TransformerMixin):
    """Identity, except that input with the value 4242.5 in it makes it sleep ``seconds`` first."""

    def __init__(self, seconds=30.0):
        self.seconds = seconds

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        if (np.asarray(X, dtype=float) == 4242.5).any():
            time.sleep(self.seconds)
        return X
'''
WORKER_TIMEOUT = 4


@pytest.fixture(scope="module")
def slow_artifact(tmp_path_factory) -> Path:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    root = tmp_path_factory.mktemp("slow")
    with user_module(root, "bbx_slow_feats", SLOW_SOURCE) as module:
        rng = np.random.default_rng(0)
        X = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
        y = (X.a + X.b > 0).astype(int)
        pipeline = Pipeline([("slow", module.Slow()), ("clf", LogisticRegression())]).fit(X, y)
        return blackbox.save(pipeline, root / "slow.bbx", train_data=X, name="slow", version="1.0.0")


def worker_pids(server: Gunicorn) -> list[int]:
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", server.log.read_text())]


def test_a_request_in_hand_at_the_worker_timeout_gets_a_504_naming_it_and_the_worker_is_replaced(slow_artifact, tmp_path):
    server = Gunicorn(["--timeout", str(WORKER_TIMEOUT)], tmp_path / "server.log",
                      {"BLACKBOX_ARTIFACT": str(slow_artifact), "BLACKBOX_REQUEST_TIMEOUT": "60"})
    try:
        server.wait_ready()
        first = worker_pids(server)
        body = json.dumps({"a": 4242.5, "b": 0.0}).encode()
        with server.connect() as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            got = received(sock, WORKER_TIMEOUT + 20)
        assert statuses(got) == [504], got[:600]
        answer = json.loads(got.split(b"\r\n\r\n", 1)[1])
        assert answer["error"]["code"] == "worker_timeout", answer
        message = answer["error"]["message"]
        assert f"{WORKER_TIMEOUT} s" in message and "--timeout" in message and "too slow" in message, message
        assert answer["request_id"] in server.log.read_text()  # its log line names the request
        assert b"\r\nConnection: close\r\n" in got
        wait_for(lambda: len(worker_pids(server)) > len(first), 30, what="a new worker", server=server)
        server.wait_ready()
        log = server.log.read_text()
        assert "WORKER TIMEOUT" in log and "internal_error" not in log, log[-3000:]
    finally:
        server.stop()


# -- 3. a bad chunked trailer ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[[], ["--threads", "1"]], ids=["threads", "sync"])
def server(request, served_artifact, serving_keys, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("worker-edges2") / "server.log"
    running = Server([str(served_artifact), "--host", "127.0.0.1", "--workers", "1", *request.param,
                      "--read-timeout", str(READ_TIMEOUT), "--trusted-keys", str(serving_keys[1])], log)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("content_type", [b"", b"Content-Type: application/json\r\n"], ids=["unread", "read"])
def test_a_malformed_trailer_gets_one_answer_that_says_connection_close(server, content_type):
    # Without a Content-Type the app answers 415 without reading the body; the default worker found the trailer
    # malformed only when draining the body afterwards, and closed after an answer that did not say so.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n" + content_type + b"Transfer-Encoding: chunked\r\n\r\n"
                     b"2\r\n{}\r\n0\r\nBad Trailer\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        got = received(sock, 8)
    assert statuses(got) == [400] and b"\r\nConnection: close\r\n" in got, got[:600]
    assert b'"code":"malformed_body"' in got and b"header" in got, got[:600]


def test_a_chunked_body_with_a_good_trailer_is_served_and_the_connection_kept(server, passengers):
    body = json.dumps(passengers[0]).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nX-Checksum: 1\r\n\r\n"
                     b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (len(body), body))
        got = received(sock, 8)
    assert statuses(got)[0] == 200 and b'"predictions"' in got, got[:600]
    if "--threads" not in server.process.args:  # the sync worker serves one request per connection
        assert statuses(got) == [200, 200], got[:600]
