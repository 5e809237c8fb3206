"""The prediction log on SQLite: log + feedback round trip, export-log, outages, shutdown, several gunicorn workers.

The helpers taking a database URL (in _helpers.py) are shared with ``test_predlog_postgres.py``,
which runs the same round trip and an outage against a real PostgreSQL server.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from blackbox.cli import main
from blackbox.monitoring import predlog
from blackbox.monitoring.predlog import MAX_TEXT, TRANSIENT, PredictionLog, read_log
from serving import create_app
from serving.recorder import Recorder
from serving.state import EXTENSION

from _helpers import (
    LOG_AUTH,
    LOG_KEY,
    LOG_KEY_ID,
    PASSENGER,
    Server,
    call,
    child_env,
    feedback,
    free_port,
    log_round_trip,
    make_app,
    outage,
    outcome,
    predict,
    predict_pids,
    wait_for,
    wait_for_url,
)

pytestmark = pytest.mark.usefixtures("close_recorders")


def accounted(app) -> float:
    return sum(outcome(app, name) for name in ("written", "dropped", "failed"))


@contextmanager
def sqlite_locked(path: Path):
    """Another writer holding the SQLite database: to the log's writer, the database is down."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# ---------------------------------------------------------------- SQLite, in process

@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "predictions.db"


def test_sqlite_round_trip_in_wal_mode(base_config, db, served_model, passengers):
    log_round_trip(base_config, str(db), served_model, passengers)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_huge_string_values_are_logged_shortened_with_their_hash(base_config, db):  # CE-06
    app = make_app(base_config, str(db))
    name = "Braund, Mr. " + "x" * 1000  # under the schema's maxLength, over the log's MAX_TEXT
    predict(app.test_client(), {**PASSENGER, "name": name, "unknown": "y" * 1000})
    wait_for(lambda: outcome(app, "written") == 1)
    logged = read_log(str(db)).loc[0]
    assert logged["name"].startswith(name[:MAX_TEXT]) and len(logged["name"]) < MAX_TEXT + 120
    assert "1012 chars" in logged["name"] and len(logged["name"].rsplit("sha256 ", 1)[1].rstrip("]")) == 64
    assert "unknown" not in logged.index  # only the schema's fields: what the model saw


def test_feedback_errors(base_config, db):
    off = create_app({**base_config, "API_KEYS": {LOG_KEY_ID: LOG_KEY}}).test_client()
    response = feedback(off, {"request_id": "r", "label": 1})
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "prediction_log_off"
    assert "--prediction-log" in response.get_json()["error"]["message"]

    client = make_app(base_config, str(db)).test_client()
    assert client.post("/feedback", json={"request_id": "r", "label": 1}).status_code == 401  # auth like /predict
    response = feedback(client, [{"request_id": "r", "label": 1}, {"row": -1, "label": [1], "extra": 0}, 7])
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_feedback"
    assert [(d["row"], d["field"], d["issue"]) for d in error["details"]] == [
        (1, "request_id", "invalid"), (1, "row", "invalid"), (1, "label", "invalid"), (1, "extra", "unknown_field"),
        (2, None, "not_an_object"),
    ]
    assert not db.exists()  # a bad body never reaches the database
    response = client.post("/feedback", data=b"{", headers={**LOG_AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400
    documented = client.get("/openapi.json", headers=LOG_AUTH).get_json()
    assert {"200", "409", "422"} <= set(documented["paths"]["/feedback"]["post"]["responses"])


def test_an_outage_loses_no_answered_request(base_config, db, passengers):  # LD-01
    app = make_app(base_config, str(db))
    locked = sqlite_locked(db)
    outage(app, locked.__enter__, lambda: locked.__exit__(None, None, None), passengers)


def test_a_full_queue_drops_and_counts_and_shutdown_counts_the_rest(base_config, db, passengers):
    app = make_app(base_config, str(db))
    state = app.extensions[EXTENSION]
    recorder = Recorder(state.predlog.log, state.metrics, state.log, capacity=10)
    app.extensions[EXTENSION] = dataclasses.replace(state, predlog=recorder)
    client = app.test_client()
    predict(client, PASSENGER)
    wait_for(lambda: outcome(app, "written") == 1)
    with sqlite_locked(db):
        answered = 1 + sum(len(predict(client, passengers[:4])["predictions"]) for _ in range(5))  # 20 records, room for 10
        assert outcome(app, "dropped") == 12  # whole requests: 4 + 4 fit, then 4 + 4 + 4 do not
        recorder.close(timeout=0.5)  # shutdown while the database is still locked
    assert outcome(app, "written") == 1 and outcome(app, "failed") == 8
    assert accounted(app) == answered
    assert len(read_log(str(db))) == 1


def test_export_log_writes_a_training_set(base_config, db, passengers, tmp_path):
    app = make_app(base_config, str(db))
    client = app.test_client()
    answer = predict(client, passengers[:4], request_id="export-1")
    wait_for(lambda: outcome(app, "written") == 4)
    assert feedback(client, [{"request_id": "export-1", "row": 1, "label": 1},
                             {"request_id": "export-1", "row": 2, "label": 0}]).status_code == 200

    out = tmp_path / "train.parquet"
    assert main(["export-log", str(db), "-o", str(out), "--with-feedback"]) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["request_id", "row", "ts", "model_version", *app.extensions[EXTENSION].holder.model.schema.columns,
                                   "prediction", "label", "label_ts"]
    assert frame["prediction"].tolist() == answer["predictions"]
    assert frame["fare"].tolist() == pytest.approx([p["fare"] for p in passengers[:4]])
    assert frame["label"].isna().tolist() == [True, False, False, True]

    labelled = tmp_path / "labelled.csv"
    assert main(["export-log", str(db), "-o", str(labelled), "--labelled-only", "--since", "2000-01-01T00:00:00Z"]) == 0
    frame = pd.read_csv(labelled)
    assert frame["row"].tolist() == [1, 2] and frame["label"].tolist() == [1, 0]
    assert main(["export-log", str(db), "-o", str(tmp_path / "none.csv"), "--until", "2000-01-01"]) == 0
    assert pd.read_csv(tmp_path / "none.csv").empty

    assert main(["export-log", str(db), "-o", str(tmp_path / "x.csv"), "--since", "last tuesday"]) == 2
    assert main(["export-log", str(tmp_path / "missing.db"), "-o", str(tmp_path / "x.csv")]) == 2
    assert main(["export-log", "nosuchdialect://x", "-o", str(tmp_path / "x.csv")]) == 2
    assert main(["export-log", str(db), "-o", str(tmp_path / "x.xlsx")]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_bad_prediction_log_setting_fails_at_start(base_config, tmp_path):
    from blackbox import UsageError

    with pytest.raises(UsageError, match="directory"):
        create_app({**base_config, "PREDICTION_LOG": str(tmp_path / "no" / "such" / "dir" / "log.db")})
    with pytest.raises(UsageError, match="PREDICTION_LOG"):
        create_app({**base_config, "PREDICTION_LOG": 42})


def test_concurrent_first_use_creates_the_tables_once(db):
    logs = [PredictionLog(str(db)) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda log: log.ensure_tables(), logs))
    assert read_log(str(db)).empty


@pytest.fixture
def writing(db, monkeypatch):
    """Another worker writing to the new file, still in rollback-journal mode, as when it switches the file to WAL
    or creates the tables; and the log's pauses, recorded on a clock of their own (the writer commits at the first)."""
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    clock = SimpleNamespace(now=0.0, pauses=[], release=True)

    def pause(seconds: float) -> None:
        clock.pauses.append(seconds)
        clock.now += seconds
        if clock.release and holder.in_transaction:
            holder.execute("COMMIT")

    monkeypatch.setattr(predlog, "time", SimpleNamespace(monotonic=lambda: clock.now, sleep=pause))
    yield clock
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


def test_first_use_waits_for_another_worker_writing_instead_of_failing(db, writing):
    """SQLite answers "database is locked" at once to a connection switching to WAL while another holds the write
    lock, without waiting busy_timeout (several gunicorn workers' first use of one file): the log waits as long."""
    log = PredictionLog(str(db))
    log.ensure_tables()
    assert writing.pauses  # it waited for the other worker
    assert read_log(str(db)).empty
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    log.dispose()


def test_first_use_gives_up_after_the_busy_timeout_and_the_caller_retries(db, writing):
    writing.release = False  # the other worker holds on
    log = PredictionLog(str(db))
    with pytest.raises(TRANSIENT, match="database is locked"):
        log.ensure_tables()
    assert sum(writing.pauses) >= predlog.SQLITE_BUSY_MS / 1000  # as long as busy_timeout would have waited
    writing.release = True
    writing.pauses.clear()
    log.ensure_tables()  # once the lock is gone (the recorder's next try)
    assert read_log(str(db)).empty
    log.dispose()


# ---------------------------------------------------------------- gunicorn, several workers on one file

@pytest.mark.slow
def test_gunicorn_workers_share_one_sqlite_file_and_flush_on_sigterm(served_artifact, serving_keys, db, passengers, tmp_path):
    """LD-02: concurrent requests over several workers, all logged; rows answered while the file is locked
    and SIGTERM arrives are written during the graceful stop, once the lock goes."""
    server = Server([str(served_artifact), "--workers", "2", "--trusted-keys", str(serving_keys[1]),
                     "--prediction-log", str(db)], tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        bodies = [passengers[i % 40: i % 40 + 1 + i % 3] for i in range(200)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda body: call(server.url + "/predict", body), bodies))
        assert [status for status, _ in answers] == [200] * len(bodies)
        assert len(predict_pids(server)) == 2
        wait_for(lambda: server.metric("blackbox_prediction_log_rows_total", outcome="written") == sum(map(len, bodies)))

        locked = sqlite_locked(db)
        locked.__enter__()
        try:
            late = [passengers[:2]] * 20
            with ThreadPoolExecutor(4) as pool:
                answers += list(pool.map(lambda body: call(server.url + "/predict", body), late))
            assert [status for status, _ in answers] == [200] * (len(bodies) + len(late))
            assert server.metric("blackbox_prediction_log_queue_rows") == 2 * len(late)  # all waiting on the lock
            server.process.send_signal(15)
            time.sleep(1.0)  # the workers are draining, their writers retrying against the lock
        finally:
            locked.__exit__(None, None, None)
        assert server.process.wait(timeout=20) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()

    ids = [json.loads(body)["request_id"] for _, body in answers]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        logged = conn.execute("SELECT request_id, COUNT(*) FROM blackbox_predictions GROUP BY request_id").fetchall()
    assert dict(logged) == {rid: len(body) for rid, body in zip(ids, bodies + late, strict=True)}
    text = server.log.read_text()
    closed = [json.loads(line) for line in text.splitlines() if '"event":"prediction_log_closed"' in line]
    assert len(closed) == 2 and all(line["dropped"] == line["failed"] == 0 for line in closed)


# ---------------------------------------------------------------- every process model

def test_rows_no_writer_ever_took_are_counted_failed_at_close(base_config, db, passengers, monkeypatch):
    """A queue that is never drained (no writer runs in this process) is counted, not silently lost."""
    monkeypatch.setattr(Recorder, "_run", lambda self: None)  # a writer that ends at once, as after a fork
    app = make_app(base_config, str(db))
    client = app.test_client()
    answered = sum(len(predict(client, passengers[: 1 + i % 3])["predictions"]) for i in range(6))
    app.extensions[EXTENSION].predlog.close(timeout=0.2)
    assert outcome(app, "written") == 0 and outcome(app, "failed") == answered
    assert app.extensions[EXTENSION].metrics.registry.get_sample_value("blackbox_prediction_log_queue_rows") == 0


def _gunicorn_log_rows(args: list[str], env: dict, db: Path, log: Path, passengers) -> tuple[int, int, set[int], list[dict]]:
    """Serve with plain gunicorn and two workers, predict until both answered, SIGTERM.

    Returns the records answered, the rows logged, the workers' pids and the ``prediction_log_closed`` events.
    """
    import signal
    import subprocess
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", *args, "--workers", "2", "--bind", f"127.0.0.1:{port}",
                                    "--graceful-timeout", "10", "serving:create_app()"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_url(url + "/ready", process, seconds=60, log=log)
        answered, pids = 0, set()
        for start in range(0, 40 * 8, 8):  # rounds of 8 concurrent requests until both workers have answered
            bodies = [passengers[i % 40: i % 40 + 1 + i % 3] for i in range(start, start + 8)]
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda body: call(url + "/predict", body), bodies))
            assert [status for status, _ in answers] == [200] * len(bodies), answers
            answered += sum(map(len, bodies))
            pids = {json.loads(line)["pid"] for line in log.read_text().splitlines()
                    if line.startswith("{") and '"path":"/predict"' in line}
            if len(pids) == 2:
                break
        assert len(pids) == 2, "both workers should have answered"
        try:
            wait_for(lambda: _logged(db) == answered, seconds=20)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    closed = [json.loads(line) for line in log.read_text().splitlines() if '"event":"prediction_log_closed"' in line]
    return answered, _logged(db), pids, closed


def _logged(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM blackbox_predictions").fetchone()[0]
    except sqlite3.OperationalError:  # no table yet
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_plain_gunicorn_with_the_app_factory_logs_every_answer(preload, served_artifact, serving_keys, db, passengers, tmp_path):
    """``gunicorn [--preload] 'serving:create_app()'``: each worker writes its own answers (its writer starts in it)."""
    env = {**child_env(), "BLACKBOX_ARTIFACT": str(served_artifact), "BLACKBOX_PREDICTION_LOG": str(db),
           "BLACKBOX_TRUSTED_KEYS": str(serving_keys[1])}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    answered, logged, pids, closed = _gunicorn_log_rows(["--preload"] if preload else [], env, db, tmp_path / "server.log", passengers)
    assert logged == answered
    assert {line["pid"] for line in closed} >= pids and all(line["dropped"] == line["failed"] == 0 for line in closed)
