"""What a hostile or careless client can send, and what the server answers: bounded memory, 4xx, small answers.

Each test names the review finding it covers (memory in the drift window, 500s for
client mistakes, answers far larger than their request, readiness while a model call
is overdue, out-of-range typed values on /v2).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

import blackbox
from serving import create_app
from serving.state import EXTENSION

from _helpers import LOG_AUTH, PASSENGER, Server, assert_error, make_app, wait_for

pytestmark = pytest.mark.usefixtures("close_recorders")


@pytest.fixture(scope="module")
def config(served_artifact, serving_keys) -> dict:
    return {"ARTIFACT": str(served_artifact), "LOAD_OPTIONS": {"trusted_keys": [str(serving_keys[1])]}, "DRIFT_INTERVAL": 0}


def retained(app) -> int:
    """Characters the drift window holds: every key and every string value of its records."""
    window = app.extensions[EXTENSION].monitor._window
    return sum(len(str(k)) + (len(v) if isinstance(v, str) else 8) for record in window for k, v in record.items())


def test_the_drift_window_keeps_only_schema_fields_with_long_strings_truncated(config, passengers, served_model):
    app = create_app({**config, "DRIFT_WINDOW": 50})
    client = app.test_client()
    record = passengers[0]
    text_field = next(f.name for f in served_model.schema.fields if f.kind in ("string", "category"))
    for _ in range(5):
        huge = {**record, "junk": "A" * 1_000_000, text_field: "B" * 1000}  # the schema refuses strings over 1024 characters
        response = client.post("/predict", json=huge)
        assert response.status_code == 200, (text_field, response.get_json())
    window = app.extensions[EXTENSION].monitor._window
    assert window, "the records were not observed"
    assert all(set(r) <= set(served_model.schema.columns) for r in window)
    assert retained(app) < 5 * (len(served_model.schema.columns) * 20 + 400)  # schema fields only, 1000 chars cut to the log's 256 + digest


@pytest.fixture
def logging_app(config, tmp_path):
    return make_app(config, f"sqlite:///{tmp_path / 'log.db'}")


DEEP = b"[" * 300 + b"]" * 300


@pytest.mark.parametrize("path", ["/predict", "/invocations", "/feedback"])
def test_a_deeply_nested_body_is_a_400_naming_the_nesting_limit(logging_app, path):
    response = logging_app.test_client().post(path, data=DEEP, content_type="application/json", headers=LOG_AUTH)
    body = assert_error(response, 400, "malformed_body")
    assert "64 levels" in body["error"]["message"]
    shallow = b"[" * 64 + b"]" * 64  # at the limit: parsed, then refused for its shape (422), never a 500
    assert logging_app.test_client().post(path, data=shallow, content_type="application/json", headers=LOG_AUTH).status_code < 500


def test_a_deeply_nested_body_on_v2_is_a_400(logging_app, served_model):
    response = logging_app.test_client().post(f"/v2/models/{served_model.name}/infer", data=DEEP,
                                              content_type="application/json", headers=LOG_AUTH)
    assert response.status_code == 400, response.data
    assert "64 levels" in response.get_json()["error"]


def test_feedback_with_no_entries_or_a_lone_surrogate_request_id_is_a_422(logging_app):
    client = logging_app.test_client()
    body = assert_error(client.post("/feedback", data=b"[]", content_type="application/json", headers=LOG_AUTH),
                        422, "invalid_feedback")
    assert [d["issue"] for d in body["error"]["details"]] == ["no_entries"]
    for entry in (b'{"request_id": "\\ud800", "label": 1}', b'{"request_id": "abc", "label": "\\ud800"}',
                  b'{"request_id": "abc", "label": 1, "\\ud800": 2}'):
        response = client.post("/feedback", data=entry, content_type="application/json", headers=LOG_AUTH)
        assert_error(response, 422, "invalid_feedback")


@pytest.fixture(scope="module")
def server(served_artifact, serving_keys, tmp_path_factory) -> Iterator[Server]:
    running = Server([str(served_artifact), "--host", "127.0.0.1", "--workers", "1", "--trusted-keys", str(serving_keys[1])],
                     tmp_path_factory.mktemp("hostile") / "server.log")
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def raw(server: Server, chunks: bytes) -> tuple[int, dict]:
    """(status, JSON body) of a chunked POST /predict whose chunk framing is ``chunks``, sent as it is."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + chunks)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("chunks", [b"zz\r\n{}\r\n0\r\n\r\n", b"-1\r\n{}\r\n0\r\n\r\n", b"3\r\n{}\r\n0\r\n\r\n",
                                    b"2\r\n{}XX0\r\n\r\n"], ids=["letters", "negative", "short", "no_terminator"])
def test_a_malformed_chunked_body_is_a_400(server, chunks):
    status, body = raw(server, chunks)
    assert status == 400, body
    assert body["error"]["code"] == "malformed_body" and "chunked" in body["error"]["message"]


def test_validation_details_and_warnings_are_capped_per_field_and_issue_and_in_all(config, passengers):
    client = create_app(config).test_client()
    empty = client.post("/predict", json=[{}] * 10_000)
    body = assert_error(empty, 422, "validation_error")
    assert len(empty.data) < 300_000, len(empty.data)
    missing = [d for d in body["error"]["details"] if d["issue"] == "missing"]
    per_field = {d["field"] for d in missing}
    assert all(sum(1 for d in missing if d["field"] == f and d["row"] is not None) == 100 for f in per_field)
    assert {d["received"] for d in missing if d["row"] is None} == {"9900 more rows"}

    junk = {f"junk{i}": i for i in range(100)}
    records = [{**passengers[i % len(passengers)], **junk} for i in range(2000)]
    answer = client.post("/predict", json=records)
    assert answer.status_code == 200, answer.data[:500]
    warnings = answer.get_json()["warnings"]
    assert len(answer.data) < 1_000_000, len(answer.data)
    assert warnings[-1]["issue"] == "truncated" and warnings[-1]["received"].endswith("more entries")
    small = client.post("/predict", json=[{**passengers[0], "extra": 1}]).get_json()["warnings"]
    assert [(w["row"], w["field"], w["issue"]) for w in small] == [(0, "extra", "unknown_field")]


def test_ready_is_503_while_a_model_call_is_overdue_and_200_once_it_ends(config, monkeypatch):
    model = blackbox.load(config["ARTIFACT"], **config["LOAD_OPTIONS"])
    real, release = model.predict_and_proba_frame, threading.Event()

    def stuck(frame):
        release.wait(30)  # bounded: released below
        return real(frame)

    app = create_app({**config, "REQUEST_TIMEOUT": 1}, model=model)
    client = app.test_client()
    monkeypatch.setattr(model, "predict_and_proba_frame", stuck)
    assert client.post("/predict", json=PASSENGER).status_code == 504
    body = assert_error(client.get("/ready"), 503, "not_ready")
    assert "overdue" in body["error"]["message"]
    assert client.get("/models").get_json()["models"][0]["ready"] is False
    release.set()
    wait_for(lambda: client.get("/ready").status_code == 200, 10, what="the overdue call to end")
