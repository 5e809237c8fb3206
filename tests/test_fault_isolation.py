"""One client never fails another (issue #15, part A), through the app and at the model.

A real random forest from the training package (trees compute in float32) and a
real linear regression (whose output overflows to infinity) are saved and
served. A poisoned request (a value the schema of an artifact saved before
blackbox knew float32 limits lets through, and the forest then refuses) is sent
among many valid ones from several threads, batching on and off: only it fails.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression

import blackbox
from blackbox import Model, SchemaError, SklearnModel, infer_schema
from blackbox.artifact import unpack
from blackbox.errors import ModelInputError, ModelOutputError
from blackbox.fastpath.table import as_frame
from serving import create_app
from serving.openapi import record_schema

from _helpers import PASSENGER, assert_error, details, metric, resign

FLOAT32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="session")
def forest_artifact(titanic, tmp_path_factory):
    """The training package's pipeline with a small random forest as its model, fitted and saved (signed)."""
    from training.pipeline import build_pipeline

    X_train, _, y_train, _ = titanic
    pipeline = build_pipeline(X_train.columns, seed=0)
    pipeline.set_params(model=RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0))
    pipeline.fit(X_train, y_train)
    path = tmp_path_factory.mktemp("forest") / "forest.bbx"
    return blackbox.save(pipeline, path, train_data=X_train, name="forest", version="1.0.0")


@pytest.fixture(scope="session")
def old_forest_artifact(forest_artifact, tmp_path_factory):
    """The same forest as an artifact saved before schemas recorded a numeric limit (no ``limit`` key)."""
    data = forest_artifact.read_bytes()
    manifest = unpack(data).manifest()
    for field in manifest["schema"]["fields"]:
        field.pop("limit", None)
    path = tmp_path_factory.mktemp("old-forest") / "forest.bbx"
    path.write_bytes(resign(data, manifest))
    return path


@pytest.fixture(scope="session")
def overflowing_artifact(tmp_path_factory):
    """A linear regression ``y = 1000 x``: any ``x`` beyond ~1.8e305 is predicted as infinity."""
    frame = pd.DataFrame({"x": np.linspace(-10.0, 10.0, 50)})
    model = LinearRegression().fit(frame, 1000 * frame["x"])
    path = tmp_path_factory.mktemp("overflow") / "linear.bbx"
    return blackbox.save(model, path, train_data=frame, name="linear", version="2.0.0")


def app_for(artifact, **overrides):
    return create_app({"ARTIFACT": str(artifact), **overrides})


def post(client, body, path="/predict"):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def alone(model: Model, records: list[dict]) -> tuple[list, list]:
    """What a request gets when it is the model's only call."""
    return model.predict_and_proba_frame(model.prepare(records)[0])


# -- 1. a model error in a shared batch reaches only the request that caused it --------
@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_a_poisoned_request_fails_alone_among_concurrent_valid_ones(old_forest_artifact, passengers, batching):
    app = app_for(old_forest_artifact, BATCHING=batching, BATCH_MAX_RECORDS=256)
    current = app.extensions["blackbox"]
    model = current.holder.model
    original, calls, release = model.predict_and_proba_frame, [], threading.Event()

    def gated(frame):  # the first call waits until every other request queued (batching: in one batch)
        calls.append(frame)
        if len(calls) == 1:
            assert release.wait(30), "the test never released the first call"
        return original(frame)

    model.predict_and_proba_frame = gated
    poisoned = [passengers[1], {**passengers[2], "age": 1e300}]  # a valid record, then the poison
    requests = [[passengers[0]]] + [[p] for p in passengers[3:30]] + [passengers[30:34], poisoned] + [[p] for p in passengers[34:40]]
    answers: list[Any] = [None] * len(requests)

    def send(i: int) -> None:
        response = post(app.test_client(), requests[i])
        answers[i] = (response.status_code, response.get_json())

    first = threading.Thread(target=send, args=(0,))
    first.start()
    deadline = time.monotonic() + 30
    while not calls:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    rest = [threading.Thread(target=send, args=(i,)) for i in range(1, len(requests))]
    for thread in rest:
        thread.start()
    queued = sum(map(len, requests[1:]))
    while batching and sum(b.size for b in current.scorer._open.values()) < queued:
        assert time.monotonic() < deadline, "the requests never all joined the batch"
        time.sleep(0.001)
    release.set()
    for thread in [first, *rest]:
        thread.join(60)

    if batching:  # the poison really shared a call with others, which was then retried request by request
        shared = [len(frame) for frame in calls if (as_frame(frame)["age"] == 1e300).any()]
        assert max(shared) == queued and shared.count(2) == 1
    else:
        assert sorted(map(len, calls)) == sorted(map(len, requests))
    bad = requests.index(poisoned)
    status, body = answers[bad]
    assert status == 422 and body["error"]["code"] == "model_rejected_input", body
    assert [(d["row"], d["issue"]) for d in body["error"]["details"]] == [(1, "model_rejected")]
    for i, request in enumerate(requests):
        if i != bad:
            predictions, probabilities = alone(model, request)
            assert answers[i][0] == 200, (i, answers[i])
            assert answers[i][1]["predictions"] == predictions and answers[i][1]["probabilities"] == probabilities
    assert metric(app.test_client(), "blackbox_records_predicted_total", model_version="1.0.0") == sum(map(len, requests)) - 2
    assert len(current.monitor._window) == sum(map(len, requests)) - 2  # the failed request never reached the drift window


def test_a_model_that_fails_for_everyone_still_fails_every_request(forest_artifact, passengers):
    """Retrying alone finds no culprit when the model is broken: every request gets its own error, the server keeps serving."""
    app = app_for(forest_artifact)
    model = app.extensions["blackbox"].holder.model
    original, broken = model.predict_and_proba_frame, [True]

    def failing(frame):
        if broken[0]:
            raise RuntimeError("the model broke")
        return original(frame)

    model.predict_and_proba_frame = failing
    results = []
    threads = [threading.Thread(target=lambda p=p: results.append(post(app.test_client(), p).status_code)) for p in passengers[:12]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [500] * 12
    broken[0] = False
    assert post(app.test_client(), PASSENGER).status_code == 200


# -- 2. values the model cannot take are the client's error, naming the field -------------
def test_a_forest_records_its_float32_limit_in_the_schema(forest_artifact, served_model):
    forest = blackbox.load(forest_artifact)
    limits = {field.name: field.limit for field in forest.schema.fields}
    assert limits["age"] == limits["fare"] == FLOAT32_MAX
    assert limits["pclass"] is None and limits["sex"] is None  # integers fit float32 already; strings have none
    assert forest.manifest.schema["fields"][2]["limit"] == FLOAT32_MAX
    assert forest.schema.to_dict()["fields"][0].keys() == served_model.manifest.schema["fields"][0].keys()
    record = record_schema(forest.schema)["properties"]["age"]["anyOf"][0]  # the number (anyOf[1]: a numeric string)
    assert (record["minimum"], record["maximum"]) == (-FLOAT32_MAX, FLOAT32_MAX)


def test_only_models_of_trees_have_the_float32_limit(titanic):
    from sklearn.ensemble import BaggingRegressor, GradientBoostingRegressor
    from sklearn.tree import DecisionTreeRegressor

    from training.pipeline import build_pipeline

    X_train, _, y_train, _ = titanic
    logistic = build_pipeline(X_train.columns, seed=0).fit(X_train, y_train)
    assert SklearnModel.numeric_limit(logistic) is None
    schema = infer_schema(X_train, limit=SklearnModel.numeric_limit(logistic))
    assert all("limit" not in field for field in schema.to_dict()["fields"])  # readable by blackboxes that predate it
    X, y = np.arange(20.0).reshape(10, 2), np.arange(10.0)
    for trees in (GradientBoostingRegressor(n_estimators=2), BaggingRegressor(DecisionTreeRegressor(), n_estimators=2),
                  DecisionTreeRegressor()):
        assert SklearnModel.numeric_limit(trees.fit(X, y)) == FLOAT32_MAX
    assert SklearnModel.numeric_limit(LinearRegression().fit(X, y)) is None


@pytest.mark.parametrize("value", [1e300, -1e39, "3.5e38"])
def test_a_value_beyond_the_forests_float32_range_is_422_naming_the_field(forest_artifact, value):
    client = app_for(forest_artifact).test_client()
    response = post(client, [PASSENGER, {**PASSENGER, "age": value}])
    body = assert_error(response, 422, "validation_error")
    assert details(response) == [(1, "age", "non_finite")]
    assert "float32" in body["error"]["details"][0]["expected"]
    assert post(client, {**PASSENGER, "age": 3e38}).status_code == 200  # within float32: the forest takes it


def test_dataframe_input_is_held_to_the_float32_limit_too(forest_artifact):
    forest = blackbox.load(forest_artifact)
    frame = pd.DataFrame([PASSENGER, {**PASSENGER, "fare": -1e300}, PASSENGER])
    with pytest.raises(SchemaError) as info:
        forest.prepare(frame)
    assert [(p["row"], p["field"], p["issue"]) for p in info.value.problems] == [(1, "fare", "non_finite")]


# scikit-learn's own finiteness check sums the float32 cast of +-1e300 (+inf and -inf: NaN) before it refuses the input.
@pytest.mark.filterwarnings("ignore:invalid value encountered in reduce:RuntimeWarning")
def test_an_old_artifact_without_limits_loads_and_the_models_refusal_is_422(old_forest_artifact):
    old = blackbox.load(old_forest_artifact)
    assert all(field.limit is None for field in old.schema.fields)
    frame = old.prepare([PASSENGER, {**PASSENGER, "age": 1e300}, PASSENGER, {**PASSENGER, "age": -1e300}])[0]
    with pytest.raises(ModelInputError) as info:
        old.predict_and_proba_frame(frame)
    assert info.value.rows == [1, 3] and isinstance(info.value, SchemaError)
    assert "float32" in info.value.message and "records 1, 3" in info.value.message
    response = post(app_for(old_forest_artifact, BATCHING=False).test_client(), {**PASSENGER, "age": 1e300})
    assert_error(response, 422, "model_rejected_input")
    assert [(d["row"], d["issue"]) for d in response.get_json()["error"]["details"]] == [(0, "model_rejected")]


# -- 3. a model that returns NaN or infinity is an error, never a 200 with null ---------------
def test_a_prediction_of_infinity_is_an_invalid_model_output_error_logged_and_counted(overflowing_artifact, caplog):
    app = app_for(overflowing_artifact)
    client = app.test_client()
    caplog.set_level(logging.INFO, logger="serving")
    assert post(client, {"x": 2.0}).get_json()["predictions"] == [pytest.approx(2000.0)]
    response = post(client, [{"x": 1.0}, {"x": 1e306}, {"x": -1e307}])
    body = assert_error(response, 500, "invalid_model_output")
    assert [d["row"] for d in body["error"]["details"]] == [1, 2]
    assert "NaN or infinity" in body["error"]["message"] and "records 1, 2" in body["error"]["message"]
    lines = [json.loads(r.message) for r in caplog.records if body["request_id"] in r.message]
    event = next(line for line in lines if line["event"] == "invalid_model_output")
    assert event["level"] == "error" and event["rows"] == [1, 2] and event["model_version"] == "2.0.0"
    assert metric(client, "blackbox_invalid_model_outputs_total", model_version="2.0.0") == 2
    assert metric(client, "blackbox_records_predicted_total", model_version="2.0.0") == 1  # the failed request is not counted


def test_model_output_checks_name_the_bad_rows_for_batch_scoring(overflowing_artifact, forest_artifact, monkeypatch):
    linear = blackbox.load(overflowing_artifact)
    frame = linear.prepare([{"x": 1.0}, {"x": 1e306}, {"x": 3.0}])[0]
    with pytest.raises(ModelOutputError) as info:
        linear.predict_frame(frame)
    assert (info.value.rows, info.value.output, info.value.code) == ([1], "predictions", "invalid_model_output")
    forest = blackbox.load(forest_artifact)
    real = forest._predict_both

    def nan_proba(frame):
        predictions, proba = real(frame)
        proba[2] = np.nan
        return predictions, proba

    monkeypatch.setattr(forest, "_predict_both", nan_proba)
    with pytest.raises(ModelOutputError) as info:
        forest.predict_and_proba_frame(forest.prepare([PASSENGER] * 4)[0])
    assert (info.value.rows, info.value.output) == ([2], "probabilities")
    copy = pickle.loads(pickle.dumps(info.value))  # Dask workers send it back whole
    assert (copy.rows, copy.output, copy.message, copy.problems) == (
        info.value.rows, info.value.output, info.value.message, info.value.problems)
    refused = pickle.loads(pickle.dumps(ModelInputError("m", [1, 3], "reason")))
    assert (refused.rows, [p["row"] for p in refused.problems]) == ([1, 3], [1, 3])


# -- 4. every answer is well-formed JSON, and a failed request records nothing ---------------
@pytest.fixture
def recording_app(base_config, tmp_path, monkeypatch):
    """An app with a prediction log, and the list of what the API handed to it."""
    app = create_app({**base_config, "PREDICTION_LOG": str(tmp_path / "log.db")})
    recorder = app.extensions["blackbox"].predlog
    logged: list[Any] = []
    monkeypatch.setattr(recorder, "record", lambda *args, **facts: logged.append(args))
    yield app, logged
    recorder.close(timeout=0.2)


@pytest.mark.parametrize("data", [
    json.dumps({"\ud800": 1, **PASSENGER}),  # json.dumps escapes it: valid JSON syntax, not valid text
    json.dumps([{**PASSENGER, "x\udfff": float("nan")}]),
    json.dumps({"dataframe_split": {"columns": ["\udc80", *PASSENGER], "data": [[1, *PASSENGER.values()]]}}),
], ids=["field-name", "field-name-with-nan", "mlflow-column"])
def test_a_field_name_that_is_not_unicode_is_a_422_and_records_nothing(recording_app, data):
    app, logged = recording_app
    client = app.test_client()
    response = client.post("/invocations", data=data, content_type="application/json")
    body = assert_error(response, 422, "validation_error")
    json.loads(response.get_data().decode("utf-8"))  # strict UTF-8 JSON, nothing to repair
    (problem,) = [d for d in body["error"]["details"] if d["field"] and "\\ud" in d["field"]]
    assert problem["issue"] in ("type", "non_finite") and problem["field"].isascii()
    assert logged == [] and len(app.extensions["blackbox"].monitor._window) == 0
    assert metric(client, "blackbox_records_predicted_total", model_version="1.0.0") == 0


def test_string_values_with_lone_surrogates_are_refused_or_never_echoed(recording_app):
    app, logged = recording_app
    client = app.test_client()
    for field in ("name", "sex", "age"):
        response = client.post("/predict", data=json.dumps({**PASSENGER, field: "a\udc00"}), content_type="application/json")
        assert_error(response, 422, "validation_error")
        assert details(response) == [(0, field, "type")]
        assert response.get_data().decode("utf-8").isascii()
    assert logged == []
    response = client.post("/predict", data=json.dumps({**PASSENGER, "cabin": "C\ud83d"}), content_type="application/json")
    assert response.status_code == 200  # an unknown field's value is ignored, and described without the surrogate
    assert [(w["field"], w["issue"]) for w in response.get_json()["warnings"]] == [("cabin", "unknown_field")]
    json.loads(response.get_data().decode("utf-8"))
    assert len(logged) == 1


def test_an_answer_that_cannot_be_serialised_is_500_and_records_nothing(recording_app, monkeypatch):
    app, logged = recording_app
    model = app.extensions["blackbox"].holder.model
    monkeypatch.setattr(model, "predict_and_proba_frame", lambda frame: ([object()], [[0.5, 0.5]]))
    client = app.test_client()
    assert_error(post(client, PASSENGER), 500, "internal_error")
    assert logged == [] and len(app.extensions["blackbox"].monitor._window) == 0
    assert metric(client, "blackbox_records_predicted_total", model_version="1.0.0") == 0
