"""Over HTTP, the fast path and the reference give the same answers, batched or not.

Four apps serve one artifact: with the plan and without it (``fast_path=False``
load option), each with micro-batching on and off. Every record (held-out
passengers plus the plan's own edge rows: missing values, unseen categories,
numbers far out of range, numbers as strings, an unknown field) is posted
alone from many threads at once (so batching apps share calls) and in
requests of several records; every app must answer exactly what the model
gives in-process without the plan: the same predictions, probabilities within
the self-test's tolerance, the same warnings. The server routes records the
way ``Model.predict`` does: with a plan the model gets the checked columns
(no DataFrame), each request's records are checked once, never again by the
batch.
"""

from __future__ import annotations

import json
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pytest

import blackbox
from blackbox.fastpath.edges import edge_records
from blackbox.fastpath.table import Prepared
from blackbox.model import PROBA_TOLERANCE
from blackbox.schema import Schema
from serving import create_app

APPS = [(fast, batching) for fast in (True, False) for batching in (True, False)]


@pytest.fixture(scope="module")
def reference(served_artifact, serving_keys):
    """The model in-process, without its plan: the reference answers."""
    return blackbox.load(served_artifact, trusted_keys=[serving_keys[1]], fast_path=False)


@pytest.fixture(scope="module")
def records(reference, passengers):
    """Passengers, the plan's edge rows the schema accepts, numbers sent as strings and an unknown field."""
    edges = []
    for record in edge_records(reference.schema, passengers):
        try:
            reference.validate([record])
        except blackbox.SchemaError:
            continue
        edges.append(record)
    extra = [{**passengers[0], "age": "31.5", "fare": " 7.25 "}, {**passengers[1], "cabin": "C85"}]
    assert len(edges) > 40
    return [*passengers, *edges, *extra]


def app_for(artifact, keys, *, fast: bool, batching: bool):
    options: dict[str, Any] = {"trusted_keys": [str(keys[1])]}
    if not fast:
        options["fast_path"] = False
    return create_app({"ARTIFACT": str(artifact), "LOAD_OPTIONS": options, "BATCHING": batching,
                       "BATCH_MAX_WAIT_MS": 5, "BATCH_MAX_RECORDS": 64})


def post(app, body: Any) -> dict:
    response = app.test_client().post("/predict", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def expected(reference, records: list[dict]) -> list[tuple[Any, list[float], list[tuple]]]:
    """(prediction, probabilities, warnings as (field, issue)) of each record alone, without the plan."""
    out = []
    for record in records:
        prepared, warnings = reference.prepare([record])
        (prediction,), (proba,) = reference.predict_and_proba_frame(prepared)
        out.append((prediction, proba, sorted((w["field"], w["issue"]) for w in warnings)))
    return out


def answers(body: dict) -> list[tuple[Any, list[float], list[tuple]]]:
    rows = range(len(body["predictions"]))
    warned = [sorted((w["field"], w["issue"]) for w in body["warnings"] if w["row"] == row) for row in rows]
    return list(zip(body["predictions"], body["probabilities"], warned))


def assert_same(got: list, want: list) -> None:
    assert [(p, w) for p, _, w in got] == [(p, w) for p, _, w in want]
    gap = max(abs(a - b) for (_, g, _), (_, e, _) in zip(got, want) for a, b in zip(g, e))
    assert gap <= PROBA_TOLERANCE


@pytest.mark.parametrize(("fast", "batching"), APPS, ids=[f"{'plan' if f else 'reference'}-{'batching' if b else 'direct'}" for f, b in APPS])
def test_every_app_answers_what_the_reference_gives(served_artifact, serving_keys, reference, records, fast, batching):
    app = app_for(served_artifact, serving_keys, fast=fast, batching=batching)
    model = app.extensions["blackbox"].holder.model
    assert (model.plan is not None) == fast
    want = expected(reference, records)
    with ThreadPoolExecutor(16) as pool:  # one record per request, concurrently: batches form when batching is on
        singles = list(pool.map(lambda record: answers(post(app, record)), records))
    assert_same([answer for single in singles for answer in single], want)
    chunks = [records[i:i + 7] for i in range(0, len(records), 7)]
    with ThreadPoolExecutor(4) as pool:
        grouped = list(pool.map(lambda chunk: answers(post(app, chunk)), chunks))
    assert_same([answer for group in grouped for answer in group], want)
    assert_same(answers(post(app, records[:60])), want[:60])  # one request of many: its own call


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "direct"])
@pytest.mark.parametrize("fast", [True, False], ids=["plan", "reference"])
def test_records_reach_the_model_as_predict_routes_them_checked_once(served_artifact, serving_keys, passengers,
                                                                     monkeypatch, fast, batching):
    """With a plan the model gets the checked columns (no DataFrame), without one the prepared frame; one check per request."""
    app = app_for(served_artifact, serving_keys, fast=fast, batching=batching)
    model = app.extensions["blackbox"].holder.model
    inputs: list[Any] = []
    original = model.predict_and_proba_frame
    monkeypatch.setattr(model, "predict_and_proba_frame", lambda source: inputs.append(source) or original(source))
    checks = []
    check = Schema._check

    def counted(self, *args):  # the scorer's checks only (the drift monitor's refresh may check its window too)
        if any(frame.filename.endswith("inference.py") for frame in traceback.extract_stack()):
            checks.append(1)
        return check(self, *args)

    monkeypatch.setattr(Schema, "_check", counted)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda record: post(app, record), passengers[:24]))
    post(app, passengers[:5])
    assert len(checks) == 25  # each request's records checked once: never again for its batch's call
    assert sum(map(len, inputs)) == 29
    assert all(isinstance(source, Prepared if fast else pd.DataFrame) for source in inputs), {type(s) for s in inputs}
