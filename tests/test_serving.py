"""The prediction server through Flask's test client: every route, every error class, auth, config, logs.

The artifact is the conftest's fitted Titanic search, saved once and signed
with a throw-away key, so the server runs its real trust path. Predictions are
always compared with the same model loaded in-process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import blackbox
from blackbox import signing
from serving import create_app
from serving.openapi import record_schema

from _helpers import CI_KEY, PASSENGER, assert_error, details, metric, post

FIELDS = ["pclass", "sex", "age", "sibsp", "parch", "fare", "embarked", "name"]


# -- fixtures (conftest.py has the shared ones: served_artifact, served_model, base_config, app, client) --
@pytest.fixture
def make_client(base_config):
    """A client for an app with extra settings."""
    def make(**overrides):
        return create_app({**base_config, **overrides}).test_client()
    return make


# -- predictions -------------------------------------------------------------
def test_predict_one_record_matches_the_model_in_process(client, served_model):
    response = post(client, PASSENGER)
    assert response.status_code == 200
    body = response.get_json()
    assert body["predictions"] == served_model.predict_batch([PASSENGER])
    assert body["probabilities"] == served_model.predict_proba([PASSENGER])
    assert body["classes"] == served_model.classes == [0, 1]
    assert body["model"] == {"name": "titanic", "version": "1.0.0", "payload_sha256": served_model.sha256, "sha256": served_model.sha256}
    assert body["warnings"] == []
    assert body["request_id"] == response.headers["X-Request-ID"] and len(body["request_id"]) >= 16


@pytest.mark.parametrize("wrap", [lambda r: r, lambda r: {"records": r}], ids=["list", "records"])
def test_predict_batches_keep_input_order(client, served_model, passengers, wrap):
    body = post(client, wrap(passengers)).get_json()
    assert body["predictions"] == served_model.predict_batch(passengers)
    assert len(set(body["predictions"])) == 2  # both classes appear, so order matters
    assert body["probabilities"] == served_model.predict_proba(passengers)


def test_keys_in_another_order_give_identical_bytes(client):
    shuffled = dict(reversed(list(PASSENGER.items())))
    first, second = post(client, PASSENGER).get_json(), post(client, shuffled).get_json()
    assert first["predictions"] == second["predictions"] and first["probabilities"] == second["probabilities"]


def test_a_row_alone_and_among_a_thousand_copies_gets_the_same_answer(client, passengers):
    alone = post(client, passengers[3]).get_json()
    many = post(client, [passengers[3]] * 1000).get_json()
    assert set(many["predictions"]) == set(alone["predictions"])
    assert all(row == alone["probabilities"][0] for row in many["probabilities"])


def test_the_model_is_called_by_one_thread_at_a_time(app, monkeypatch):
    model = app.extensions["blackbox"].holder.model
    original, active, peak, lock = model.predict_and_proba_frame, [0], [0], threading.Lock()

    def tracked(frame):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        try:
            return original(frame)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(model, "predict_and_proba_frame", tracked)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: post(app.test_client(), PASSENGER).status_code, range(8)))
    assert statuses == [200] * 8 and peak[0] == 1


MLFLOW_BODIES = {
    "dataframe_records": lambda rs: {"dataframe_records": rs},
    "dataframe_split": lambda rs: {"dataframe_split": {"columns": FIELDS, "data": [[r[f] for f in FIELDS] for r in rs],
                                                      "index": list(range(len(rs)))}},
    "instances": lambda rs: {"instances": rs},
    "inputs_columns": lambda rs: {"inputs": {f: [r[f] for r in rs] for f in FIELDS}},
    "inputs_records": lambda rs: {"inputs": rs, "params": None},
    "native_list": lambda rs: rs,
}


@pytest.mark.parametrize("shape", MLFLOW_BODIES)
def test_invocations_accepts_every_mlflow_format(client, served_model, passengers, shape):
    records = passengers[:10]
    response = post(client, MLFLOW_BODIES[shape](records), path="/invocations")
    assert response.status_code == 200, response.data
    assert response.get_json()["predictions"] == served_model.predict_batch(records)


@pytest.mark.parametrize("body, row", [
    ({"dataframe_records": [PASSENGER], "instances": [PASSENGER]}, None),
    ({"dataframe_records": [PASSENGER], "params": {"threshold": 0.3}}, None),
    ({"dataframe_split": {"columns": FIELDS, "data": [list(PASSENGER.values()), [1, 2]]}}, 1),
    ({"dataframe_split": [PASSENGER]}, None),
    ({"inputs": {"pclass": [1, 2], "sex": ["male"]}}, None),
    ({"instances": PASSENGER}, None),
])
def test_invocations_rejects_malformed_mlflow_bodies(client, body, row):
    response = post(client, body, path="/invocations")
    body = assert_error(response, 422, "validation_error")
    assert body["error"]["details"][0]["row"] == row


# -- request ids ---------------------------------------------------------------
def test_made_request_ids_are_32_hex_digits_and_never_repeat(client):
    ids = [client.get("/health").headers["X-Request-ID"] for _ in range(300)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids) and len(set(ids)) == len(ids)


def test_client_request_id_is_kept_and_a_bad_one_replaced(client):
    response = post(client, PASSENGER, headers={"X-Request-ID": "trace-42"})
    assert response.headers["X-Request-ID"] == response.get_json()["request_id"] == "trace-42"
    response = client.get("/nope", headers={"X-Request-ID": "has space " + "x" * 200})
    assert response.headers["X-Request-ID"] != "has space" and " " not in response.headers["X-Request-ID"]
    assert response.get_json()["request_id"] == response.headers["X-Request-ID"]


# -- operations routes --------------------------------------------------------
def test_health_and_ready_answer_minimal_bodies(client):
    assert client.get("/health").get_json() == {"status": "ok"}
    assert client.get("/ready").get_json() == {"status": "ready", "model_version": "1.0.0"}


def test_ready_and_predict_are_503_without_a_model(app, monkeypatch):
    monkeypatch.setattr(app.extensions["blackbox"].holder, "model", None)
    client = app.test_client()
    response = client.get("/ready")
    assert_error(response, 503, "not_ready")
    assert response.headers["Retry-After"] == "5"
    assert_error(post(client, PASSENGER), 503, "not_ready")
    assert client.get("/health").status_code == 200


def test_model_shows_the_manifest_without_training_rows_or_source(client, served_model):
    manifest = client.get("/model").get_json()
    assert manifest["name"] == "titanic" and manifest["version"] == "1.0.0"
    assert manifest["payload"]["sha256"] == served_model.sha256
    assert {"created_at", "git", "metrics", "schema", "requirements"} <= set(manifest)
    assert "best_score" in manifest["metrics"]["search"]
    assert "golden" not in manifest and "source" not in manifest


def test_schema_is_the_manifest_schema(client, served_model):
    assert client.get("/schema").get_json() == served_model.manifest.schema


def test_openapi_document_is_generated_from_the_schema(client, served_model):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.") and doc["info"]["version"] == "1.0.0"
    record = doc["components"]["schemas"]["Record"]
    assert record == record_schema(served_model.schema)
    assert list(record["properties"]) == FIELDS and "pclass" in record["required"] and "age" not in record["required"]
    assert {"/predict", "/invocations", "/health", "/ready", "/model", "/schema", "/metrics"} <= set(doc["paths"])
    prediction = doc["components"]["schemas"]["Prediction"]["properties"]["predictions"]["items"]
    assert prediction == {"type": "integer", "enum": [0, 1]}
    assert "security" not in doc


def test_metrics_count_requests_records_failures_and_warnings(make_client, passengers):
    client = make_client()
    post(client, passengers[:7])
    post(client, {**PASSENGER, "sex": "robot", "age": 500})
    post(client, [{**PASSENGER, "pclass": "first"}, {**PASSENGER, "fare": None, "sibsp": None}])
    client.get("/nope")
    assert metric(client, "blackbox_http_requests_total", route="/predict", status="200") == 2
    assert metric(client, "blackbox_http_requests_total", route="/predict", status="422") == 1
    assert metric(client, "blackbox_http_requests_total", route="<unmatched>", status="404") == 1
    assert metric(client, "blackbox_http_request_duration_seconds_count", route="/predict") == 3
    assert metric(client, "blackbox_records_predicted_total", model_version="1.0.0") == 8
    assert metric(client, "blackbox_validation_failures_total", issue="type") == 1
    assert metric(client, "blackbox_validation_failures_total", issue="null") == 1
    assert metric(client, "blackbox_input_warnings_total", issue="unseen_category") == 1
    assert metric(client, "blackbox_input_warnings_total", issue="out_of_range") == 1
    assert metric(client, "blackbox_model_info", name="titanic", version="1.0.0") == 1


# -- validation ----------------------------------------------------------------
def test_every_problem_names_its_record_field_expectation_and_value(client):
    records = [
        PASSENGER,
        {k: v for k, v in PASSENGER.items() if k != "pclass"},  # missing
        {**PASSENGER, "age": "abc", "sibsp": 1.5},  # cannot coerce; not an integer
        {**PASSENGER, "sibsp": None, "fare": "7.25"},  # an integer holds no null; numeric string is fine
        {**PASSENGER, "age": [1, 2], "embarked": 1},  # wrong types
        "not an object",
    ]
    response = post(client, records)
    body = assert_error(response, 422, "validation_error")
    assert details(response) == [
        (1, "pclass", "missing"), (2, "age", "type"), (2, "sibsp", "type"), (3, "sibsp", "null"),
        (4, "age", "type"), (4, "embarked", "type"), (5, None, "not_an_object"),
    ]
    first = body["error"]["details"][1]
    assert first["expected"] == "a number" and first["received"] == "str 'abc'"
    assert "record 1" in body["error"]["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_422_naming_the_field(client, literal):
    data = json.dumps([PASSENGER, {**PASSENGER, "age": 0}]).replace('"age": 0', f'"age": {literal}')
    response = client.post("/predict", data=data, content_type="application/json")
    assert_error(response, 422, "validation_error")
    assert details(response) == [(1, "age", "non_finite")]


def test_nan_outside_the_records_is_still_refused(client):
    data = '{"dataframe_split": {"columns": %s, "data": [%s], "index": [NaN]}}' % (  # noqa: UP031  JSON's braces
        json.dumps(FIELDS), json.dumps(list(PASSENGER.values())))
    response = client.post("/invocations", data=data, content_type="application/json")
    assert_error(response, 422, "validation_error")
    assert details(response) == [(None, None, "non_finite")]


@pytest.mark.parametrize("body, issue", [([], "empty"), ({"records": []}, "empty"), (42, "not_a_list"),
                                         ("x", "not_a_list"), (None, "not_a_list"), ({"records": {}}, "not_a_list")])
def test_bodies_that_are_no_batch_are_422(client, body, issue):
    response = post(client, body)
    assert_error(response, 422, "validation_error")
    assert [d[2] for d in details(response)] == [issue]


def test_batch_over_the_record_limit_is_refused_before_any_prediction(make_client, passengers, monkeypatch):
    client = make_client(MAX_RECORDS=5)
    model = client.application.extensions["blackbox"].holder.model
    monkeypatch.setattr(model, "prepare", lambda *a, **k: pytest.fail("validated a batch over the limit"))
    response = post(client, passengers[:6])
    body = assert_error(response, 413, "too_many_records")
    assert details(response) == [(None, None, "too_many_records")]
    assert "at most 5" in body["error"]["message"]


# -- warnings ------------------------------------------------------------------
def test_unseen_category_and_out_of_range_are_predicted_with_warnings(client, served_model):
    record = {**PASSENGER, "sex": "unknown", "age": 500}
    body = post(client, [PASSENGER, record]).get_json()
    assert body["predictions"] == served_model.predict_batch([PASSENGER, record])
    assert [(w["row"], w["field"], w["issue"]) for w in body["warnings"]] == [
        (1, "sex", "unseen_category"), (1, "age", "out_of_range")]


def test_unknown_fields_are_ignored_and_flagged_or_rejected_when_strict(client, make_client):
    plain = post(client, PASSENGER).get_json()
    extra = post(client, {**PASSENGER, "cabin": "C85", "Age": 3}).get_json()
    assert extra["predictions"] == plain["predictions"] and extra["probabilities"] == plain["probabilities"]
    assert [(w["row"], w["field"], w["issue"]) for w in extra["warnings"]] == [
        (0, "cabin", "unknown_field"), (0, "Age", "unknown_field")]
    assert "did you mean 'age'" in extra["warnings"][1]["expected"]
    strict = make_client(STRICT_FIELDS=True)
    response = post(strict, {**PASSENGER, "cabin": "C85"})
    assert_error(response, 422, "validation_error")
    assert details(response) == [(0, "cabin", "unknown_field")]


# -- HTTP-level errors ---------------------------------------------------------
def test_body_over_the_size_limit_is_413_and_the_worker_keeps_serving(make_client):
    client = make_client(MAX_CONTENT_LENGTH=1024)
    response = client.post("/predict", data=b"[" + b"1," * 2000 + b"1]", content_type="application/json")
    assert_error(response, 413, "payload_too_large")
    assert post(client, PASSENGER).status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json; charset=iso-8859-1",
                                          "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(client, content_type):
    response = client.post("/predict", data=json.dumps(PASSENGER), content_type=content_type)
    assert_error(response, 415, "unsupported_media_type")


def test_json_with_utf8_charset_is_accepted(client):
    response = client.post("/predict", data=json.dumps(PASSENGER), content_type="application/json; charset=UTF-8")
    assert response.status_code == 200


@pytest.mark.parametrize("data", [b'{"records": [{"age": 1', b"", b"[1] x", b'{"name": "S\xe3o Paulo"}'],
                         ids=["truncated", "empty", "trailing", "latin-1"])
def test_malformed_body_is_400(client, data):
    body = assert_error(client.post("/predict", data=data, content_type="application/json"), 400, "malformed_body")
    if data.endswith(b'Paulo"}'):
        assert "UTF-8" in body["error"]["message"] and "0xe3" in body["error"]["message"]


def test_a_body_shorter_than_its_content_length_is_400_saying_so(client):
    data = json.dumps(PASSENGER).encode()
    response = client.post("/predict", data=data, content_type="application/json",
                           environ_overrides={"CONTENT_LENGTH": str(len(data) + 10)})
    body = assert_error(response, 400, "malformed_body")
    assert f"after {len(data)} of the {len(data) + 10} bytes" in body["error"]["message"]
    assert post(client, PASSENGER).status_code == 200


def test_huge_integer_literal_is_refused_fast(client):
    data = b'{"pclass": ' + b"9" * 5000 + b"}"
    started = time.perf_counter()
    response = client.post("/predict", data=data, content_type="application/json")
    assert time.perf_counter() - started < 0.1
    assert_error(response, 400, "malformed_body")


def test_lone_surrogate_is_a_field_error_not_a_crash(client):
    data = json.dumps({**PASSENGER, "name": "\ud800"})  # json.dumps escapes it: valid syntax, invalid text
    response = client.post("/predict", data=data, content_type="application/json")
    assert_error(response, 422, "validation_error")
    assert details(response) == [(0, "name", "type")]


def test_unknown_route_and_wrong_method_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    response = client.get("/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(client.delete("/health"), 405, "method_not_allowed")


def test_failure_inside_the_model_is_500_logged_with_traceback_and_the_worker_keeps_serving(app, monkeypatch, caplog):
    model = app.extensions["blackbox"].holder.model
    original, calls = model.predict_and_proba_frame, []

    def broken_once(frame):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("secret detail /srv/model internals")
        return original(frame)

    monkeypatch.setattr(model, "predict_and_proba_frame", broken_once)
    caplog.set_level(logging.INFO, logger="serving")
    client = app.test_client()
    response = post(client, PASSENGER)
    body = assert_error(response, 500, "internal_error")
    assert "secret" not in response.get_data(as_text=True)
    line = next(json.loads(r.message) for r in caplog.records if body["request_id"] in r.message)
    assert line["status"] == 500 and line["level"] == "error" and line["error"] == "internal_error"
    assert "RuntimeError: secret detail" in line["traceback"] and "broken_once" in line["traceback"]
    assert post(client, PASSENGER).status_code == 200


# -- auth ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_client(base_config, tmp_path_factory):
    keys = tmp_path_factory.mktemp("auth") / "keys"
    keys.write_text(f"# ci and admin\nci:{CI_KEY}\n\nadmin: {'a' * 32}\n")
    return create_app({**base_config, "API_KEYS_FILE": str(keys)}).test_client()


@pytest.mark.parametrize("header", [None, "Bearer ", f"Bearer {CI_KEY[:-1]}x", f"Basic {CI_KEY}", f"Bearer {CI_KEY} extra", CI_KEY])
def test_auth_refuses_missing_or_wrong_keys(auth_client, header):
    headers = {"Authorization": header} if header is not None else {}
    response = post(auth_client, PASSENGER, headers=headers)
    assert_error(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert CI_KEY not in response.get_data(as_text=True)


def test_auth_accepts_a_valid_key_and_logs_its_id_never_the_key(auth_client, caplog):
    caplog.set_level(logging.INFO, logger="serving")
    response = post(auth_client, PASSENGER, headers={"Authorization": f"bearer {CI_KEY}"})
    assert response.status_code == 200
    line = next(json.loads(r.message) for r in caplog.records if response.get_json()["request_id"] in r.message)
    assert line["key_id"] == "ci"
    assert CI_KEY not in caplog.text
    assert auth_client.post("/predict", json=PASSENGER, headers={"Authorization": f"Bearer {'a' * 32}"}).status_code == 200


def test_auth_leaves_health_and_ready_open_and_guards_the_rest(auth_client):
    assert auth_client.get("/health").status_code == 200
    assert auth_client.get("/ready").get_json() == {"status": "ready", "model_version": "1.0.0"}
    for path in ("/metrics", "/model", "/schema", "/openapi.json", "/nope"):
        assert_error(auth_client.get(path), 401, "unauthenticated")
    doc = auth_client.get("/openapi.json", headers={"Authorization": f"Bearer {CI_KEY}"}).get_json()
    assert doc["security"] == [{"bearer": []}] and doc["paths"]["/health"]["get"]["security"] == []


def test_api_keys_from_the_environment(base_config, monkeypatch):
    monkeypatch.setenv("BLACKBOX_API_KEYS", json.dumps({"env": CI_KEY}))
    client = create_app(base_config).test_client()
    assert post(client, PASSENGER).status_code == 401
    assert post(client, PASSENGER, headers={"Authorization": f"Bearer {CI_KEY}"}).status_code == 200


@pytest.mark.parametrize("keys, message", [
    ("ci:short", "at least 16"), ("ci", "not `id:key`"), (f"a:{CI_KEY},b:{CI_KEY}", "only once"),
    (f"bad id:{CI_KEY}", "ids are"), ({"ci": 3}, "must be a mapping"),
])
def test_bad_api_keys_stop_the_start(base_config, keys, message):
    with pytest.raises(blackbox.UsageError, match=message):
        create_app({**base_config, "API_KEYS": keys})


# -- configuration and loading -------------------------------------------------
def test_environment_settings_apply_and_the_mapping_wins(base_config, monkeypatch, passengers):
    monkeypatch.setenv("BLACKBOX_MAX_RECORDS", "3")
    monkeypatch.setenv("BLACKBOX_STRICT_FIELDS", "true")
    client = create_app(base_config).test_client()
    assert post(client, passengers[:4]).status_code == 413
    assert post(client, {**PASSENGER, "x": 1}).status_code == 422
    assert post(create_app({**base_config, "MAX_RECORDS": 10}).test_client(), passengers[:4]).status_code == 200


def test_artifact_from_the_environment_as_a_file_uri(served_artifact, serving_keys, monkeypatch):
    monkeypatch.setenv("BLACKBOX_ARTIFACT", served_artifact.as_uri())
    monkeypatch.setenv("BLACKBOX_LOAD_OPTIONS__trusted_keys", json.dumps([str(serving_keys[1])]))
    assert post(create_app().test_client(), PASSENGER).status_code == 200


@pytest.mark.parametrize("overrides, message", [
    ({"MAX_RECORDS": 0}, "MAX_RECORDS"), ({"STRICT_FIELDS": "yes"}, "STRICT_FIELDS"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"), ({"LOAD_OPTIONS": {"trusted_key": []}}, "LOAD_OPTIONS"),
    ({"ARTIFACT": "s3://bucket/model.bbx"}, "only local paths"), ({"ARTIFACT": None}, "No artifact"),
])
def test_bad_settings_stop_the_start(base_config, overrides, message):
    with pytest.raises(blackbox.UsageError, match=message):
        create_app({**base_config, **overrides})


def test_an_artifact_that_fails_verification_stops_the_start(base_config, served_artifact, tmp_path):
    with pytest.raises(blackbox.AuthenticityError):
        create_app({**base_config, "LOAD_OPTIONS": {"trusted_keys": [str(signing.keygen(tmp_path, "other")[1])]}})
    damaged = tmp_path / "damaged.bbx"
    data = bytearray(served_artifact.read_bytes())
    data[-10] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(blackbox.IntegrityError):
        create_app({**base_config, "ARTIFACT": str(damaged)})


def test_a_model_that_fails_its_self_test_is_never_served(served_model, monkeypatch):
    def flipped(frame):
        predictions, probabilities = type(served_model).predict_and_proba_frame(served_model, frame)
        return [1 - p for p in predictions], probabilities

    monkeypatch.setattr(served_model, "predict_and_proba_frame", flipped)
    with pytest.raises(blackbox.SelfTestError):
        create_app(model=served_model)


# -- logs ----------------------------------------------------------------------
def test_one_structured_line_per_request_that_cannot_be_forged(client, caplog):
    caplog.set_level(logging.INFO, logger="serving")
    client.get("/x%0A2026-01-01 INFO admin login ok", headers={"X-Request-ID": "forge-1"})
    post(client, [PASSENGER, PASSENGER], headers={"X-Request-ID": "batch-1"})
    lines = [r.message for r in caplog.records if r.name == "serving"]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    forged, batch = map(json.loads, lines)
    assert forged["path"] == "/x\n2026-01-01 INFO admin login ok" and forged["status"] == 404
    assert {k: batch[k] for k in ("event", "request_id", "status", "records", "model_version", "client")} == {
        "event": "request", "request_id": "batch-1", "status": 200, "records": 2, "model_version": "1.0.0",
        "client": "127.0.0.1"}
    assert batch["latency_ms"] > 0


def test_text_log_format_escapes_values(make_client, caplog):
    client = make_client(LOG_FORMAT="text")
    caplog.set_level(logging.INFO, logger="serving")
    client.get("/a b\u2028c", headers={"X-Request-ID": "text-1"})
    (line,) = [r.message for r in caplog.records if "text-1" in r.message]
    assert line.isascii() and "\u2028" not in line
    assert 'path="/a b\\u2028c"' in line and "request_id=text-1" in line and "status=404" in line


def test_start_up_logs_the_artifact_and_its_manifest_summary(base_config, served_artifact, caplog):
    caplog.set_level(logging.INFO, logger="serving")
    create_app(base_config)
    (line,) = [json.loads(r.message) for r in caplog.records if '"model_loaded"' in r.message]
    assert line["artifact"] == str(served_artifact) and line["version"] == "1.0.0"
    assert line["sha256"] and line["created_at"] and "cv_score" in line


# -- property-based: no input is a 5xx ------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
VALUES = JSON | st.text() | st.floats(-1e6, 1e6) | st.integers(-10, 10) | st.sampled_from(
    [3, 1, "male", "female", "S", "Q", 22.5, "22", "7.25", " 7 ", -1, 1e308, 2**70, "", "Mr.", "Smith, Dr. X"])
# Mostly-valid records (a passenger with a few fields replaced or dropped) reach the model itself.
RECORD = st.builds(
    lambda changes, dropped: {**{k: v for k, v in PASSENGER.items() if k not in dropped}, **changes},
    st.dictionaries(st.sampled_from([*FIELDS, "Age", "extra"]), VALUES, max_size=3),
    st.sets(st.sampled_from(FIELDS), max_size=1),
)
BODIES = JSON | st.lists(RECORD, min_size=1, max_size=4) | st.builds(lambda rs: {"records": rs}, st.lists(RECORD, max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, path=st.sampled_from(["/predict", "/invocations"]))
def test_random_json_is_never_a_server_error(client, body, path):
    response = client.post(path, data=json.dumps(body), content_type="application/json")
    assert response.status_code in (200, 400, 413, 422), response.data
    assert response.mimetype == "application/json"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64))
def test_random_bytes_are_never_a_server_error(client, data):
    response = client.post("/predict", data=data, content_type="application/json")
    assert response.status_code in (200, 400, 422), response.data


# -- the serve command, up to the point where gunicorn would start ---------------
@pytest.fixture
def blackbox_main(monkeypatch):
    """blackbox's CLI entry point with ``serve`` registered (as blackbox/cli.py does); gunicorn never starts."""
    from blackbox.cli import cli, main
    from serving import gunicorn_app
    from serving.cli import serve

    monkeypatch.setitem(cli.commands, "serve", serve)
    monkeypatch.setattr(gunicorn_app.Server, "run", lambda self: pytest.fail("gunicorn would fork the test process"))
    return main


def test_serve_refuses_a_public_bind_without_api_keys(blackbox_main, served_artifact, capsys, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert blackbox_main(["serve", str(served_artifact), "--host", "0.0.0.0"]) == 2
    assert "without authentication" in capsys.readouterr().err
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # the command cleans up after itself


def test_serve_ends_with_the_exit_code_of_a_bad_artifact(blackbox_main, search, titanic, tmp_path, capsys, monkeypatch):
    assert blackbox_main(["serve", str(tmp_path / "missing.bbx")]) == blackbox.ArtifactError.exit_code
    monkeypatch.delenv(signing.SIGNING_KEY_ENV)  # the conftest signs every save by default
    with pytest.warns(UserWarning, match="UNSIGNED"):
        unsigned = blackbox.save(search, tmp_path / "unsigned.bbx", train_data=titanic[0])
    assert blackbox_main(["serve", str(unsigned)]) == blackbox.AuthenticityError.exit_code
    err = capsys.readouterr().err
    assert "unsigned" in err and "Traceback" not in err
    keys = tmp_path / "keys"
    keys.write_text("ci:short\n")
    assert blackbox_main(["serve", str(unsigned), "--api-keys-file", str(keys)]) == blackbox.UsageError.exit_code
