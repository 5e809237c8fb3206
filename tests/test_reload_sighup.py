"""SIGHUP reloads of ``blackbox serve FILE`` (serving/gunicorn_app.py): coalesced, counted, named by the user's path,
and handed over: the old workers serve until the new ones have their model, and stay if the new ones fail.

Real servers on 127.0.0.1 (2 workers), each stopped at the end; waits are generous bounds against hangs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import blackbox

from _helpers import PASSENGER, Server, call, user_module, variant, wait_for

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
        wait_for(lambda: server.metric("blackbox_sighup_reloads_total", model="titanic", outcome="ok") == 1, 20,
                 server=server, what="the reload counted once the new workers are ready")
        assert server.metric("blackbox_sighup_reloads_total", model="titanic", outcome="refused") == 1
        assert server.stop() == 0
    finally:
        server.kill()


class Load:
    """Client threads posting ``record`` in a loop, and one polling /ready, each answer kept with its latency."""

    def __init__(self, server: Server, record: dict, clients: int = 3) -> None:
        self.server, self.record = server, record
        self.answers: list[tuple[float, int, str]] = []  # (seconds, status, version or error) of each /predict
        self.started: list[float] = []  # when each of them was sent (time.time(), as the server log)
        self.ready: list[tuple[int, bytes]] = []  # (status, body) of each /ready
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._predict, daemon=True) for _ in range(clients)]
        self.threads.append(threading.Thread(target=self._ready, daemon=True))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=40)

    def _predict(self) -> None:
        while not self.stop.is_set():
            start, sent = time.monotonic(), time.time()
            try:
                status, body = call(self.server.url + "/predict", self.record, timeout=30)
                said = str(json.loads(body)["model"]["version"]) if status == 200 else body[:200].decode()
            except OSError as exc:  # refused, reset or timed out: not served either
                status, said = 0, repr(exc)
            self.answers.append((time.monotonic() - start, status, said))
            self.started.append(sent)

    def _ready(self) -> None:
        while not self.stop.is_set():
            try:
                self.ready.append(call(self.server.url + "/ready", timeout=30))
            except OSError as exc:
                self.ready.append((0, repr(exc).encode()))
            time.sleep(0.05)

    def versions(self, last: int) -> set[str]:
        return {said for _, _, said in self.answers[-last:]}


def booted(server: Server) -> list[int]:
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", server.log.read_text())]


def test_a_reload_under_load_hands_over_without_a_gap(artifact, tmp_path):
    """Before: the new workers took connections while loading: /predict waited up to 10 s and /ready said 503."""
    served = tmp_path / "served.bbx"
    shutil.copy(artifact, served)
    newer = variant(artifact, tmp_path, "2.0.0")
    server = Server([str(served), "--workers", "2"], tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        with Load(server, PASSENGER) as load:
            wait_for(lambda: len(load.answers) >= 20, 30, server=server, what="answers before the reload")
            before = len(load.answers)
            shutil.copy(newer, served)
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: len(load.answers) > before + 20 and load.versions(20) == {"2.0.0"}, 90, server=server,
                     what="2.0.0 served")
            settled(server)
            after = len(load.answers)
            wait_for(lambda: len(load.answers) >= after + 20, 30, server=server, what="answers after the hand-over")
        log = server.log.read_text()
        assert server.stop() == 0
    finally:
        server.kill()
    slowest = max(seconds for seconds, _, _ in load.answers)
    failed = [(status, said) for _, status, said in load.answers if status != 200]
    not_ready = [body[:200] for status, body in load.ready if status != 200]
    print(f"\nreload under load: {len(load.answers)} answers, slowest {slowest:.2f} s, {len(failed)} failed, "
          f"/ready {len(not_ready)} of {len(load.ready)} not 200")
    assert failed == [], failed[:5]
    assert not_ready == [], not_ready[:5]
    slow = [(time.strftime("%H:%M:%S", time.gmtime(sent)) + f".{int(sent % 1 * 1000):03d}", round(answer[0], 2))
            for sent, answer in zip(load.started, load.answers) if answer[0] >= 1.0]
    # A request a loading worker took would wait for its load (READY_WAIT, 10 s); 2 s failed once at load ~3 on 2 cores.
    assert slowest < 5.0, (slow[:10], [line for line in log.splitlines() if '"event":"request"' not in line][-30:])
    assert {said for _, _, said in load.answers[after:]} == {"2.0.0"}
    assert log.count("Booting worker") == 4, log[-3000:]


TRAP_SOURCE = '''
import os
import signal
import sys
import time

from sklearn.base import BaseEstimator, TransformerMixin


class WorkerTrap(BaseEstimator, TransformerMixin):
    """Identity; unpickled outside the fitting process and outside ``python -I``, ``mode`` segv or hang does that.

    blackbox's isolated check runs ``python -I``, so the artifact passes it, and a serving worker then crashes or hangs.
    """

    def __init__(self, mode="pass"):
        self.mode = mode

    def fit(self, X, y=None):
        self.home_pid_ = os.getpid()
        return self

    def transform(self, X):
        return X

    def __setstate__(self, state):
        super().__setstate__(state)
        if not sys.flags.isolated and os.getpid() != self.home_pid_:
            if self.mode == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            elif self.mode == "hang":
                time.sleep(3600)
            elif self.mode == "slow":
                time.sleep(8)
            elif self.mode == "raise":
                raise RuntimeError("WorkerTrap: refusing to load in a serving worker")
'''
RECORD = {"a": 0.5, "b": -0.1}


@pytest.fixture(scope="module")
def trapped(tmp_path_factory):
    """``trapped(version, mode)``: a signed two-feature artifact ``trap``; a serving worker loading it segfaults,
    hangs, raises or takes 8 s (``mode`` "segv", "hang", "raise", "slow"), the isolated check passes it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    root = tmp_path_factory.mktemp("worker_traps")
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    y = (X.a + X.b > 0).astype(int)
    with user_module(tmp_path_factory.mktemp("worker_trap_src"), "bbx_worker_trap", TRAP_SOURCE) as module:
        def make(version: str, mode: str = "pass") -> Path:
            pipeline = Pipeline([("trap", module.WorkerTrap(mode)), ("clf", LogisticRegression())]).fit(X, y)
            return blackbox.save(pipeline, root / f"trap-{version}.bbx", train_data=X, name="trap", version=version)

        yield make


@pytest.mark.parametrize("mode", ["segv", "raise"])
def test_new_workers_that_fail_after_the_vetting_leave_the_old_ones_serving(mode, trapped, tmp_path):
    """Before (segv): the old workers were retired at once and the new ones crashed in a loop: nothing served."""
    served = tmp_path / "served.bbx"
    shutil.copy(trapped("1.0.0"), served)
    crashing, newer = trapped("2.0.0", mode), trapped("3.0.0")
    server = Server([str(served), "--workers", "2", "--load-timeout", "20"], tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        old = booted(server)
        with Load(server, RECORD, clients=2) as load:
            shutil.copy(crashing, served)
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: '"event":"reload_failed"' in server.log.read_text(), 40, server=server,
                     what="the crashing workers' reload failed")
            wait_for(lambda: server.metric("blackbox_sighup_reloads_total", model="trap", outcome="refused") == 1, 20,
                     server=server, what="the failed hand-over counted")
            settled(server)
            failed = next(json.loads(line) for line in server.log.read_text().splitlines()
                          if '"event":"reload_failed"' in line)
            assert str(served) in failed["reason"] and "isolated" in failed["reason"], failed
            assert ("exited" if mode == "segv" else "refusing to load") in failed["reason"], failed
            assert len(booted(server)) == 4, server.log.read_text()[-3000:]  # two new ones, not replaced in a loop
            assert load.versions(10) == {"1.0.0"}
            assert server.metric("blackbox_sighup_reloads_total", model="trap", outcome="ok") == 0

            # A worker started later (one exits) loads the model that serves, not the file that crashed.
            os.kill(old[0], signal.SIGTERM)
            wait_for(lambda: len(booted(server)) == 5, 30, server=server, what="the exited worker replaced")
            wait_for(lambda: server.log.read_text().count('"event":"model_loaded"') == 3, 30, server=server,
                     what="the replacement's model loaded")
            settled(server)
        assert server.process.poll() is None
        slowest = max(seconds for seconds, _, _ in load.answers)
        bad = [(status, said) for _, status, said in load.answers if (status, said) != (200, "1.0.0")]
        print(f"\ncrashing new workers: {len(load.answers)} answers, slowest {slowest:.2f} s, {len(bad)} not 1.0.0")
        assert load.answers and bad == [], bad[:5]

        shutil.copy(newer, served)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: {_version(server) for _ in range(4)} == {"3.0.0"}, 60, server=server, what="3.0.0 served")
        wait_for(lambda: server.metric("blackbox_sighup_reloads_total", model="trap", outcome="ok") == 1, 20,
                 server=server, what="the good reload counted")
        assert server.stop() == 0
    finally:
        server.kill()


def test_new_workers_that_hang_while_loading_are_stopped_at_the_load_timeout(trapped, tmp_path):
    """The sync worker (--threads 1) holds too. Before: the old workers were retired at once; nothing served."""
    served = tmp_path / "served.bbx"
    shutil.copy(trapped("1.0.0"), served)
    server = Server([str(served), "--workers", "2", "--threads", "1", "--load-timeout", "10"], tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        with Load(server, RECORD, clients=2) as load:
            shutil.copy(trapped("2.0.0", "hang"), served)
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: '"event":"reload_failed"' in server.log.read_text(), 60, server=server,
                     what="the hanging workers' reload failed")
            new = booted(server)[2:]
            assert len(new) == 2, server.log.read_text()[-3000:]
            wait_for(lambda: all(f"Worker exiting (pid: {pid})" in server.log.read_text() for pid in new), 30,
                     server=server, what="the hanging workers stopped")
            settled(server)
            failed = next(json.loads(line) for line in server.log.read_text().splitlines()
                          if '"event":"reload_failed"' in line)
            # whichever deadline ends it first: the master's for the hand-over, or the worker's for its load
            assert re.search(r"(not ready|did not load) within 10 s", failed["reason"]), failed
        assert len(booted(server)) == 4 and server.process.poll() is None
        bad = [(status, said) for _, status, said in load.answers if (status, said) != (200, "1.0.0")]
        assert load.answers and bad == [], bad[:5]
        assert server.stop() == 0
    finally:
        server.kill()


@pytest.mark.parametrize("mode", ["slow", "hang", "segv"], ids=["finished", "abandoned", "new-ones-crash"])
def test_an_old_worker_killed_during_a_hand_over_is_replaced_once_the_hand_over_ends(mode, trapped, tmp_path):
    """The new generation loads slowly (8 s: the hand-over finishes), hangs (abandoned at the load timeout) or
    crashes (abandoned when the first one exits); meanwhile an old worker is killed (-9). It is not replaced during
    the hand-over (the new generation is coming), and the server ends up with --workers workers, answering."""
    served = tmp_path / "served.bbx"
    shutil.copy(trapped("1.0.0"), served)
    server = Server([str(served), "--workers", "2", "--load-timeout", "20"], tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        old = booted(server)
        shutil.copy(trapped("2.0.0", mode), served)
        server.process.send_signal(signal.SIGHUP)
        if mode == "segv":  # before the new ones crash: while the master vets the file
            wait_for(lambda: "Hang up: Master" in server.log.read_text(), 30, server=server, what="the reload began")
        else:  # the new ones take 8 s or more to load: the hand-over is under way
            wait_for(lambda: len(booted(server)) == 4, 60, server=server, what="the new generation started")
        os.kill(old[0], signal.SIGKILL)
        ended = "the new workers are ready" if mode == "slow" else "the running workers keep serving the old model"
        wait_for(lambda: ended in server.log.read_text(), 60, server=server, what="the hand-over ended")
        wait_for(lambda: len(workers(server)) == 2, 60, server=server, what="two workers again")
        settled(server)
        log = server.log.read_text()
        assert len(workers(server)) == 2, log[-3000:]
        if mode == "slow":
            assert len(booted(server)) == 4, log[-3000:]  # the new generation is whole: nothing to replace
        else:  # one replacement, started only once the hand-over was abandoned
            assert len(booted(server)) == 5, log[-3000:]
            assert log.index(ended) < log.index(f"Booting worker with pid: {booted(server)[4]}"), log[-3000:]
        expected = "2.0.0" if mode == "slow" else "1.0.0"
        assert {_version(server) for _ in range(6)} == {expected}
        assert server.stop() == 0
    finally:
        server.kill()


def workers(server: Server) -> set[int]:
    """The master's child processes (once the server has settled: its workers)."""
    pid = server.process.pid
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _version(server: Server) -> str:
    status, body = call(server.url + "/predict", RECORD, timeout=30)
    assert status == 200, body[:300]
    return str(json.loads(body)["model"]["version"])
