"""The drift monitor's state outside the request: in a process forked from one serving (``gunicorn --preload``), and
when a background refresh fails.

A fork copies a lock in whatever state it is in, and no thread but the forking one: a lock another thread held at
that instant stays held in the child forever. The children here always ``os._exit`` and are killed after a
generous bound, so a hang fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from blackbox.monitoring import drift
from serving import create_app

from _helpers import wait_for


def in_child(body: Callable[[], int], seconds: float = 30) -> int:
    """Run ``body`` in a forked child; its exit code (1: it raised), or fail if it did not end within ``seconds``."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = body()
        finally:
            os._exit(code)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not answer within {seconds} s (a lock held at the fork?)")


def test_a_monitor_locked_by_another_thread_at_the_fork_observes_and_reports_in_the_child(base_config, passengers):
    """Before: the child's /predict blocked forever on the monitor's lock (the parent's thread held it at the fork)."""
    app = create_app({**base_config, "DRIFT_INTERVAL": 0})
    client = app.test_client()
    assert client.post("/predict", json=passengers[:3]).status_code == 200
    monitor = app.extensions["blackbox"].monitor
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with monitor._lock:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(10)

    def child() -> int:
        if client.post("/predict", json=passengers[3:8]).status_code != 200:
            return 2
        body = client.get("/drift").get_json()
        return 0 if body["window"]["records"] == 8 and body["worker"]["pid"] == os.getpid() else 3

    try:
        assert in_child(child) == 0
    finally:
        release.set()
        holder.join(10)
    assert client.get("/drift").get_json()["window"]["records"] == 3  # the parent's window is its own


def test_a_holder_whose_event_was_locked_at_the_fork_takes_a_new_model_in_the_child(base_config, served_model):
    """The follower's swap sets the holder's event (under its lock) in the parent's thread: the child's must be its own.

    Before: the child's swap (``holder.model = ...``, as its follower does) blocked forever on the event's lock.
    """
    app = create_app({**base_config, "DRIFT_INTERVAL": 0})
    holder = app.extensions["blackbox"].holder
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder._arrived._cond:  # the lock Event.set() takes: a swap in the parent at the fork
            held.set()
            release.wait(60)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(10)

    def child() -> int:
        holder.model = served_model
        return 0 if holder.require() is served_model else 2

    try:
        assert in_child(child) == 0
    finally:
        release.set()
        thread.join(10)


def test_a_refresh_that_raises_an_unexpected_error_is_logged_and_the_gauges_refresh_again(
    base_config, passengers, monkeypatch, caplog,
):
    """The fault is injected (validation refuses every odd record before it reaches the window): one refresh's
    comparison raises a ValueError, as a bug or an unforeseen pandas corner would.

    Before: the drift thread died on it silently, and the gauges stayed stale for the life of the worker.
    """
    real, failures = drift.compare, []

    def failing_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise ValueError("cannot reindex on an axis with duplicate labels")
        return real(*args, **kwargs)

    monkeypatch.setattr(drift, "compare", failing_once)
    before = set(threading.enumerate())
    app = create_app({**base_config, "DRIFT_INTERVAL": 0.05})
    (refresher,) = [thread for thread in set(threading.enumerate()) - before if thread.name == "blackbox-drift"]
    client = app.test_client()
    assert client.post("/predict", json=passengers[:20]).status_code == 200

    def published() -> bool:  # set by the refresher alone: nothing here asks GET /drift
        return 'blackbox_feature_psi{feature="age"' in client.get("/metrics").get_data(as_text=True)

    wait_for(published, 20, what="the gauges refreshed after the failed round")
    assert failures and refresher.is_alive()
    lines = [json.loads(message) for message in caplog.messages if message.startswith("{")]
    failed = [line for line in lines if line["event"] == "drift_failed"]
    assert len(failed) == 1, failed
    assert failed[0]["code"] == "internal_error" and failed[0]["model"] == "titanic", failed
    assert "ValueError" in failed[0]["reason"] and "duplicate labels" in failed[0]["reason"], failed
    assert "ValueError" in failed[0]["traceback"], failed


def test_a_refresh_that_keeps_failing_is_logged_once_and_its_recovery_once(base_config, passengers, monkeypatch, caplog):
    """Before: every round (each DRIFT_INTERVAL, 30 s by default) logged the same ERROR and traceback again.

    Only this app's refresher sees the fault: other tests' apps live on in this process, their refreshers too.
    """
    real, broken = drift.compare, threading.Event()
    broken.set()
    rounds, mine = [], []

    def compare(*args, **kwargs):
        if threading.current_thread() not in mine:
            return real(*args, **kwargs)
        rounds.append(broken.is_set())
        if broken.is_set():
            raise ValueError("cannot reindex on an axis with duplicate labels")
        return real(*args, **kwargs)

    monkeypatch.setattr(drift, "compare", compare)
    before = set(threading.enumerate())
    app = create_app({**base_config, "DRIFT_INTERVAL": 0.02})
    mine += [thread for thread in set(threading.enumerate()) - before if thread.name == "blackbox-drift"]
    assert len(mine) == 1
    client = app.test_client()
    assert client.post("/predict", json=passengers[:20]).status_code == 200
    wait_for(lambda: len(rounds) >= 15, 20, what="15 failing refresh rounds")

    def events(name: str) -> list[dict]:
        return [line for line in map(json.loads, filter(lambda m: m.startswith("{"), caplog.messages)) if line["event"] == name]

    assert len(events("drift_failed")) == 1, events("drift_failed")
    broken.clear()
    wait_for(lambda: events("drift_recovered"), 20, what="the recovery logged")
    (recovered,) = events("drift_recovered")
    assert recovered["model"] == "titanic" and recovered["rounds_failed"] >= 15, recovered
    broken.set()
    assert client.post("/predict", json=passengers[20:30]).status_code == 200  # new records: the next round compares again
    wait_for(lambda: len(events("drift_failed")) == 2, 20, what="a new failure after the recovery logged again")
    time.sleep(0.3)
    assert len(events("drift_failed")) == 2 and len(events("drift_recovered")) == 1
