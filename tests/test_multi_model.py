"""Several models in one server: each has its own routes, schema, queue, metrics, drift window, log identity and readiness.

The two models are written the way two teams would: each ships a module named
``features`` (same name, different code) fitted into its own pipeline and
embedded by value. Both are served by one app, in one process, and each must
answer exactly what its own pipeline answered in-process at fit time.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import blackbox
from blackbox import UsageError
from serving import create_app

from _helpers import user_module

TEAM_CODE = {
    # Team A: the sign of x decides, squashed by a clip at 5.
    "team-a": """
        import numpy as np
        from sklearn.base import BaseEstimator, TransformerMixin

        class Pick(BaseEstimator, TransformerMixin):
            def fit(self, X, y=None):
                return self

            def transform(self, X):
                return X[["x"]].to_numpy(dtype=float) * 2.0

        def squash(values):
            return np.clip(values, -5.0, 5.0)
    """,
    # Team B: the same names, other code: y decides, and squash flips the sign.
    "team-b": """
        import numpy as np
        from sklearn.base import BaseEstimator, TransformerMixin

        class Pick(BaseEstimator, TransformerMixin):
            def fit(self, X, y=None):
                return self

            def transform(self, X):
                return X[["y"]].to_numpy(dtype=float) + 1.0

        def squash(values):
            return -np.tanh(values)
    """,
}


def frame(seed: int, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(size=rows), "y": rng.normal(size=rows)})


@pytest.fixture(scope="module")
def teams(tmp_path_factory) -> dict[str, dict]:
    """Per team: its artifact and what its pipeline predicted in-process for :func:`probe`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    train = frame(0, 200)
    label = (train["x"] > 0).astype(int)  # team B's feature is noise for it: the two models disagree
    probe = frame(1, 30)
    out = {}
    for name, code in TEAM_CODE.items():
        source = tmp_path_factory.mktemp(name)
        with user_module(source, "features", textwrap.dedent(code)) as features:
            assert Path(features.__file__).parent == source
            pipeline = make_pipeline(features.Pick(), FunctionTransformer(features.squash), LogisticRegression())
            pipeline.fit(train, label if name == "team-a" else (train["y"] > 0).astype(int))
            path = blackbox.save(pipeline, source / f"{name}.bbx", train_data=train, name=name, version="1.0.0")
            out[name] = {
                "path": path,
                "predictions": pipeline.predict(probe).tolist(),
                "probabilities": pipeline.predict_proba(probe).tolist(),
            }
    assert out["team-a"]["predictions"] != out["team-b"]["predictions"]
    return out


@pytest.fixture(scope="module")
def probe_records() -> list[dict]:
    return frame(1, 30).to_dict(orient="records")


@pytest.fixture(scope="module")
def app(teams):
    return create_app({"ARTIFACT": [str(teams["team-a"]["path"]), str(teams["team-b"]["path"])]})


@pytest.fixture
def client(app):
    return app.test_client()


def test_same_module_name_in_two_models_each_predicts_its_own(client, teams, probe_records):
    assert "features" not in sys.modules  # neither team's code was registered under its module name
    for name in ("team-a", "team-b"):
        for route in ("predict", "invocations"):
            response = client.post(f"/models/{name}/{route}", json=probe_records)
            assert response.status_code == 200, response.data
            body = response.get_json()
            assert body["model"]["name"] == name
            assert body["predictions"] == teams[name]["predictions"]
            assert np.allclose(body["probabilities"], teams[name]["probabilities"], rtol=0, atol=1e-12)
    for name in ("team-a", "team-b"):  # loaded again, in-process, after the other: still its own code
        assert blackbox.load(teams[name]["path"]).predict_batch(probe_records) == teams[name]["predictions"]


def test_models_lists_each_with_version_sha256_and_readiness(client, app, teams):
    body = client.get("/models").get_json()
    listed = {entry["name"]: entry for entry in body["models"]}
    assert set(listed) == {"team-a", "team-b"}
    for name, entry in listed.items():
        model = app.extensions["blackbox"].models[name].holder.model
        assert entry["version"] == "1.0.0" and entry["sha256"] == model.sha256 and entry["ready"] is True
    assert listed["team-a"]["sha256"] != listed["team-b"]["sha256"]
    assert client.get("/ready").status_code == 200
    assert client.get("/models/team-b").get_json()["name"] == "team-b"  # its manifest
    schema = client.get("/models/team-a/schema").get_json()
    assert [f["name"] for f in schema["fields"]] == ["x", "y"]


def test_with_several_models_the_single_model_routes_say_which_to_use(client):
    for method, path in (("post", "/predict"), ("post", "/invocations"), ("get", "/model"), ("get", "/schema")):
        response = getattr(client, method)(path, json=[{"x": 1.0, "y": 2.0}] if method == "post" else None)
        assert response.status_code == 404, path
        message = response.get_json()["error"]["message"]
        assert "team-a" in message and "team-b" in message and "/models/" in message
    unknown = client.post("/models/nope/predict", json=[{"x": 1.0, "y": 2.0}])
    assert unknown.status_code == 404 and "nope" in unknown.get_json()["error"]["message"]


def test_each_model_has_its_own_queue_metrics_label_and_drift_window(app, teams, probe_records):
    client = app.test_client()
    state = app.extensions["blackbox"]
    a, b = state.models["team-a"], state.models["team-b"]
    assert a.scorer is not b.scorer and a.monitor is not b.monitor
    before = metric(client, "blackbox_records_predicted_total", model="team-a")
    before_b = metric(client, "blackbox_records_predicted_total", model="team-b")
    assert client.post("/models/team-a/predict", json=probe_records[:7]).status_code == 200
    assert metric(client, "blackbox_records_predicted_total", model="team-a") == before + 7
    assert metric(client, "blackbox_records_predicted_total", model="team-b") == before_b
    bad = client.post("/models/team-b/predict", json=[{"x": "high", "y": 1.0}])
    assert bad.status_code == 422 and bad.get_json()["error"]["details"][0]["field"] == "x"
    assert metric(client, "blackbox_validation_failures_total", model="team-b") >= 1
    assert metric(client, "blackbox_validation_failures_total", model="team-a") == 0
    drift_a = client.get("/models/team-a/drift").get_json()
    drift_b = client.get("/models/team-b/drift").get_json()
    assert drift_a["model"]["name"] == "team-a" and drift_a["window"]["observed"] >= 7
    assert drift_b["model"]["name"] == "team-b" and drift_b["window"]["observed"] < drift_a["window"]["observed"]


def metric(client, name: str, /, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").get_data(as_text=True)
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def test_a_model_failing_its_checks_is_not_ready_and_the_others_serve(teams, probe_records, tmp_path):
    broken = tmp_path / "broken.bbx"
    data = bytearray(teams["team-b"]["path"].read_bytes())
    data[-50] ^= 0xFF  # a damaged payload: the digest check refuses it before anything is unpickled
    broken.write_bytes(bytes(data))
    app = create_app({"ARTIFACT": [str(teams["team-a"]["path"]), str(broken)]})
    client = app.test_client()
    ready = client.get("/ready")
    assert ready.status_code == 503 and "team-b" in ready.get_json()["error"]["message"]
    listed = {entry["name"]: entry for entry in client.get("/models").get_json()["models"]}
    assert listed["team-a"]["ready"] is True
    assert listed["team-b"]["ready"] is False and listed["team-b"]["reason"]
    answer = client.post("/models/team-a/predict", json=probe_records)
    assert answer.status_code == 200 and answer.get_json()["predictions"] == teams["team-a"]["predictions"]
    assert client.post("/models/team-b/predict", json=probe_records).status_code == 503


def test_one_model_alone_fails_the_start_as_before(teams, tmp_path):
    broken = tmp_path / "broken.bbx"
    data = bytearray(teams["team-b"]["path"].read_bytes())
    data[-50] ^= 0xFF
    broken.write_bytes(bytes(data))
    with pytest.raises(blackbox.BlackboxError):
        create_app({"ARTIFACT": [str(broken)]})


def test_a_directory_of_artifacts_serves_each(teams, tmp_path, probe_records):
    for name in teams:
        (tmp_path / f"{name}.bbx").write_bytes(teams[name]["path"].read_bytes())
    client = create_app({"ARTIFACT": str(tmp_path)}).test_client()
    assert {entry["name"] for entry in client.get("/models").get_json()["models"]} == set(teams)
    assert client.post("/models/team-b/predict", json=probe_records).get_json()["predictions"] == teams["team-b"]["predictions"]


def test_one_model_keeps_the_single_model_routes(teams, probe_records):
    client = create_app({"ARTIFACT": str(teams["team-a"]["path"])}).test_client()
    assert client.post("/predict", json=probe_records).get_json()["predictions"] == teams["team-a"]["predictions"]
    assert client.post("/models/team-a/predict", json=probe_records).get_json()["predictions"] == teams["team-a"]["predictions"]
    assert [entry["name"] for entry in client.get("/models").get_json()["models"]] == ["team-a"]


def test_two_artifacts_with_one_name_are_refused(teams, tmp_path):
    copy = tmp_path / "again.bbx"
    copy.write_bytes(teams["team-a"]["path"].read_bytes())
    with pytest.raises(UsageError, match="team-a"):
        create_app({"ARTIFACT": [str(teams["team-a"]["path"]), str(copy)]})


def test_store_references_are_followed_each_on_its_own(teams, tmp_path, probe_records):
    store = blackbox.Store.open(tmp_path / "store")
    for name in teams:
        store.push(teams[name]["path"])
        store.promote(name, "1.0.0", "production")
    app = create_app({"STORE": str(store.uri), "MODEL": ["team-a@production", "team-b@production"],
                      "POLL_INTERVAL": 0, "CACHE_DIR": str(tmp_path / "cache")})
    client = app.test_client()
    for name in teams:
        body = client.post(f"/models/{name}/predict", json=probe_records).get_json()
        assert body["predictions"] == teams[name]["predictions"]
    reload = client.post("/models/team-a/reload")
    assert reload.status_code == 200 and reload.get_json()["result"] == "unchanged"
    assert {m["name"]: m["reload"]["ref"] for m in client.get("/models").get_json()["models"]} == {
        "team-a": "team-a@production", "team-b": "team-b@production"}


def test_the_prediction_log_names_the_model_of_each_row(teams, tmp_path, probe_records):
    from blackbox.monitoring import read_log

    log = tmp_path / "log.sqlite"
    app = create_app({"ARTIFACT": [str(teams["team-a"]["path"]), str(teams["team-b"]["path"])], "PREDICTION_LOG": str(log)})
    client = app.test_client()
    ids = {name: client.post(f"/models/{name}/predict", json=probe_records[:3]).get_json()["request_id"] for name in teams}
    app.extensions["blackbox"].predlog.close()
    rows = read_log(str(log))
    for name, request_id in ids.items():
        mine = rows[rows["request_id"] == request_id]
        assert len(mine) == 3 and set(mine["model_name"]) == {name}
        assert mine["prediction"].tolist() == teams[name]["predictions"][:3]


@pytest.mark.slow
def test_serve_several_artifacts_under_gunicorn_one_broken(teams, tmp_path, probe_records):
    """``blackbox serve A B`` with B broken: A serves, B and /ready say not ready; B fixed + SIGHUP: all ready."""
    import signal

    from _helpers import Server, call, wait_for_url

    broken = tmp_path / "team-b.bbx"
    good_b = teams["team-b"]["path"].read_bytes()
    data = bytearray(good_b)
    data[-50] ^= 0xFF
    broken.write_bytes(bytes(data))
    server = Server([str(teams["team-a"]["path"]), str(broken), "--workers", "1", "--threads", "4"], tmp_path / "server.log")
    try:
        wait_for_url(server.url + "/models/team-a/ready", server.process, seconds=60, log=server.log)
        status, body = call(server.url + "/models/team-a/predict", probe_records)
        assert status == 200 and json.loads(body)["predictions"] == teams["team-a"]["predictions"]
        assert call(server.url + "/ready")[0] == 503
        listed = {m["name"]: m for m in json.loads(call(server.url + "/models")[1])["models"]}
        assert listed["team-b"]["ready"] is False and listed["team-a"]["ready"] is True
        broken.write_bytes(good_b)
        server.process.send_signal(signal.SIGHUP)
        wait_for_url(server.url + "/ready", server.process, seconds=60, log=server.log)
        status, body = call(server.url + "/models/team-b/predict", probe_records)
        assert status == 200 and json.loads(body)["predictions"] == teams["team-b"]["predictions"]
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
