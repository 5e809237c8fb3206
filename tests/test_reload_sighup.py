"""SIGHUP reloads of ``blackbox serve FILE`` (serving/gunicorn_app.py): coalesced, counted, and named by the user's path.

Real servers on 127.0.0.1 (2 workers), each stopped at the end; waits are generous bounds against hangs.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time

import pytest

from _helpers import PASSENGER, Server, call, variant, wait_for

pytestmark = pytest.mark.slow


def version(server: Server) -> str:
    """The version that answers /predict (a new worker may hold a request while its model loads: a bound, not a speed)."""
    status, body = call(server.url + "/predict", PASSENGER, timeout=30)
    assert status == 200, body[:300]
    return str(json.loads(body)["model"]["version"])


def settled(server: Server, quiet: float = 4.0, seconds: float = 90) -> None:
    """Until no line but request lines was logged for ``quiet`` seconds (no reload, no worker booting or exiting)."""
    deadline = time.monotonic() + seconds
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = sum('"event":"request"' not in line for line in server.log.read_text().splitlines())
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.2)
    pytest.fail(f"the server did not settle in {seconds} s:\n{server.log.read_text()[-3000:]}")


def test_sighups_in_quick_succession_are_coalesced_and_the_model_keeps_serving(artifact, tmp_path):
    served = tmp_path / "served.bbx"
    shutil.copy(artifact, served)
    newer = variant(artifact, tmp_path, "2.0.0")
    server = Server([str(served), "--workers", "2"], tmp_path / "server.log")
    failures: list[tuple[int, bytes]] = []
    answered = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                status, body = call(server.url + "/predict", PASSENGER, timeout=30)
            except OSError as exc:  # refused, reset or timed out: not served either
                status, body = 0, repr(exc).encode()
            if status != 200:
                failures.append((status, body[:300]))
            answered += 1

    clients = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    try:
        server.wait_ready(workers=2)
        for client in clients:
            client.start()
        shutil.copy(newer, served)
        for _ in range(5):  # five within one second
            server.process.send_signal(signal.SIGHUP)
            time.sleep(0.2)
        wait_for(lambda: {version(server) for _ in range(4)} == {"2.0.0"}, 90, server=server, what="2.0.0 served")
        settled(server)
        stop.set()
        for client in clients:
            client.join(timeout=40)
        log = server.log.read_text()
        assert server.stop() == 0
    finally:
        stop.set()
        server.kill()
    cycles = log.count("Hang up: Master")
    assert 1 <= cycles <= 2, log[-4000:]
    assert log.count("Booting worker") <= 2 + 2 * cycles
    assert answered > 0 and failures == [], failures[:5]


@pytest.mark.parametrize("kind", ["corrupt", "unsigned"])
def test_a_refused_reload_is_counted_and_names_the_served_path(kind, artifact, tmp_path):
    from blackbox.artifact import pack, unpack

    served = tmp_path / "served.bbx"
    shutil.copy(artifact, served)
    newer = variant(artifact, tmp_path, "2.0.0")
    parts = unpack(newer.read_bytes())
    bad = newer.read_bytes()[:-200] if kind == "corrupt" else pack(parts.manifest_bytes, parts.payload, b"")
    server = Server([str(served), "--workers", "2"], tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        assert server.metric("blackbox_sighup_reloads_total", model="titanic", outcome="refused") == 0
        served.write_bytes(bad)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: '"event":"reload_failed"' in server.log.read_text(), 60, server=server, what="reload_failed")
        wait_for(lambda: server.metric("blackbox_sighup_reloads_total", model="titanic", outcome="refused") == 1, 20,
                 server=server, what="the refused reload counted")
        failed = next(json.loads(line) for line in server.log.read_text().splitlines()
                      if '"event":"reload_failed"' in line)
        assert str(served) in failed["reason"], failed
        assert "blackbox-serve-" not in failed["reason"] and ".candidate-" not in failed["reason"], failed
        assert version(server) == "1.0.0"

        shutil.copy(newer, served)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: {version(server) for _ in range(4)} == {"2.0.0"}, 60, server=server, what="2.0.0 served")
        assert server.metric("blackbox_sighup_reloads_total", model="titanic", outcome="ok") == 1
        assert server.metric("blackbox_sighup_reloads_total", model="titanic", outcome="refused") == 1
        assert server.stop() == 0
    finally:
        server.kill()
