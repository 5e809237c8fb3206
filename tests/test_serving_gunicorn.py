"""The real server: ``blackbox serve`` under gunicorn with two workers, over HTTP on 127.0.0.1.

Starts the command in a subprocess on a free loopback port, waits for /ready,
compares predictions with the same artifact loaded in-process, checks that
/metrics adds up across both workers, and stops it with SIGTERM (graceful: an
in-flight batch completes, the master exits 0).
"""

from __future__ import annotations

import functools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from test_serving import passengers, served_artifact, served_model, serving_keys  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.slow

GRACEFUL_TIMEOUT = 10


@functools.cache
def serve_command() -> tuple[str, ...]:
    """``python -m blackbox serve`` once blackbox's CLI registers the command, ``python -m serving`` until then."""
    official = (sys.executable, "-m", "blackbox", "serve")
    registered = subprocess.run([*official, "--help"], capture_output=True).returncode == 0
    return official if registered else (sys.executable, "-m", "serving")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url: str, body: object | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Server:
    """``blackbox serve`` in a subprocess, its output in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen([*serve_command(), *args, "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, workers: int = 1, seconds: float = 30) -> None:
        """Until /ready answers and ``workers`` processes have loaded the model (/ready speaks for one)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                loaded = self.log.read_text().count('"event":"model_loaded"')
                if loaded >= workers and call(self.url + "/ready", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"server not ready after {seconds} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM (gunicorn's graceful stop); the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=GRACEFUL_TIMEOUT + 5)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def metric(self, name: str, /, **labels: str) -> float:
        text = call(self.url + "/metrics")[1].decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )


def predict_pids(server: Server) -> set[int]:
    """The worker processes that have answered /predict, from their request log lines."""
    return {json.loads(line)["pid"] for line in server.log.read_text().splitlines()
            if line.startswith("{") and '"path":"/predict"' in line}


@pytest.fixture
def server(served_artifact, serving_keys, tmp_path):  # noqa: F811
    server = Server([str(served_artifact), "--host", "127.0.0.1", "--workers", "2", "--trusted-keys", str(serving_keys[1])],
                    tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def test_gunicorn_serves_what_the_model_predicts_in_process_then_stops_gracefully(server, served_model, passengers):  # noqa: F811
    singles, answers = [], []
    for start in range(0, 8 * 20, 8):  # rounds of 8 concurrent connections, until both workers have answered
        batch = [passengers[i % len(passengers)] for i in range(start, start + 8)]
        with ThreadPoolExecutor(8) as pool:
            answers += pool.map(lambda record: call(server.url + "/predict", record), batch)
        singles += batch
        if len(predict_pids(server)) == 2:
            break
    assert [status for status, _ in answers] == [200] * len(singles)
    assert [json.loads(body)["predictions"][0] for _, body in answers] == served_model.predict_batch(singles)
    status, body = call(server.url + "/invocations", {"dataframe_records": passengers})
    assert status == 200
    answer = json.loads(body)
    assert answer["predictions"] == served_model.predict_batch(passengers)
    assert answer["probabilities"] == served_model.predict_proba(passengers)
    assert call(server.url + "/predict", {"pclass": "first"})[0] == 422

    assert len(predict_pids(server)) == 2, "both workers should have answered"
    for _ in range(4):  # whichever worker answers /metrics, it speaks for both
        assert server.metric("blackbox_http_requests_total", route="/predict", status="200") == len(singles)
        assert server.metric("blackbox_http_requests_total", route="/predict", status="422") == 1
        assert server.metric("blackbox_records_predicted_total", model_version="1.0.0") == len(singles) + len(passengers)
        assert server.metric("blackbox_model_info", version="1.0.0") == 1

    # SIGTERM while a big batch is being scored: it completes, then the master exits 0.
    batch = (passengers * 250)[:10_000]
    late: list[tuple[int, bytes]] = []
    sender = threading.Thread(target=lambda: late.append(call(server.url + "/predict", batch, timeout=30)))
    sender.start()
    time.sleep(0.3)  # the batch takes about a second to score
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < GRACEFUL_TIMEOUT + 1
    sender.join()
    assert late and late[0][0] == 200 and len(json.loads(late[0][1])["predictions"]) == 10_000


def test_debug_runs_the_flask_development_server(served_artifact, serving_keys, tmp_path):  # noqa: F811
    server = Server([str(served_artifact), "--debug", "--trusted-keys", str(serving_keys[1])], tmp_path / "debug.log")
    try:
        server.wait_ready()
        status, body = call(server.url + "/predict", {"pclass": 3})
        assert status == 422 and json.loads(body)["error"]["code"] == "validation_error"
    finally:
        server.stop()
    assert "Debug mode: on" in server.log.read_text()
