"""Model code that crashes or hangs never takes ``blackbox serve`` down.

The artifacts here embed by value a small transformer (:data:`TRAP_SOURCE`)
that passes its input through in the process that fitted it and, in any other
process, segfaults, hangs or sleeps while unpickling. The test process saves
them (so saving works), and every real gunicorn server started here meets the
trap: at start, at a store-follow reload and at SIGHUP. Servers bind
127.0.0.1, use short timeouts and are always stopped.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import blackbox
from blackbox.artifact import pack, unpack

from _helpers import Server, call, user_module, wait_for, wait_for_url

pytestmark = pytest.mark.slow

TRAP_SOURCE = '''
import os
import signal
import time

from sklearn.base import BaseEstimator, TransformerMixin


class Trap(BaseEstimator, TransformerMixin):
    """Identity where it was fitted; elsewhere ``mode``: segv or hang on transform, slow to unpickle."""

    def __init__(self, mode="pass", seconds=0.0):
        self.mode = mode
        self.seconds = seconds

    def fit(self, X, y=None):
        self.home_pid_ = os.getpid()
        return self

    def transform(self, X):
        if os.getpid() != self.home_pid_:
            if self.mode == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            elif self.mode == "hang":
                time.sleep(3600)
        return X

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.mode == "slow" and os.getpid() != self.home_pid_:
            time.sleep(self.seconds)
'''


@pytest.fixture(scope="module")
def trap_module(tmp_path_factory):
    with user_module(tmp_path_factory.mktemp("trapsrc"), "bbx_trap_feats", TRAP_SOURCE) as module:
        yield module


@pytest.fixture(scope="module")
def build(trap_module, tmp_path_factory):
    """``build(mode, version, seconds=0)``: a signed two-feature artifact named ``trap`` with the trap embedded."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    root = tmp_path_factory.mktemp("traps")
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    y = (X.a + X.b > 0).astype(int)

    def make(mode: str, version: str, seconds: float = 0.0) -> Path:
        pipeline = Pipeline([("trap", trap_module.Trap(mode, seconds)), ("clf", LogisticRegression())]).fit(X, y)
        path = blackbox.save(pipeline, root / f"{mode}-{version}.bbx", train_data=X, name="trap", version=version)
        assert blackbox.inspect(path)["by_value"] == ["bbx_trap_feats"]
        return path

    return make


RECORD = {"a": 0.5, "b": -0.1}


def _exit(server: Server, seconds: float = 60) -> tuple[int, str]:
    try:
        code = server.process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        pytest.fail(f"server still running after {seconds} s:\n{server.log.read_text()}")
    return code, server.log.read_text()


def _kill(server: Server) -> None:
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def _version(server: Server) -> str:
    status, body = call(server.url + "/predict", RECORD)
    assert status == 200, body
    return json.loads(body)["model"]["version"]


# -- the isolated child ----------------------------------------------------------------------


def test_verify_names_the_signal_of_a_crash_and_the_time_of_a_hang(build):
    crashed = blackbox.verify(build("segv", "1.0.0"), block=())
    assert (crashed.ok, crashed.status, crashed.exit_code) == (False, "self_test_failed", 7)
    assert "killed by SIGSEGV" in crashed.message
    hung = blackbox.verify(build("hang", "1.0.0"), block=(), timeout=2)
    assert (hung.status, hung.exit_code) == ("self_test_failed", 7) and "2 s" in hung.message
    with pytest.raises(blackbox.SelfTestError, match="SIGSEGV"):
        crashed.raise_for_status()
    assert blackbox.verify(build("pass", "1.0.0"), block=()).ok


# -- at start --------------------------------------------------------------------------------


def test_serve_refuses_a_model_that_segfaults_on_its_golden_sample(build, tmp_path):
    server = Server([str(build("segv", "1.0.0")), "--workers", "1"], tmp_path / "server.log")
    code, output = _exit(server)
    assert code == 7, output
    assert "SIGSEGV" in output
    assert "Booting worker" not in output  # refused before any worker took it


def test_serve_refuses_a_model_that_hangs_naming_the_time_limit(build, tmp_path):
    server = Server([str(build("hang", "1.0.0")), "--workers", "1", "--load-timeout", "3"], tmp_path / "server.log")
    started = time.monotonic()
    code, output = _exit(server)
    assert code == 7, output
    assert "3 s" in output and "load-timeout" in output.lower()
    assert time.monotonic() - started < 45


def test_health_answers_while_a_slow_model_loads_and_ready_says_503_until_then_and_while_draining(build, tmp_path):
    server = Server([str(build("slow", "1.0.0", seconds=4)), "--workers", "1"], tmp_path / "server.log")
    try:
        first_health = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first_health is None:
            assert server.process.poll() is None, server.log.read_text()
            try:
                if call(server.url + "/health", timeout=1)[0] == 200:
                    first_health = time.monotonic()
            except OSError:
                time.sleep(0.1)
        assert first_health is not None, server.log.read_text()
        status, body = call(server.url + "/ready", timeout=2)
        assert status == 503 and "loading" in json.loads(body)["error"]["message"], body  # still unpickling
        server.wait_ready(seconds=60)
        ready_after = time.monotonic() - first_health
        assert _version(server) == "1.0.0"

        # Draining: a kept-alive connection still reaches the worker after SIGTERM; /ready says 503.
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/ready")
        answer = conn.getresponse()
        assert answer.status == 200
        answer.read()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        conn.request("GET", "/ready")
        answer = conn.getresponse()
        assert answer.status == 503 and "draining" in json.loads(answer.read())["error"]["message"]
        conn.close()
        assert server.process.wait(timeout=20) == 0
        print(f"\nslow model (4 s to unpickle): ready {ready_after:.1f} s after /health first answered")
    finally:
        _kill(server)


# -- SIGHUP -----------------------------------------------------------------------------------


def test_sighup_with_a_bad_file_on_disk_keeps_the_old_model_serving(build, tmp_path):
    good, newer = build("pass", "1.0.0"), build("pass", "2.0.0")
    served = tmp_path / "served.bbx"
    shutil.copy(good, served)
    parts = unpack(newer.read_bytes())
    bad = {
        "corrupt": newer.read_bytes()[:-200],
        "unsigned": pack(parts.manifest_bytes, parts.payload, b""),
        "segfaulting": build("segv", "3.0.0").read_bytes(),
    }
    server = Server([str(served), "--workers", "2", "--load-timeout", "20"], tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        for n, (kind, data) in enumerate(bad.items(), start=1):
            served.write_bytes(data)
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda n=n: server.log.read_text().count('"event":"reload_failed"') >= n, 60, server=server,
                     what=f"reload_failed after SIGHUP with a {kind} file")
            assert server.process.poll() is None, f"{kind}: {server.log.read_text()}"
            assert {_version(server) for _ in range(6)} == {"1.0.0"}, kind
        assert "SIGSEGV" in server.log.read_text()

        # A good file swapped in is taken by the new workers.
        served.write_bytes(newer.read_bytes())
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: {_version(server) for _ in range(6)} == {"2.0.0"}, 60, server=server, what="2.0.0 served after SIGHUP")
        assert server.stop() == 0
    finally:
        _kill(server)


# -- store: reload to a crashing release, and an unreachable store at start --------------------


@pytest.fixture
def trap_store(build, tmp_path) -> blackbox.Store:
    store = blackbox.Store.open(tmp_path / "store")
    for path in (build("pass", "1.0.0"), build("segv", "2.0.0"), build("hang", "3.0.0")):
        store.push(path)
    store.promote("trap", "1.0.0", "production")
    return store


def test_a_store_reload_to_a_crashing_or_hanging_release_keeps_the_old_model(trap_store, tmp_path):
    server = Server(["--store", str(trap_store.uri), "--model", "trap@production", "--poll-interval", "0.3",
                     "--workers", "2", "--load-timeout", "5", "--cache-dir", str(tmp_path / "cache")],
                    tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        for n, version in enumerate(("2.0.0", "3.0.0"), start=1):
            trap_store.promote("trap", version, "production")
            wait_for(lambda n=n: server.log.read_text().count('"event":"reload_failed"') >= 2 * n, 60, server=server,
                     what=f"both workers refusing {version}")
            assert {_version(server) for _ in range(6)} == {"1.0.0"}
            ready = json.loads(call(server.url + "/ready")[1])
            assert ready["reload"]["result"] == "failed"
        log = server.log.read_text()
        assert "SIGSEGV" in log and "5 s" in log
        assert log.count("Booting worker") == 2  # no worker died and was replaced
        assert server.stop() == 0
    finally:
        _kill(server)


def test_an_unreachable_store_at_start_is_live_not_ready_then_serves(trap_store, tmp_path):
    root = Path(trap_store.uri)
    away = root.with_name("store-away")
    root.rename(away)  # the store is gone when the server starts
    cache = tmp_path / "cache"
    args = ["--store", str(root), "--model", "trap@production", "--poll-interval", "0.3", "--workers", "1",
            "--cache-dir", str(cache)]
    server = Server(args, tmp_path / "server.log")
    try:
        wait_for_url(server.url + "/health", server.process, 60, log=server.log)
        status, body = call(server.url + "/ready")
        assert status == 503 and "No model could be loaded yet" in json.loads(body)["error"]["message"], body
        assert str(root) in json.loads(body)["error"]["message"]  # why: the store's own error
        away.rename(root)  # the store comes back
        server.wait_ready(seconds=60)
        assert _version(server) == "1.0.0"
        assert json.loads(call(server.url + "/ready")[1])["reload"]["served_from"] == "store"
        assert server.stop() == 0
    finally:
        _kill(server)

    # Down again at the next start: the copy pulled last time serves, and /ready says so.
    root.rename(away)
    server = Server(args, tmp_path / "again.log")
    try:
        server.wait_ready(seconds=60)
        assert _version(server) == "1.0.0"
        ready = json.loads(call(server.url + "/ready")[1])
        assert ready["reload"]["served_from"] == "cache", ready
        away.rename(root)
        wait_for(lambda: json.loads(call(server.url + "/ready")[1])["reload"].get("served_from") == "store", 30,
                 server=server, what="the store taking over from the cache")
        assert server.stop() == 0
    finally:
        _kill(server)
