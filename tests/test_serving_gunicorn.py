"""The real server: ``blackbox serve`` under gunicorn with two workers, over HTTP on 127.0.0.1.

Starts the command in a subprocess on a free loopback port, waits for /ready,
compares predictions with the same artifact loaded in-process, checks that
/metrics adds up across both workers, and stops it with SIGTERM (graceful: an
in-flight batch completes, the master exits 0).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from _helpers import GRACEFUL_TIMEOUT, Server, call, predict_pids

pytestmark = pytest.mark.slow


@pytest.fixture
def server(served_artifact, serving_keys, tmp_path):
    server = Server([str(served_artifact), "--host", "127.0.0.1", "--workers", "2", "--trusted-keys", str(serving_keys[1])],
                    tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def test_gunicorn_serves_what_the_model_predicts_in_process_then_stops_gracefully(server, served_model, passengers):
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


def test_debug_runs_the_flask_development_server(served_artifact, serving_keys, tmp_path):
    server = Server([str(served_artifact), "--debug", "--trusted-keys", str(serving_keys[1])], tmp_path / "debug.log")
    try:
        server.wait_ready()
        status, body = call(server.url + "/predict", {"pclass": 3})
        assert status == 422 and json.loads(body)["error"]["code"] == "validation_error"
    finally:
        server.stop()
    assert "Debug mode: on" in server.log.read_text()
