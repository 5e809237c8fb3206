"""Follow-ups of #15-#17 on ``blackbox serve``: the cached last good copy when the alias names a bad release,
replay protection across restarts (``--allow-downgrade``), a port already in use.

Before the fixes: a follower starting while the alias named a bad release stayed not ready (in process:
create_app raised); a restarted server accepted a replayed older pointer; a taken port ended in
gunicorn's "Can't connect" after its retries. Servers bind 127.0.0.1 and are always stopped.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

import blackbox
from blackbox.artifact import unpack
from serving import create_app

from _helpers import Server, call, resign, serve_command, taken_port, variant


@pytest.fixture(scope="module")
def records(titanic) -> list[dict]:
    return json.loads(titanic[0].head(3).to_json(orient="records"))


@pytest.fixture(scope="module")
def bad(artifact, tmp_path_factory) -> Path:
    """A validly signed titanic 3.0.0 that fails its self-test."""
    data = artifact.read_bytes()
    manifest = unpack(data).manifest()
    manifest["version"] = "3.0.0"
    manifest["golden"]["predictions"] = [1 - p for p in manifest["golden"]["predictions"]]
    path = tmp_path_factory.mktemp("bad") / "titanic-3.0.0.bbx"
    path.write_bytes(resign(data, manifest))
    return path


def pointer(root: Path, alias: str = "production") -> Path:
    return root / "titanic" / "aliases" / f"{alias}.json"


def served(client, records) -> str:
    answer = client.post("/predict", json=records)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()["model"]["version"]


# -- 2. a follower (re)starting while the alias names a bad release ---------------------------------------


def test_a_starting_follower_serves_the_cached_copy_while_the_alias_names_a_bad_release(
    artifact, bad, records, tmp_path
):
    root = tmp_path / "store"
    store = blackbox.Store.open(root)
    for path in (artifact, bad, variant(artifact, tmp_path, "4.0.0")):
        store.push(path)
    store.promote("titanic", "1.0.0", "production")
    config = {"STORE": str(root), "MODEL": "titanic@production", "POLL_INTERVAL": 0, "CACHE_DIR": str(tmp_path / "cache")}
    assert served(create_app(config).test_client(), records) == "1.0.0"  # leaves 1.0.0 in the cache

    store.promote("titanic", "3.0.0", "production")
    client = create_app(config).test_client()  # a worker restarting now (before: SelfTestError, nothing served)
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.get_json()
    status = ready.get_json()["reload"]
    assert status["result"] == "failed" and status["served_from"] == "cache" and status["version"] == "1.0.0", status
    assert status["code"] == "self_test_failed" and "cached last good release 1.0.0" in status["reason"], status
    assert served(client, records) == "1.0.0"

    store.promote("titanic", "4.0.0", "production")  # it keeps following
    answer = client.post("/reload").get_json()
    assert answer["result"] == "swapped" and answer["version"] == "4.0.0" and answer["served_from"] == "store", answer
    assert served(client, records) == "4.0.0"


# -- 4. replay protection survives a restart; --allow-downgrade lifts it ----------------------------------


def start(args: list[str], log: Path) -> Server:
    server = Server(args, log)
    try:
        server.wait_ready(seconds=90)
    except BaseException:
        server.process.kill()
        server.process.wait()
        raise
    return server


@pytest.mark.slow
def test_a_restarted_server_refuses_a_replayed_pointer_unless_allowed_to_downgrade(
    artifact, records, tmp_path
):
    root = tmp_path / "store"
    store = blackbox.Store.open(root)
    for path in (artifact, variant(artifact, tmp_path, "2.0.0")):
        store.push(path)
    store.promote("titanic", "1.0.0", "production")
    old_pointer = pointer(root).read_bytes()
    follow = ["--store", str(root), "--model", "titanic@production", "--host", "127.0.0.1", "--workers", "1",
              "--poll-interval", "0", "--cache-dir", str(tmp_path / "cache")]

    server = start(follow, tmp_path / "first.log")
    try:
        store.promote("titanic", "2.0.0", "production")
        status, body = call(server.url + "/reload", {})
        assert status == 200 and json.loads(body)["version"] == "2.0.0", body
    finally:
        assert server.stop() == 0

    pointer(root).write_bytes(old_pointer)  # validly signed, but older than what the server accepted
    server = start(follow, tmp_path / "second.log")
    try:
        status, body = call(server.url + "/ready")
        reload = json.loads(body)["reload"]
        assert reload["result"] == "failed" and reload["served_from"] == "cache", reload
        assert reload["version"] == "2.0.0" and "older pointer" in reload["reason"], reload
        assert json.loads(call(server.url + "/predict", records)[1])["model"]["version"] == "2.0.0"
    finally:
        assert server.stop() == 0
    assert "older pointer" in (tmp_path / "second.log").read_text()

    server = start([*follow, "--allow-downgrade"], tmp_path / "third.log")
    try:
        reload = json.loads(call(server.url + "/ready")[1])["reload"]
        assert reload["version"] == "1.0.0" and reload["served_from"] == "store", reload
        assert json.loads(call(server.url + "/predict", records)[1])["model"]["version"] == "1.0.0"
    finally:
        assert server.stop() == 0


# -- 3. a port already in use ---------------------------------------------------------------------------


@pytest.mark.parametrize("debug", [False, True], ids=["gunicorn", "debug"])
def test_serve_on_a_port_in_use_is_a_usage_error(artifact, debug):
    with taken_port() as port:
        done = subprocess.run(
            [*serve_command(), str(artifact), "--host", "127.0.0.1", "--port", str(port), *(["--debug"] if debug else [])],
            capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert f"port {port} on 127.0.0.1 is already in use: pass --port" in done.stderr
    assert "Traceback" not in done.stderr and "Can't connect" not in done.stderr
    assert "verified in an isolated child" not in done.stderr  # refused before the slow part


def test_other_bind_failures_give_the_os_reason(monkeypatch):
    import errno

    from serving.cli import _check_port

    def refuse(self, address):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    with pytest.raises(blackbox.UsageError, match=r"Cannot bind 127\.0\.0\.1:8000: Permission denied"):
        _check_port("127.0.0.1", 8000)


# -- 6. the OpenAPI document covers every route the app serves -------------------------------------------

KEY = "followups-openapi-key-0123456789"


def documented_operations(app, doc: dict) -> list[tuple[str, str, str]]:
    """(route, method, endpoint) of every route the app registers that the document lacks."""
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if method.lower() not in doc["paths"].get(path, {}):
                missing.append((rule.rule, method, rule.endpoint))
    return missing


def test_the_openapi_document_has_every_route_the_app_registers(artifact):
    from serving.auth import ENDPOINT_SCOPES, OPEN_ENDPOINTS

    app = create_app({"ARTIFACT": str(artifact), "API_KEYS": f"ops:{KEY} predict read admin"})

    @app.get("/models/<name>/extra")
    def extra(name: str):
        """A route added later: documented from its docstring."""
        return {}

    client = app.test_client()
    doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).get_json()
    assert documented_operations(app, doc) == []
    assert doc["paths"]["/models/{name}/extra"]["get"]["summary"] == "A route added later: documented from its docstring."
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = doc["paths"][path][method.lower()]
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names == set(rule.arguments), (path, names)
            if rule.endpoint in OPEN_ENDPOINTS:
                assert operation["security"] == [] and "403" not in operation["responses"], path
            else:
                scope = ENDPOINT_SCOPES.get(rule.endpoint, "admin")
                assert operation["x-required-scope"] == scope, (path, operation)
                assert scope in operation["responses"]["403"]["description"], path
                assert "401" in operation["responses"], path
    assert set(doc["components"]["securitySchemes"]["bearer"]["description"].split()) >= {"predict", "read", "admin"}
    assert doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/V2InferRequest"}
    assert "404" in doc["paths"]["/models/{name}/predict"]["post"]["responses"]

    open_doc = create_app({"ARTIFACT": str(artifact)}).test_client().get("/openapi.json").get_json()
    assert "security" not in open_doc and "403" not in open_doc["paths"]["/predict"]["post"]["responses"]
