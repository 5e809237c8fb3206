"""The HTTP edge: request timeouts, slow clients, body size and encoding, duplicate keys, numeric strings.

Most checks use Flask's test client (``wsgi.input_terminated`` is what gunicorn
sets for a chunked body). The slow-client and sync-worker checks run the real
``blackbox serve`` under gunicorn on 127.0.0.1, with bounded counts and times.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import blackbox
from serving import create_app

from _helpers import PASSENGER, Server, assert_error, call, post, user_module

LIMIT = 2_000


@pytest.fixture(scope="module")
def small_client(base_config):
    return create_app({**base_config, "MAX_CONTENT_LENGTH": LIMIT}).test_client()


def chunked(client, data: bytes, **headers):
    """A chunked request as gunicorn hands it to the app: no Content-Length, ``wsgi.input_terminated``."""
    return client.post("/predict", input_stream=io.BytesIO(data), environ_overrides={"wsgi.input_terminated": True},
                       headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json", **headers})


# -- 3. size and encoding ----------------------------------------------------------------------
def test_a_chunked_body_over_the_limit_is_413_like_one_with_a_content_length(small_client):
    big = json.dumps([PASSENGER] * 40).encode()
    assert len(big) > LIMIT
    for response in (chunked(small_client, big), post(small_client, [PASSENGER] * 40)):
        body = assert_error(response, 413, "payload_too_large")
        message = body["error"]["message"]
        assert f"{LIMIT} bytes" in message and "--max-body-bytes" in message and "BLACKBOX_MAX_CONTENT_LENGTH" in message
    assert chunked(small_client, json.dumps(PASSENGER).encode()).status_code == 200  # under the limit: served


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "gzip, identity"])
def test_a_compressed_body_is_415_saying_to_send_it_uncompressed(small_client, encoding):
    response = post(small_client, PASSENGER, headers={"Content-Encoding": encoding})
    body = assert_error(response, 415, "unsupported_media_type")
    assert "uncompressed" in body["error"]["message"] and encoding.split(",")[0] in body["error"]["message"]
    assert post(small_client, PASSENGER, headers={"Content-Encoding": "identity"}).status_code == 200


# -- 4. duplicate keys -------------------------------------------------------------------------
@pytest.mark.parametrize("data, key, where", [
    (b'{"pclass": 3, "pclass": 1, "sex": "male", "sibsp": 0, "parch": 0, "name": "A"}', "pclass", "the body"),
    (b'{"records": [{"pclass": 3, "sex": "male", "sibsp": 0, "parch": 0, "name": "A"},'
     b' {"pclass": 1, "sex": "male", "sex": "female", "sibsp": 0, "parch": 0, "name": "A: B"}]}', "sex", "records[1]"),
    (b'[{"pclass": 3, "sex": "male", "sibsp": 0, "parch": 0, "name": "a:b", "name": "c"}]', "name", "[0]"),
    (b'{"records": [], "records": [{"pclass": 3}]}', "records", "the body"),
    (b'{"dataframe_split": {"columns": ["pclass"], "data": [[3]], "data": [[1]]}}', "data", "dataframe_split"),
], ids=["top", "nested", "colon-in-value", "records", "mlflow"])
def test_a_repeated_key_is_400_naming_the_key_and_where(client, data, key, where):
    path = "/invocations" if b"dataframe_split" in data else "/predict"
    response = client.post(path, data=data, content_type="application/json")
    message = assert_error(response, 400, "malformed_body")["error"]["message"]
    assert f'"{key}"' in message and where in message, message


def test_a_repeated_key_next_to_nan_is_still_refused(client):
    data = b'{"pclass": 3, "pclass": 1, "age": NaN, "sex": "male", "sibsp": 0, "parch": 0, "name": "A"}'
    message = assert_error(client.post("/predict", data=data, content_type="application/json"), 400, "malformed_body")["error"]["message"]
    assert '"pclass"' in message


@pytest.mark.parametrize("name", ["Braund: Mr. Owen", "caf\\u00e9 \\u003a x", 'He said \\": x', "a\\u003a"])
def test_colons_and_escapes_in_values_are_no_duplicates(client, served_model, name):
    record = {**PASSENGER, "name": json.loads(f'"{name}"')}
    data = json.dumps(PASSENGER)[:-1].replace('"name": "Braund, Mr. Owen Harris"', f'"name": "{name}"') + "}"
    response = client.post("/predict", data=data.encode(), content_type="application/json")
    assert response.status_code == 200, response.data
    assert response.get_json()["predictions"] == served_model.predict_batch([record])


# -- 5. numeric strings: accepted, and documented as accepted ---------------------------------
def test_numeric_strings_are_documented_in_openapi_and_served_as_numbers(client, served_model):
    record = client.get("/openapi.json").get_json()["components"]["schemas"]["Record"]
    for name in ("age", "fare", "pclass"):
        prop = record["properties"][name]
        kinds = [branch["type"] for branch in prop["anyOf"]]
        assert kinds[1] == "string" and kinds[0] in ("number", "integer"), prop
        pattern = prop["anyOf"][1]["pattern"]
        for text in ("30", " 7.25 ", "-1e2", ".5"):
            assert re.search(pattern, text), (name, text)
        for text in ("abc", "1,5", "nan", "Infinity", "0x10", ""):
            assert not re.search(pattern, text), (name, text)
    assert record["properties"]["age"]["anyOf"][0]["nullable"] is True
    as_text = {**PASSENGER, "age": "22", "fare": "7.25", "pclass": "3"}
    answer = post(client, as_text)
    assert answer.status_code == 200 and answer.get_json()["predictions"] == served_model.predict_batch([PASSENGER])
    assert_error(post(client, {**PASSENGER, "age": "abc"}), 422, "validation_error")


def test_batch_scoring_takes_numeric_strings_like_the_server(served_model, tmp_path):
    frame = pd.DataFrame([{**PASSENGER, "age": "22", "fare": "7.25"}], dtype=object)
    assert served_model.predict_batch(frame) == served_model.predict_batch([PASSENGER])


# -- 1. request timeout ------------------------------------------------------------------------
@pytest.fixture
def slow_app(base_config, monkeypatch):
    """An app with a 1 s request timeout whose model takes 3 s for the call after ``app.slow.set()``."""
    def make(**overrides):
        model = blackbox.load(base_config["ARTIFACT"], **base_config["LOAD_OPTIONS"])
        real = model.predict_and_proba_frame
        armed = threading.Event()

        def slow(frame):
            if armed.is_set():
                armed.clear()
                time.sleep(3)
            return real(frame)

        monkeypatch.setattr(model, "predict_and_proba_frame", slow)
        app = create_app({**base_config, "REQUEST_TIMEOUT": 1, **overrides}, model=model)
        app.slow = armed
        return app
    return make


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_a_model_call_over_the_request_timeout_is_504_and_the_worker_recovers(slow_app, batching, served_model):
    app = slow_app(BATCHING=batching)
    client = app.test_client()
    app.slow.set()
    started = time.monotonic()
    body = assert_error(post(client, PASSENGER), 504, "timeout")
    assert time.monotonic() - started < 2.5  # the 1 s limit, not the 3 s call
    assert "1 s" in body["error"]["message"] and "REQUEST_TIMEOUT" in body["error"]["message"]
    # While the stuck call runs, other requests are told at once instead of piling up behind it.
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(client, PASSENGER), range(4)))
    assert all(a.status_code == 504 and a.get_json()["error"]["code"] == "timeout" for a in answers)
    assert time.monotonic() - started < 1.5
    time.sleep(3)  # the stuck call ends (its answer is dropped)
    answer = post(client, PASSENGER)
    assert answer.status_code == 200 and answer.get_json()["predictions"] == served_model.predict_batch([PASSENGER])


def test_requests_queued_behind_a_slow_call_time_out_at_their_own_deadline(slow_app):
    app = slow_app(REQUEST_TIMEOUT=2)
    client = app.test_client()
    app.slow.set()
    slow = threading.Thread(target=post, args=(client, PASSENGER))
    slow.start()
    time.sleep(0.5)  # the slow call holds the model; the next one waits, not yet overdue
    started = time.monotonic()
    assert_error(post(client, PASSENGER), 504, "timeout")
    assert 1.0 < time.monotonic() - started < 2.5
    slow.join()


def test_the_request_timeout_is_a_checked_setting(base_config):
    from blackbox import UsageError
    with pytest.raises(UsageError, match="REQUEST_TIMEOUT"):
        create_app({**base_config, "REQUEST_TIMEOUT": 0})


# -- real gunicorn: a slow model with the sync worker, and slow clients ----------------------------
SLEEPY_SOURCE = '''
import time

from sklearn.base import BaseEstimator, TransformerMixin


class Sleepy(BaseEstimator, TransformerMixin):
    """Identity, except that a batch with a = 99 takes ``seconds``."""

    def __init__(self, seconds=10.0):
        self.seconds = seconds

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def transform(self, X):
        if (X["a"] == 99).any():
            time.sleep(self.seconds)
        return X
'''
RECORD = {"a": 0.5, "b": -0.1}


@pytest.fixture(scope="module")
def sleepy_artifact(serving_keys, tmp_path_factory):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    with user_module(tmp_path_factory.mktemp("sleepysrc"), "bbx_sleepy_feats", SLEEPY_SOURCE) as module:
        rng = np.random.default_rng(0)
        X = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
        y = (X.a + X.b > 0).astype(int)
        pipeline = Pipeline([("sleepy", module.Sleepy(10.0)), ("clf", LogisticRegression())]).fit(X, y)
        path = tmp_path_factory.mktemp("sleepy") / "sleepy.bbx"
        return blackbox.save(pipeline, path, train_data=X, name="sleepy", version="1", signing_key=serving_keys[0])


def started(artifact: Path, keys, tmp_path: Path, *args: str, workers: int = 1) -> Server:
    server = Server([str(artifact), "--host", "127.0.0.1", "--workers", str(workers), "--trusted-keys", str(keys[1]), *args],
                    tmp_path / "server.log")
    server.wait_ready(workers=workers)
    return server


@pytest.mark.slow
def test_the_sync_worker_answers_a_slow_call_with_a_json_504_and_keeps_serving(sleepy_artifact, serving_keys, tmp_path):
    server = started(sleepy_artifact, serving_keys, tmp_path, "--threads", "1", "--timeout", "6", "--request-timeout", "2")
    try:
        begun = time.monotonic()
        status, body = call(server.url + "/predict", {"a": 99, "b": 0}, timeout=20)
        assert status == 504 and json.loads(body)["error"]["code"] == "timeout", body[:300]
        assert time.monotonic() - begun < 5
        assert call(server.url + "/predict", RECORD)[0] == 504  # the stuck call still runs: told at once
        deadline = time.monotonic() + 15
        while (status := call(server.url + "/predict", RECORD)[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 200  # once the call ends, the same worker serves normally
        assert "WORKER TIMEOUT" not in server.log.read_text()
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_request_timeout_must_be_below_the_worker_timeout(served_artifact, serving_keys, tmp_path):
    server = Server([str(served_artifact), "--host", "127.0.0.1", "--timeout", "5", "--request-timeout", "5",
                     "--trusted-keys", str(serving_keys[1])], tmp_path / "server.log")
    assert server.process.wait(timeout=60) == 2
    assert "--request-timeout" in server.log.read_text()


def slow_socket(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(payload)
    return sock


def trickle(socks: list[socket.socket], stop: threading.Event) -> None:
    """One byte per socket per second until ``stop``; a socket the server closed is left alone."""
    while not stop.wait(1.0):
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"a")


@pytest.mark.slow
def test_slow_clients_do_not_take_the_capacity_of_others(served_artifact, serving_keys, tmp_path):
    server = started(served_artifact, serving_keys, tmp_path, "--read-timeout", "4", workers=2)
    stop = threading.Event()
    socks: list[socket.socket] = []
    try:
        # 90 clients send their headers a byte a second (slowloris), 30 their bodies; 2 workers x the default 16 threads.
        socks += [slow_socket(server.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(90)]
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"
        socks += [slow_socket(server.port, head) for _ in range(30)]
        sender = threading.Thread(target=trickle, args=(socks, stop), daemon=True)
        sender.start()
        time.sleep(1.5)
        for _ in range(6):  # normal clients keep being answered promptly meanwhile
            begun = time.monotonic()
            assert call(server.url + "/predict", PASSENGER, timeout=5)[0] == 200
            assert time.monotonic() - begun < 3
            time.sleep(0.2)
        # Past --read-timeout the slow ones are cut off: a slow body gets a JSON 408, every socket is closed.
        time.sleep(4)
        stop.set()
        sender.join()
        deadline = time.monotonic() + 5
        answers = []
        for sock in socks:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                answers.append(sock.recv(4096))
            except OSError:
                answers.append(b"")
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers[90:]), answers[90]
        assert b'"code":"request_timeout"' in answers[90] and b"--read-timeout" in answers[90]
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers[:90]), answers[0]
        assert call(server.url + "/predict", PASSENGER)[0] == 200
    finally:
        stop.set()
        for sock in socks:
            sock.close()
        server.stop()
