"""Live drift in the server: the window per worker, GET /drift, the gauges, and the reset on a model swap.

Records go through ``POST /predict`` of a real app (Flask's test client); every
number ``/drift`` gives is checked against :func:`blackbox.monitoring.drift.compare` on the
same records, and the Titanic holdout split must look like the training data
while a shifted copy must not.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

import blackbox
from blackbox.monitoring import drift
from serving import create_app

from _helpers import wait_for

KEY = "m" * 20 + "-drift-key"


def as_json(frame: pd.DataFrame) -> list[dict]:
    """Records as a client sends them (missing values as null)."""
    return json.loads(frame.to_json(orient="records"))


@pytest.fixture(scope="module")
def valid_holdout(titanic, served_model) -> pd.DataFrame:
    """The holdout split without the few rows missing a value training always had (the server refuses those)."""
    required = [field.name for field in served_model.schema.fields if not field.nullable]
    return titanic[1].dropna(subset=required)


@pytest.fixture(scope="module")
def holdout(valid_holdout) -> list[dict]:
    return as_json(valid_holdout)


@pytest.fixture(scope="module")
def shifted(valid_holdout) -> list[dict]:
    """The holdout with everyone 20 years older and every other passenger from a port training never saw."""
    frame = valid_holdout.copy()
    frame["age"] = frame["age"] + 20
    frame.loc[frame.index[::2], "embarked"] = "X"
    return as_json(frame)


@pytest.fixture(scope="module")
def config(served_artifact, serving_keys) -> dict:
    return {"ARTIFACT": str(served_artifact), "LOAD_OPTIONS": {"trusted_keys": [str(serving_keys[1])]}, "DRIFT_INTERVAL": 0}


def predict(client, records: list[dict], batch: int = 100, **headers: str) -> None:
    for start in range(0, len(records), batch):
        response = client.post("/predict", json=records[start:start + batch], headers=headers)
        assert response.status_code == 200, response.get_json()


def metric(client, name: str, **labels: str) -> list[float]:
    text = client.get("/metrics").get_data(as_text=True)
    return [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]


def test_status_follows_the_documented_psi_thresholds():
    assert [drift.status(v) for v in (None, 0.0, 0.099, 0.1, 0.25, 0.2501)] == [None, "stable", "stable", "moderate", "moderate", "major"]
    assert drift.worst({"a": {"status": "moderate"}, "b": {"status": None}, "c": {"status": "stable"}}) == "moderate"
    assert drift.worst({"a": {"status": None}}) is None
    assert drift.bin_labels([1.0, 2.5]) == ["< 1", "1 to 2.5", ">= 2.5"]


def test_holdout_traffic_shows_no_drift_and_matches_compare(config, holdout, served_model):
    client = create_app(config).test_client()
    predict(client, holdout)
    body = client.get("/drift").get_json()
    assert body["window"] == {"records": len(holdout), "capacity": 5000, "observed": len(holdout)}
    assert body["scope"] == "worker" and isinstance(body["worker"]["pid"], int)
    assert body["model"] == {"name": "titanic", "version": "1.0.0", "payload_sha256": served_model.sha256, "sha256": served_model.sha256}
    assert body["status"] == "stable"
    expected = drift.compare(served_model.manifest.profile, served_model.prepare(holdout)[0])
    assert body["features"] == json.loads(json.dumps(expected))
    assert max(f.get("psi") or 0 for f in body["features"].values()) < 0.1
    assert body["features"]["embarked"]["unseen_share"] == 0.0


def test_shifted_traffic_shows_major_drift_in_the_window_and_the_gauges(config, shifted):
    client = create_app(config).test_client()
    predict(client, shifted)
    body = client.get("/drift").get_json()
    age, embarked = body["features"]["age"], body["features"]["embarked"]
    assert age["psi"] > 0.25 and age["status"] == "major"
    assert embarked["unseen_share"] == pytest.approx(0.5, abs=0.01) and embarked["status"] == "major"
    assert body["features"]["fare"]["status"] == "stable"
    assert body["status"] == "major"
    assert metric(client, "blackbox_feature_psi", feature="age") == [pytest.approx(age["psi"])]
    assert metric(client, "blackbox_feature_unseen_share", feature="embarked") == [pytest.approx(embarked["unseen_share"])]
    assert metric(client, "blackbox_feature_missing_rate", feature="age") == [pytest.approx(age["missing_rate"])]
    assert metric(client, "blackbox_feature_unseen_share", feature="age") == []  # numbers have no categories


def test_the_window_keeps_only_the_latest_records(config, holdout, shifted):
    client = create_app({**config, "DRIFT_WINDOW": 100}).test_client()
    predict(client, holdout)
    predict(client, shifted[:100])
    body = client.get("/drift").get_json()
    assert body["window"] == {"records": 100, "capacity": 100, "observed": len(holdout) + 100}
    assert body["features"]["age"]["status"] == "major"  # only the shifted records are left


def test_an_empty_window_a_disabled_monitor_and_a_model_without_profile_say_so(config, holdout, titanic, search, tmp_path):
    client = create_app(config).test_client()
    body = client.get("/drift").get_json()
    assert body["status"] == "no_data" and body["window"]["records"] == 0 and "features" not in body
    assert "no records" in body["message"]

    off = create_app({**config, "DRIFT_WINDOW": 0}).test_client()
    predict(off, holdout[:10])
    body = off.get("/drift").get_json()
    assert body["status"] == "off" and body["window"]["records"] == 0 and "DRIFT_WINDOW" in body["message"]

    bare = blackbox.save(search, tmp_path / "bare.bbx", sample=titanic[0].head(20), name="titanic", version="0.1.0")
    client = create_app({"ARTIFACT": str(bare)}).test_client()
    predict(client, holdout[:10])
    body = client.get("/drift").get_json()
    assert body["status"] == "no_profile" and "train_data" in body["message"]


def test_a_model_swap_starts_a_new_window_and_late_records_of_the_old_model_are_dropped(
    config, holdout, shifted, search, titanic, tmp_path,
):
    app = create_app(config)
    client = app.test_client()
    predict(client, shifted)
    assert client.get("/drift").get_json()["status"] == "major"

    state = app.extensions["blackbox"]
    old = state.holder.model
    new = blackbox.load(blackbox.save(search, tmp_path / "new.bbx", serializer="cloudpickle", train_data=titanic[0],
                                      name="titanic", version="2.0.0"))
    assert new.sha256 != old.sha256
    state.holder.model = new  # what serving.follow does on a hot reload
    body = client.get("/drift").get_json()
    assert body["status"] == "no_data" and body["model"]["version"] == "2.0.0"

    state.monitor.observe(old, shifted)  # a request that was in flight on the old model finishes
    assert client.get("/drift").get_json()["window"]["records"] == 0
    predict(client, holdout[:50])
    body = client.get("/drift").get_json()
    assert body["window"]["records"] == 50 and body["model"]["version"] == "2.0.0"


def test_the_gauges_refresh_in_the_background_and_go_blank_after_a_swap(config, shifted, search, titanic, tmp_path):
    app = create_app({**config, "DRIFT_INTERVAL": 0.05})
    client = app.test_client()
    predict(client, shifted[:100])
    wait_for(lambda: metric(client, "blackbox_feature_psi", feature="age"))
    assert metric(client, "blackbox_feature_psi", feature="age")[0] > 0.25

    state = app.extensions["blackbox"]
    state.holder.model = blackbox.load(blackbox.save(search, tmp_path / "new.bbx", serializer="cloudpickle",
                                                     train_data=titanic[0], name="titanic", version="2.0.0"))
    wait_for(lambda: math.isnan(metric(client, "blackbox_feature_psi", feature="age")[0]))


def test_drift_needs_a_key_when_auth_is_on_and_is_documented(config, holdout):
    client = create_app({**config, "API_KEYS": {"ops": KEY}}).test_client()
    assert client.get("/drift").status_code == 401
    predict(client, holdout[:20], Authorization=f"Bearer {KEY}")
    response = client.get("/drift", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200 and response.get_json()["window"]["records"] == 20
    doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).get_json()
    assert "/drift" in doc["paths"]


def test_bad_drift_settings_fail_the_start(config):
    for key, value in (("DRIFT_WINDOW", -1), ("DRIFT_WINDOW", 1.5), ("DRIFT_INTERVAL", "soon")):
        with pytest.raises(blackbox.UsageError, match=key):
            create_app({**config, key: value})


@pytest.mark.slow
def test_each_gunicorn_worker_reports_its_own_window_and_gauges(served_artifact, serving_keys, holdout, tmp_path, monkeypatch):
    from _helpers import Server, call, predict_pids

    monkeypatch.setenv("BLACKBOX_DRIFT_INTERVAL", "0.2")
    server = Server([str(served_artifact), "--host", "127.0.0.1", "--workers", "2", "--trusted-keys", str(serving_keys[1])],
                    tmp_path / "server.log")
    try:
        server.wait_ready(workers=2)
        for start in range(0, 200, 10):
            assert call(server.url + "/predict", holdout[start:start + 10])[0] == 200
        status, body = call(server.url + "/drift")
        report = json.loads(body)
        assert status == 200 and report["scope"] == "worker" and 0 < report["window"]["records"] <= 200

        def gauges() -> dict[str, float]:
            text = call(server.url + "/metrics")[1].decode()
            return {sample.labels["pid"]: sample.value for family in text_string_to_metric_families(text)
                    for sample in family.samples if sample.name == "blackbox_feature_psi" and sample.labels["feature"] == "age"}

        pid = str(report["worker"]["pid"])
        scored = {str(p) for p in predict_pids(server)}
        wait_for(lambda: set(gauges()) == scored)  # a worker /drift did not reach publishes from its refresh thread
        assert gauges()[pid] == pytest.approx(report["features"]["age"]["psi"])  # one series per window, not a sum
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
