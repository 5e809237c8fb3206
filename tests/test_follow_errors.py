"""A store follower survives an error that is neither the store's nor the release's: it never stops following silently.

The fault is injected: one check raises an OSError (a full disk, a bug), as nothing the store or a
release does can (those are refusals, handled and tested elsewhere).
"""

from __future__ import annotations

import json

import pytest

import blackbox
from serving import create_app
from serving.follow import Follower
from serving.routes import EXTENSION

from _helpers import variant, wait_for


@pytest.fixture
def following(artifact, tmp_path, monkeypatch):
    root = tmp_path / "store"
    store = blackbox.Store.open(root)
    store.push(artifact)
    store.push(variant(artifact, tmp_path, "2.0.0"))
    store.promote("titanic", "1.0.0", "production")
    app = create_app({"STORE": str(root), "MODEL": "titanic@production", "POLL_INTERVAL": 0.1,
                      "CACHE_DIR": str(tmp_path / "cache")})
    yield store, app
    for served in app.extensions[EXTENSION].models.values():
        served.follower.stop()


def test_an_unexpected_error_in_a_poll_is_logged_and_the_follower_goes_on(following, monkeypatch, caplog):
    store, app = following
    client = app.test_client()
    assert client.get("/model").get_json()["version"] == "1.0.0"
    real, failures = Follower._check, []

    def failing_once(self):
        if not failures:
            failures.append(1)
            raise OSError(28, "No space left on device")
        return real(self)

    monkeypatch.setattr(Follower, "_check", failing_once)
    store.promote("titanic", "2.0.0", "production")
    wait_for(lambda: client.get("/model").get_json()["version"] == "2.0.0", what="the follower going on after the error")
    lines = [json.loads(message) for message in caplog.messages if message.startswith("{")]
    failed = [line for line in lines if line["event"] == "reload_failed" and line.get("code") == "internal_error"]
    assert failures and failed and "No space left on device" in failed[0]["reason"] and "OSError" in failed[0]["traceback"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'blackbox_reloads_total{model="titanic",result="failed"} 1.0' in metrics


def test_a_stopped_follower_stays_stopped_in_a_forked_child(following):
    """An embedding host that stopped the follower, then forks (a multiprocessing pool): no follower in the child."""
    import os
    import threading

    _, app = following
    for served in app.extensions[EXTENSION].models.values():
        served.follower.stop()
    wait_for(lambda: not any(t.name.startswith("blackbox-follow-") for t in threading.enumerate()),
             what="the follower thread ending")
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only when no follower runs here; never raise into pytest
        code = 1
        try:
            code = 0 if not any(t.name.startswith("blackbox-follow-") for t in threading.enumerate()) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the fork hook restarted a follower the host had stopped"
