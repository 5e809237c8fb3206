"""API keys have scopes: predict, feedback (labels), read (metadata and metrics), admin (reload); /health and /ready stay open."""

from __future__ import annotations

import json

import pytest

import blackbox
from serving import create_app

PASSENGER = {"pclass": 3, "sex": "male", "age": 22, "sibsp": 1, "parch": 0, "fare": 7.25, "embarked": "S",
             "name": "Braund, Mr. Owen Harris"}
KEYS = {name: f"{name}-" + "s" * 24 for name in ("legacy", "predictor", "labeller", "reader", "operator", "everything")}
# route -> (method, path, body, the scope it needs)
ROUTES = {
    "predict": ("POST", "/predict", PASSENGER, "predict"),
    "invocations": ("POST", "/invocations", {"dataframe_records": [PASSENGER]}, "predict"),
    "feedback": ("POST", "/feedback", {"feedback": []}, "feedback"),
    "model": ("GET", "/model", None, "read"),
    "schema": ("GET", "/schema", None, "read"),
    "openapi": ("GET", "/openapi.json", None, "read"),
    "metrics": ("GET", "/metrics", None, "read"),
    "drift": ("GET", "/drift", None, "read"),
    "reload": ("POST", "/reload", None, "admin"),
}
GRANTED = {  # what each key of the keys file below may do
    "legacy": {"predict", "feedback", "read"},  # an `id:key` line written before scopes existed
    "predictor": {"predict"},  # a client asking for predictions cannot label them
    "labeller": {"feedback"},
    "reader": {"read"},
    "operator": {"admin"},
    "everything": {"predict", "feedback", "read", "admin"},
}


@pytest.fixture(scope="module")
def model(search, titanic, tmp_path_factory):
    path = blackbox.save(search, tmp_path_factory.mktemp("auth") / "m.bbx", train_data=titanic[0], version="1.0.0")
    return blackbox.load(path)


@pytest.fixture(scope="module")
def lines_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys"
    path.write_text(
        "# id:key, then the scopes (predict, feedback and read when none are given)\n"
        f"legacy:{KEYS['legacy']}\n"
        f"predictor:{KEYS['predictor']} predict\n"
        f"labeller:{KEYS['labeller']} feedback\n"
        f"reader: {KEYS['reader']}  read\n"
        f"operator:{KEYS['operator']} admin\n"
        f"everything:{KEYS['everything']} predict feedback read admin\n"
    )
    return path


@pytest.fixture(scope="module")
def json_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    entries = {name: {"key": key, "scopes": sorted(GRANTED[name])} for name, key in KEYS.items()}
    entries["legacy"] = KEYS["legacy"]  # {"id": "key"}: the default scopes
    path.write_text(json.dumps(entries))
    return path


def call(client, route: str, key: str | None):
    method, path, body, _ = ROUTES[route]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if method == "GET":
        return client.get(path, headers=headers)
    return client.post(path, data=json.dumps(body), content_type="application/json", headers=headers)


@pytest.mark.parametrize("source", ["lines_file", "json_file"])
def test_each_route_needs_its_scope(source, model, request):
    client = create_app({"API_KEYS_FILE": str(request.getfixturevalue(source))}, model=model).test_client()
    for name, key in KEYS.items():
        for route, (_method, _path, _, scope) in ROUTES.items():
            response = call(client, route, key)
            if scope in GRANTED[name]:
                assert response.status_code not in (401, 403), (name, route, response.get_json())
            else:
                assert response.status_code == 403, (name, route, response.status_code)
                body = response.get_json()
                assert body["error"]["code"] == "forbidden" and body["request_id"]
                assert f"'{scope}' scope" in body["error"]["message"] and repr(name) in body["error"]["message"]
                assert key not in response.get_data(as_text=True)
                challenge = response.headers["WWW-Authenticate"]
                assert 'error="insufficient_scope"' in challenge and f'scope="{scope}"' in challenge
    assert call(client, "predict", KEYS["predictor"]).status_code == 200
    assert call(client, "metrics", KEYS["reader"]).status_code == 200
    assert call(client, "reload", KEYS["operator"]).status_code == 409  # admitted: this server follows no store


def test_health_and_ready_stay_open_and_a_bad_key_is_still_401(lines_file, model):
    client = create_app({"API_KEYS_FILE": str(lines_file)}, model=model).test_client()
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
    for route in ROUTES:
        assert call(client, route, None).status_code == 401
        assert call(client, route, "x" * 30).status_code == 401  # an unknown key learns nothing about scopes


@pytest.mark.parametrize("text, message", [
    (f"ci:{KEYS['legacy']} predict reboot\n", "unknown scope 'reboot'"),
    (json.dumps({"ci": {"key": KEYS["legacy"], "scopes": "admin"}}), "a list of scopes"),
    (json.dumps({"ci": {"key": KEYS["legacy"], "scopes": []}}), "at least one scope"),
    (json.dumps({"ci": {"secret": KEYS["legacy"]}}), "key"),
])
def test_bad_scopes_stop_the_start(text, message, model, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(text)
    with pytest.raises(blackbox.UsageError, match=message):
        create_app({"API_KEYS_FILE": str(keys)}, model=model)
