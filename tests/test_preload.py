"""``gunicorn --preload 'serving:create_app()'``: every worker follows the store and refreshes its drift gauges.

Threads do not survive a fork: under ``--preload`` the app (with its follower and drift threads) is built in the
master, so each worker must start its own (serving/app.py). One real gunicorn on 127.0.0.1, 2 workers, polling
every 0.3 s, one of them replaced on the way; stopped with SIGTERM at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import blackbox

from _helpers import PASSENGER, call, child_env, free_port, variant, wait_for, wait_for_url

pytestmark = pytest.mark.slow


def test_under_preload_each_worker_follows_the_store_and_refreshes_drift(artifact, tmp_path):
    store = blackbox.Store.open(tmp_path / "store")
    store.push(artifact)
    store.push(variant(artifact, tmp_path, "2.0.0"))
    store.promote("titanic", "1.0.0", "production")
    env = {**child_env(), "BLACKBOX_STORE": str(store.uri), "BLACKBOX_MODEL": "titanic@production",
           "BLACKBOX_POLL_INTERVAL": "0.3", "BLACKBOX_DRIFT_INTERVAL": "0.3", "BLACKBOX_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each worker's /metrics is its own: what it shows, it refreshed itself
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--bind",
                                    f"127.0.0.1:{port}", "--graceful-timeout", "5", "serving:create_app()"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_url(url + "/ready", process, seconds=60, log=log)
        wait_for(lambda: len(booted(log)) == 2, 30, what="two workers booted")
        workers = booted(log)

        def drift_refreshed() -> bool:  # records scored, then the gauge set by the worker's own thread (no GET /drift)
            assert call(url + "/predict", [PASSENGER] * 5)[0] == 200
            return "blackbox_feature_psi{" in call(url + "/metrics")[1].decode()

        wait_for(drift_refreshed, 20, interval=0.3, what="a worker's drift gauges refreshed")

        # A worker that exits (here: told to) is replaced; what it leaves behind must not break the others.
        retired = min(workers)
        os.kill(retired, signal.SIGTERM)
        wait_for(lambda: len(booted(log)) == 3, 30, what="the retired worker replaced")
        workers = booted(log) - {retired}

        store.promote("titanic", "2.0.0", "production")
        wait_for(lambda: swapped(log) >= workers, 40, what=f"both workers {workers} swapping to 2.0.0:\n{log.read_text()}")
        status, body = call(url + "/predict", PASSENGER)
        assert status == 200 and json.loads(body)["model"]["version"] == "2.0.0"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def booted(log: Path) -> set[int]:
    return {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", log.read_text())}


def swapped(log: Path) -> set[int]:
    """The processes that logged swapping to 2.0.0."""
    return {json.loads(line)["pid"] for line in log.read_text().splitlines()
            if line.startswith("{") and '"event":"model_swapped"' in line and '"version":"2.0.0"' in line}
