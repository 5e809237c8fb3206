"""Plain helpers shared by the test modules: no fixtures (those live in conftest.py), no tests.

Test modules import from here, never from each other (``from _helpers import ...``: pytest puts
tests/ on sys.path). Anything that imports a heavy or moving module (serving, the prediction log,
the store) imports it inside the function, so that importing this module stays cheap and a test
module only pays for what it uses.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

PYTHON = sys.executable
# The Kaggle Titanic CSV from shared/ beside the checkout: "a user's own CSV" with other columns.
KAGGLE_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "titanic_kaggle.csv"


# -- processes and user code ---------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment for a child interpreter (no PYTHON* variables)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


@contextlib.contextmanager
def user_module(directory: Path, name: str, source: str) -> Iterator[ModuleType]:
    """``source`` as the importable module ``name`` (a user's own feature code, saved by value), only inside the block.

    The module is written to ``directory``, imported from there, and forgotten afterwards (sys.path and
    sys.modules), so that later loads cannot find it on the path: they must use the embedded copy.
    """
    (directory / f"{name}.py").write_text(source)
    sys.path.insert(0, str(directory))
    sys.modules.pop(name, None)
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop(name, None)


def wait_for(condition: Callable[[], object], seconds: float = 20, *, interval: float = 0.05,
             what: str = "condition", server: Server | None = None) -> None:
    """Until ``condition()`` is true; fails after ``seconds`` (a generous bound: it only guards against a hang),
    or at once, with its log, if ``server`` exits meanwhile."""
    deadline = time.monotonic() + seconds
    while not condition():
        if server is not None and server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode} while waiting for {what}:\n{server.log.read_text()}")
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} not met after {seconds} s" + (f":\n{server.log.read_text()}" if server is not None else ""))
        time.sleep(interval)


# -- artifacts -------------------------------------------------------------------------------------


def resign(data: bytes, manifest: dict | None = None, payload: bytes | None = None) -> bytes:
    """Artifact bytes with the manifest and/or payload replaced, signed again with the test key."""
    from blackbox.artifact import dump_manifest, pack, unpack
    from blackbox.signing import SIGNING_KEY_ENV, load_private_key, sign

    parts = unpack(data)
    manifest_bytes = parts.manifest_bytes if manifest is None else dump_manifest(manifest)
    block = sign(manifest_bytes, load_private_key(os.environ[SIGNING_KEY_ENV]))
    return pack(manifest_bytes, parts.payload if payload is None else payload, block)


def marker_payload(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when (and only when) it is unpickled."""

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Exploit(), protocol=5)


def variant(artifact: Path, directory: Path, version: str, **changes) -> Path:
    """A signed artifact like ``artifact`` but with another version (and any other manifest changes)."""
    from blackbox.artifact import unpack

    data = artifact.read_bytes()
    manifest = {**unpack(data).manifest(), "version": version, **changes}
    path = directory / f"{manifest['name']}-{version}-{uuid.uuid4().hex[:8]}.bbx"
    path.write_bytes(resign(data, manifest))
    return path


def doctored(artifact: Path, where: Path) -> Path:
    """The artifact with its golden sample's first prediction flipped, signed again: it loads, but fails its self-test."""
    from blackbox.artifact import unpack

    data = artifact.read_bytes()
    manifest = unpack(data).manifest()
    golden = manifest["golden"]
    golden["predictions"][0] = 1 - golden["predictions"][0]
    where.write_bytes(resign(data, manifest))
    return where


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    """``blackbox ARGV...`` in process: (exit code, stdout, stderr)."""
    from blackbox.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- batch scoring inputs --------------------------------------------------------------------------


def write_input(frame, path: Path) -> Path:
    """``frame`` as the CSV, Parquet or JSON Lines file ``path`` names by its suffix."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        records = [{k: _plain(v) for k, v in record.items()} for record in frame.to_dict("records")]
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _plain(value: object) -> object:
    import numpy as np

    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and np.isnan(value) else value


def bad_rows(rows, n: int = 10_000, *, second: bool = True):
    """``n`` valid rows, except data row n/2+1 (age "abc") and row 7 (pclass "first")."""
    frame = rows.sample(n=n, replace=True, random_state=0).reset_index(drop=True).astype({"age": object, "pclass": object})
    frame.loc[n // 2, "age"] = "abc"
    if second:
        frame.loc[6, "pclass"] = "first"
    return frame


def poisoned(n: int, rows: tuple[int, ...], value: float = 13.0):
    """``n`` valid rows (a, b) with ``value`` in column a of the 1-based data rows ``rows``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=n).round(6), "b": rng.normal(size=n).round(6)})
    frame.loc[[row - 1 for row in rows], "a"] = value
    return frame


# -- the server in process (Flask's test client) -----------------------------------------------------

PASSENGER = {"pclass": 3, "sex": "male", "age": 22, "sibsp": 1, "parch": 0, "fare": 7.25, "embarked": "S",
             "name": "Braund, Mr. Owen Harris"}
CI_KEY = "k" * 20 + "-ci-secret"  # test_serving's "ci" API key


def post(client, body, path="/predict", **kwargs):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kwargs)


def details(response) -> list[tuple]:
    return [(d["row"], d["field"], d["issue"]) for d in response.get_json()["error"]["details"]]


def assert_error(response, status: int, code: str) -> dict:
    """Every error: the status, JSON, the one shape, the request id in body and header."""
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "request_id"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert b"<html" not in response.data.lower() and b"Traceback" not in response.data
    return body


def metric(client, name: str, /, **labels) -> float:
    """One sample's value from /metrics (0 when absent)."""
    text = client.get("/metrics", headers={"Authorization": f"Bearer {CI_KEY}"}).get_data(as_text=True)
    return sum_samples(text, name, **labels)


def sum_samples(text: str, name: str, /, **labels: str) -> float:
    """The sum of the samples called ``name`` with ``labels`` in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


# -- the prediction log (shared with test_predlog_postgres.py and test_feedback_labels.py) -----------

LOG_KEY_ID, LOG_KEY = "alice", "a" * 32
LOG_AUTH = {"Authorization": f"Bearer {LOG_KEY}"}


def outcome(app, name: str) -> float:
    from serving.state import EXTENSION

    value = app.extensions[EXTENSION].metrics.registry.get_sample_value("blackbox_prediction_log_rows_total", {"outcome": name})
    return value or 0.0


def make_app(config: dict, url: str, **overrides):
    """An app logging its predictions to ``url``, with one API key (``LOG_AUTH``)."""
    from serving import create_app

    return create_app({**config, "PREDICTION_LOG": url, "API_KEYS": {LOG_KEY_ID: LOG_KEY}, **overrides})


def predict(client, body, request_id: str | None = None):
    headers = {**LOG_AUTH, **({"X-Request-ID": request_id} if request_id else {})}
    response = client.post("/predict", json=body, headers=headers)
    assert response.status_code == 200, response.data
    return response.get_json()


def feedback(client, body):
    return client.post("/feedback", json=body, headers=LOG_AUTH)


def log_round_trip(config: dict, url: str, served_model, passengers) -> None:
    """Predictions are logged as answered (LD-09); labels come back with them, the latest one winning."""
    import pandas as pd

    from blackbox.monitoring.predlog import read_log

    app = make_app(config, url)
    client = app.test_client()
    batch = passengers[:5]
    answer = predict(client, batch, request_id="req-batch-1")
    single = predict(client, PASSENGER)
    wait_for(lambda: outcome(app, "written") == 6)

    stored = feedback(client, [{"request_id": "req-batch-1", "row": 3, "label": 1},
                               {"request_id": single["request_id"], "label": 0},
                               {"request_id": "never-predicted", "row": 2, "label": 1}])
    assert stored.status_code == 200, stored.data
    assert [entry["known"] for entry in stored.get_json()["feedback"]] == [True, True, False]
    assert feedback(client, {"request_id": "req-batch-1", "row": 3, "label": 0}).status_code == 200  # a correction

    log = read_log(url, with_feedback=True)
    assert list(log.columns[:10]) == ["request_id", "row", "ts", "model_name", "model_version", "model_sha256",
                                      "client_id", "latency_ms", "prediction", "probabilities"]
    assert list(log.columns[10:-2]) == list(served_model.schema.columns) and list(log.columns[-2:]) == ["label", "label_ts"]
    assert str(log["ts"].dtype) == "datetime64[ns, UTC]" and str(log["label_ts"].dtype) == "datetime64[ns, UTC]"
    assert list(log["request_id"]) == ["req-batch-1"] * 5 + [single["request_id"]]
    assert list(log["row"]) == [0, 1, 2, 3, 4, 0]
    assert set(log["model_name"]) == {"titanic"} and set(log["model_version"]) == {"1.0.0"}
    assert set(log["model_sha256"]) == {served_model.sha256} and set(log["client_id"]) == {LOG_KEY_ID}
    assert (log["latency_ms"] > 0).all()
    assert list(log["prediction"]) == answer["predictions"] + single["predictions"]
    assert list(log["probabilities"]) == answer["probabilities"] + single["probabilities"]
    assert log.loc[0, "age"] == batch[0]["age"] and log.loc[5, "sex"] == PASSENGER["sex"]
    assert list(log["label"]) == [None, None, None, 0, None, 0]  # the correction replaced the 1
    assert log["label_ts"].notna().tolist() == [False, False, False, True, False, True]

    since = log["ts"].max() + pd.Timedelta(microseconds=1)
    assert read_log(url, since=since).empty and len(read_log(url, until=since)) == 6
    assert len(read_log(url, model_name="titanic")) == 6 and read_log(url, model_name="other").empty


def outage(app, down: Callable[[], object], up: Callable[[], object], passengers) -> None:
    """While the database is down every request is answered; after it is back, every queued row is written."""
    from blackbox.monitoring.predlog import read_log
    from serving.state import EXTENSION

    client = app.test_client()
    predict(client, PASSENGER)
    wait_for(lambda: outcome(app, "written") == 1)
    down()
    try:
        answered = 1 + sum(len(predict(client, passengers[: 1 + i % 3])["predictions"]) for i in range(30))
        queue = app.extensions[EXTENSION].metrics.registry.get_sample_value("blackbox_prediction_log_queue_rows")
        assert queue == answered - 1 and outcome(app, "written") == 1  # held in memory, nothing lost yet
    finally:
        up()
    wait_for(lambda: outcome(app, "written") == answered, seconds=40)
    assert outcome(app, "dropped") == outcome(app, "failed") == 0
    assert len(read_log(str(app.extensions[EXTENSION].predlog.log.url))) == answered


# -- the real server (blackbox serve in a subprocess, on 127.0.0.1) ------------------------------------

GRACEFUL_TIMEOUT = 10


@functools.cache
def serve_command() -> tuple[str, ...]:
    """``python -m blackbox serve`` once blackbox's CLI registers the command, ``python -m serving`` until then."""
    official = (sys.executable, "-m", "blackbox", "serve")
    registered = subprocess.run([*official, "--help"], capture_output=True).returncode == 0
    return official if registered else (sys.executable, "-m", "serving")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port that another socket listens on for the duration of the block."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def call(url: str, body: object | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a JSON POST when ``body`` is given; HTTP errors are answers too."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (a local test server)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for_url(url: str, process: subprocess.Popen, seconds: float = 30, *, log: Path | None = None,
                 ready: Callable[[int], bool] = lambda status: status == 200) -> None:
    """Until ``url`` answers a status ``ready`` accepts; fails at once if ``process`` exits, else after ``seconds``."""
    said = (lambda: "\n" + log.read_text()) if log is not None else (lambda: "")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode} before {url} answered:{said()}")
        try:
            if ready(call(url, timeout=1)[0]):
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not answer after {seconds} s:{said()}")


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
            self.kill()

    def kill(self) -> None:
        """SIGKILL if it still runs (the cleanup of every test that started one)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def metric(self, name: str, /, **labels: str) -> float:
        return sum_samples(call(self.url + "/metrics")[1].decode(), name, **labels)


def predict_pids(server: Server) -> set[int]:
    """The worker processes that have answered /predict, from their request log lines."""
    return {json.loads(line)["pid"] for line in server.log.read_text().splitlines()
            if line.startswith("{") and '"path":"/predict"' in line}


# -- the model store (scenarios shared by test_store.py and test_store_s3.py) --------------------------


def race(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls in threads released at the same instant; return each one's result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001  the outcome under test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def store_round_trip(uri: str, artifact: Path, tmp_path: Path, capsys) -> None:
    """push / list / promote / rollback / pull through the command line, as a release manager would."""
    import blackbox
    from blackbox.store import Store, StoreError

    v2 = variant(artifact, tmp_path, "2.0.0", created_at="2099-01-01T00:00:00Z")
    old = variant(artifact, tmp_path, "0.9.0", created_at="2000-01-01T00:00:00Z")

    code, out, err = run_cli(capsys, "push", artifact, uri)
    assert code == 0, err
    assert "titanic@1.0.0 is in" in out
    for path in (v2, old):
        assert run_cli(capsys, "push", path, uri)[0] == 0

    code, out, _ = run_cli(capsys, "list", uri, "titanic", "--json")
    listed = {r["version"]: r for r in json.loads(out)}
    assert list(listed) == ["0.9.0", "1.0.0", "2.0.0"]  # oldest first
    assert listed["1.0.0"]["sha256"] == file_sha256(artifact)
    assert listed["1.0.0"]["key_id"] == blackbox.inspect(artifact)["signature"]["key_id"]
    assert listed["1.0.0"]["metrics"]["holdout"] == {"accuracy": 0.8}
    assert "candidates" not in listed["1.0.0"]["metrics"]["search"]  # kept in the manifest, not the record
    assert listed["2.0.0"]["aliases"] == ["latest"]  # pushing an older version later does not move latest

    store = Store.open(uri)
    assert run_cli(capsys, "promote", uri, "titanic", "1.0.0", "--alias", "production")[0] == 0
    code, out, _ = run_cli(capsys, "promote", uri, "titanic", "2.0.0", "--alias", "production")
    assert code == 0 and "titanic@production -> 2.0.0" in out
    assert store.resolve("titanic@production").version == "2.0.0"
    assert store.resolve("titanic").version == "2.0.0"  # NAME alone is NAME@latest
    assert store.resolve("titanic@0.9.0").sha256 == file_sha256(old)

    code, out, _ = run_cli(capsys, "list", uri)
    row = next(line for line in out.splitlines() if line.startswith("titanic") and " 2.0.0 " in line)
    assert "latest,production" in row and "holdout.accuracy 0.8000" in row

    code, out, _ = run_cli(capsys, "rollback", uri, "titanic", "--alias", "production")
    assert code == 0 and "rolled back to 1.0.0" in out
    assert store.resolve("titanic@production").version == "1.0.0"

    dest = tmp_path / "pulled" / "model.bbx"
    code, out, err = run_cli(capsys, "pull", uri, "titanic@production", "-o", dest)
    assert code == 0, err
    assert dest.read_bytes() == artifact.read_bytes()
    assert blackbox.load(dest).version == "1.0.0"

    code, _, err = run_cli(capsys, "rollback", uri, "titanic", "--alias", "production")
    assert code == StoreError.exit_code and "no previous target left" in err


def racing_pushes(uri: str, artifact: Path, tmp_path: Path, rounds: int = 3) -> None:
    """Two pushes of one version with different bytes, at the same instant: exactly one wins, whole."""
    from blackbox.store import Store, StoreError

    for n in range(rounds):
        version = f"8.0.{n}"
        paths = [variant(artifact, tmp_path, version, metadata={"writer": w}) for w in "ab"]
        results = race([lambda p=p: Store.open(uri).push(p) for p in paths])
        won = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
        assert len(won) == 1, results
        lost = results[1 - won[0]]
        assert isinstance(lost, StoreError) and "already exists" in lost.message and "immutable" in lost.message
        release, data = Store.open(uri).fetch(f"titanic@{version}")  # verifies digest and signature
        assert data == paths[won[0]].read_bytes()
        assert release.sha256 == file_sha256(paths[won[0]])


def racing_promotes(uri: str, artifact: Path, tmp_path: Path) -> None:
    """Promotes from several writers at once: each either lands or is told it lost; the pointer stays whole."""
    from blackbox.store import Store, StoreError

    versions = [f"5.{i}.0" for i in range(6)]
    for version in versions:
        Store.open(uri).push(variant(artifact, tmp_path, version))
    landed: list[str] = []
    for pair in (versions[0:2], versions[2:4], versions[4:6]):
        results = race([lambda v=v: Store.open(uri).promote("titanic", v, "production") for v in pair])
        for version, result in zip(pair, results, strict=True):
            if isinstance(result, Exception):
                assert isinstance(result, StoreError) and "changed by someone else" in result.message
            else:
                landed.append(version)
    store = Store.open(uri)
    current, history, _ = store._pointer("titanic", "production")
    targets = [entry["version"] for entry in history] + [current.version]
    assert sorted(targets) == sorted(landed)  # every landed promote is recorded once, nothing else
    assert len(landed) >= 3  # each race has a winner
    assert store.resolve("titanic@production").version == current.version


def received(sock, seconds: float, until: bytes | None = None) -> bytes:
    """What the server sent on ``sock`` until it closed, ``until`` appeared, or ``seconds`` passed (a bound: a hang)."""
    data = b""
    deadline = time.monotonic() + seconds
    while (until is None or until not in data) and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


# -- the fast path ----------------------------------------------------------------------
def json_records(frame: Any) -> list[dict]:
    """A frame's rows as JSON gives them (a missing value as null)."""
    return json.loads(frame.to_json(orient="records"))


def fast_plan(pipeline: Any, X_train: Any) -> tuple[Any, dict, Any]:
    """What ``blackbox.save`` builds for ``pipeline`` fit on ``X_train``: (the plan or None, its manifest record, the schema)."""
    from blackbox.fastpath import build_plan
    from blackbox.model import SklearnModel
    from blackbox.schema import infer_schema

    schema = infer_schema(X_train, limit=SklearnModel.numeric_limit(pipeline))
    plan, record = build_plan(pipeline, X_train, schema)
    return plan, record, schema


def proved_plan(pipeline: Any, X_train: Any) -> tuple[Any, dict[str, dict], Any]:
    """:func:`fast_plan`, asserting there is a plan; its record's steps by path."""
    plan, record, schema = fast_plan(pipeline, X_train)
    assert plan is not None, record
    return plan, {step["path"]: step for step in record["steps"]}, schema


def assert_plan_answers(plan: Any, pipeline: Any, schema: Any, records: list[dict], batches: Sequence[int]) -> None:
    """The pipeline's labels, and probabilities within 1e-9, in each batch size (the records cycled to 4,000, three
    batches a size), from the prepared frame and from the records."""
    from blackbox.fastpath.table import Prepared

    records = (records * (4000 // len(records) + 1))[:4000]
    for size in batches:
        for start in range(0, min(len(records), 3 * size), size):
            batch = records[start:start + size]
            frame = schema.to_frame(batch)[0]
            labels, proba = pipeline.predict(frame), pipeline.predict_proba(frame)
            for source in (frame, Prepared(schema, batch)):
                got_labels, got_proba = plan.both(source)
                assert np.array_equal(got_labels, labels), size
                assert np.abs(got_proba - proba).max() <= 1e-9, size
