"""Micro-batching: concurrent requests share one model call, and each still gets exactly its own answer.

Unit tests drive :class:`serving.inference.Scorer` from many threads with the
real Titanic model behind a gate: the first model call blocks until every other
request has joined the next batch, so what is batched together is decided, not
left to timing. The last test runs ``blackbox serve`` under gunicorn and checks
answers and the ``blackbox_batch_records`` histogram over HTTP.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Config

from blackbox import Model, SchemaError, UsageError
from blackbox.fastpath.table import as_frame
from serving import create_app
from serving.config import Settings, layer
from serving.inference import Scorer

from _helpers import Server, call, wait_for


class Gated:
    """A model whose first prediction waits for ``release``; keeps every input it is asked to predict.

    Later calls raise ``fail`` (if set) when ``poisoned(frame)`` says so (default: always);
    ``frame`` is the input as a DataFrame. Everything else is the model's.
    """

    def __init__(self, model: Model, *, fail: BaseException | None = None, poisoned: Any = lambda frame: True) -> None:
        self.model = model
        self.release = threading.Event()
        self.frames: list[Any] = []
        self.fail = fail
        self.poisoned = poisoned
        self.checked_requests = 0  # requests whose records were checked (each once, batched or not)
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def checked(self, records: Any, *, strict: bool = False) -> Any:
        with self._lock:
            self.checked_requests += 1
        return self.model.checked(records, strict=strict)

    @property
    def calls(self) -> list[int]:
        """Records per model call, in call order."""
        return [len(frame) for frame in self.frames]

    def predict_and_proba_frame(self, frame: Any) -> Any:
        self.frames.append(frame)
        if len(self.frames) == 1:
            assert self.release.wait(30), "the test never released the first call"
        elif self.fail is not None and self.poisoned(as_frame(frame)):
            raise self.fail
        return self.model.predict_and_proba_frame(frame)


def run_gated(scorer: Scorer, gated: Gated, requests: list[list[dict]]) -> list[Any]:
    """Score ``requests[0]`` (it blocks in the model), then the rest concurrently; release once they all queue.

    Returns each request's Scored, or the exception it raised, in order.
    """
    results: list[Any] = [None] * len(requests)

    def one(i: int) -> None:
        try:
            results[i] = scorer.score(gated, requests[i], strict=False)
        except BaseException as exc:  # noqa: BLE001  (the test inspects it)
            results[i] = exc

    first = threading.Thread(target=one, args=(0,))
    first.start()
    wait_for(lambda: gated.calls, 30, interval=0.001)
    rest = [threading.Thread(target=one, args=(i,)) for i in range(1, len(requests))]
    for thread in rest:
        thread.start()
    settle(scorer, lambda: gated.checked_requests >= len(requests))
    gated.release.set()
    for thread in [first, *rest]:
        thread.join(30)
    return results


def settle(scorer: Scorer, checked: Any) -> None:
    """Every request checked; then a moment for each to join its batch (a few microseconds of work)."""
    wait_for(lambda: checked() and scorer._validating == 0, 30, interval=0.001)
    time.sleep(0.2)


def unbatched(model: Model, records: list[dict]) -> tuple[list, list]:
    """What each record gets alone."""
    answers = [model.predict_and_proba_frame(model.prepare([record])[0]) for record in records]
    return [p[0] for p, _ in answers], [q[0] for _, q in answers]


def test_concurrent_requests_share_one_call_and_get_their_own_answers_in_order(served_model, passengers):
    gated = Gated(served_model)
    requests = [[passengers[0]]] + [[p] for p in passengers[1:21]] + [passengers[21:24]]
    results = run_gated(Scorer(batching=True, max_wait=0.002, max_records=256), gated, requests)
    assert gated.calls == [1, 23]  # the first alone, then everyone who queued behind it in one call
    flat = [record for request in requests for record in request]
    predictions, probabilities = unbatched(served_model, flat)
    assert [p for r in results for p in r.predictions] == predictions
    got = [q for r in results for q in r.probabilities]
    assert max(abs(a - b) for g, e in zip(got, probabilities) for a, b in zip(g, e)) < 1e-9
    assert [len(r.predictions) for r in results] == [len(request) for request in requests]


def test_a_bad_request_gets_its_own_error_and_its_neighbours_are_answered(served_model, passengers):
    gated = Gated(served_model)
    bad = {**passengers[5], "pclass": "first"}
    requests = [[passengers[0]], [passengers[1]], [passengers[2], bad], [passengers[3]], [{"fare": 3}], [passengers[4]]]
    results = run_gated(Scorer(batching=True, max_wait=0.002, max_records=256), gated, requests)
    assert isinstance(results[2], SchemaError) and results[2].problems[0]["row"] == 1
    assert isinstance(results[4], SchemaError)
    assert gated.calls == [1, 3]  # the invalid requests never reached the model
    good = [0, 1, 3, 5]
    assert [results[i].predictions[0] for i in good] == unbatched(served_model, [requests[i][0] for i in good])[0]


def test_a_model_error_in_a_shared_call_reaches_only_the_request_that_caused_it(served_model, passengers):
    """The failed batch is called again request by request: the poisoned one gets the error, the others their answers."""
    gated = Gated(served_model, fail=RuntimeError("cannot take this name"), poisoned=lambda frame: (frame["name"] == "POISON").any())
    scorer = Scorer(batching=True, max_wait=0.002, max_records=256)
    requests = [[p] for p in passengers[:5]] + [[passengers[5], {**passengers[6], "name": "POISON"}]] + [[p] for p in passengers[7:10]]
    results = run_gated(scorer, gated, requests)
    assert gated.calls == [1, 9] + [len(request) for request in requests[1:]]
    assert isinstance(results[5], RuntimeError)
    good = [i for i in range(len(requests)) if i != 5]
    assert [results[i].predictions[0] for i in good] == unbatched(served_model, [requests[i][0] for i in good])[0]


def test_a_model_broken_for_every_input_fails_every_request_of_the_batch(served_model, passengers):
    gated = Gated(served_model, fail=RuntimeError("the model broke"))
    scorer = Scorer(batching=True, max_wait=0.002, max_records=256)
    results = run_gated(scorer, gated, [[p] for p in passengers[:9]])
    assert gated.calls == [1, 8] + [1] * 8  # the shared call, then each request alone: at most one call more each
    assert results[0].predictions  # the first call succeeded
    assert all(isinstance(r, RuntimeError) and str(r) == "the model broke" for r in results[1:])
    gated.fail = None  # the scorer is not left wedged
    assert scorer.score(gated, [passengers[0]], strict=False).predictions == unbatched(served_model, passengers[:1])[0]


def test_off_switch_gives_every_request_its_own_call(served_model, passengers):
    gated = Gated(served_model)
    results = run_gated(Scorer(batching=False), gated, [[p] for p in passengers[:6]])
    assert gated.calls == [1] * 6
    assert [r.predictions[0] for r in results] == unbatched(served_model, passengers[:6])[0]


def test_batches_hold_at_most_max_records_and_a_large_request_is_its_own_call(served_model, passengers):
    gated = Gated(served_model)
    requests = [[passengers[0]]] + [[p] for p in passengers[1:11]] + [passengers[11:16]]
    results = run_gated(Scorer(batching=True, max_wait=0.002, max_records=4), gated, requests)
    assert gated.calls[0] == 1 and sorted(gated.calls[1:]) == [2, 4, 4, 5]
    flat = [record for request in requests for record in request]
    assert [p for r in results for p in r.predictions] == unbatched(served_model, flat)[0]


def test_requests_for_different_models_are_never_batched_together(served_model, passengers):
    """A hot reload swaps the model object: requests that read the old one and the new one stay apart."""
    old, new = Gated(served_model), Gated(served_model)
    new.release.set()
    scorer = Scorer(batching=True, max_wait=0.002, max_records=256)
    blocker = threading.Thread(target=scorer.score, args=(old, [passengers[0]]), kwargs={"strict": False})
    blocker.start()
    wait_for(lambda: old.calls, 30, interval=0.001)
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(scorer.score, old if i % 2 else new, [passengers[i]], strict=False) for i in range(12)]
        settle(scorer, lambda: old.checked_requests + new.checked_requests >= 13)
        old.release.set()
        results = [f.result(30) for f in futures]
    blocker.join(30)
    assert sum(old.calls) == 1 + 6 and sum(new.calls) == 6  # every record predicted by the model it was sent to
    assert [r.predictions[0] for r in results] == unbatched(served_model, passengers[:12])[0]


def test_a_batch_mixing_missing_and_present_values_is_predicted_with_the_training_dtypes(served_model, passengers):
    """A request whose nullable columns are all missing shares a call with complete ones: same answers as alone."""
    gated = Gated(served_model)
    gappy = [{**p, "age": None, "fare": None} for p in passengers[1:3]]
    requests = [[passengers[0]], [passengers[3]], gappy, [passengers[4]]]
    results = run_gated(Scorer(batching=True, max_wait=0.002, max_records=256), gated, requests)
    assert gated.calls == [1, 4]
    assert as_frame(gated.frames[1]).dtypes.equals(served_model.prepare(passengers[:1])[0].dtypes)
    flat = [record for request in requests for record in request]
    assert [p for r in results for p in r.predictions] == unbatched(served_model, flat)[0]


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_a_call_whose_request_gave_up_before_it_started_never_runs(served_model, passengers, batching):
    """Behind a call stuck past the timeout, a queued call is cancelled when its request gives up: the model never sees it.

    With batching, the queued batch's leader gives up for all of it: its follower gets that same 504, not a model call.
    """
    gated = Gated(served_model)
    scorer = Scorer(batching=batching, max_wait=0.002, max_records=256 if batching else 1, timeout=1.0)
    results: dict[str, Any] = {}

    def one(name: str, record: dict) -> None:
        try:
            results[name] = scorer.score(gated, [record], strict=False)
        except BaseException as exc:  # noqa: BLE001  (the test inspects it)
            results[name] = exc

    stuck = threading.Thread(target=one, args=("stuck", passengers[0]))
    stuck.start()
    wait_for(lambda: gated.calls, 30, interval=0.001)
    queued = [threading.Thread(target=one, args=(name, passengers[i])) for i, name in ((1, "leader"), (2, "follower"))]
    queued[0].start()
    if batching:  # the leader opened the next batch; the follower joins it
        wait_for(lambda: scorer._open, 30, interval=0.001)
    queued[1].start()
    if batching:
        wait_for(lambda: len(next(iter(scorer._open.values()), None).parts) == 2 if scorer._open else False, 30,
                 interval=0.001)
    for thread in [stuck, *queued]:
        thread.join(30)
    assert all(type(results[name]).__name__ == "ModelTimeout" for name in ("stuck", "leader", "follower"))
    assert scorer.overdue  # the stuck call still runs
    if batching:
        assert results["follower"] is results["leader"]  # given up together, before the model thread took them
    gated.release.set()
    wait_for(lambda: not scorer.overdue, 30, interval=0.01)
    answer = scorer.score(gated, [passengers[3]], strict=False)
    assert answer.predictions == unbatched(served_model, passengers[3:4])[0]
    assert gated.calls == [1, 1]  # the stuck call and the last one: the cancelled ones never reached the model


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "no-batching"])
def test_a_scorer_used_before_a_fork_answers_in_the_child(served_model, passengers, batching):
    """The model thread does not survive a fork: the child starts its own (and its own wake-up pipes)."""
    scorer = Scorer(batching=batching, max_wait=0.002, max_records=256, timeout=20)
    expected = scorer.score(served_model, passengers[:2], strict=False).predictions
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only with the right answer, never hang (the timeout makes a 504 of a hang)
        code = 1
        try:
            code = 0 if scorer.score(served_model, passengers[:2], strict=False).predictions == expected else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert scorer.score(served_model, passengers[:2], strict=False).predictions == expected  # the parent's still serves


def test_settings_and_app_wire_the_knobs(served_artifact, serving_keys):
    def settings(**overrides: Any) -> Settings:
        return Settings.from_config(layer(Config("."), {"ARTIFACT": "x.bbx", **overrides}))

    assert (settings().batching, settings().batch_max_wait_ms, settings().batch_max_records) == (True, 0.5, 64)
    for key, value in [("BATCHING", "yes"), ("BATCH_MAX_WAIT_MS", -1), ("BATCH_MAX_WAIT_MS", True), ("BATCH_MAX_RECORDS", 0)]:
        with pytest.raises(UsageError, match=f"BLACKBOX_{key}"):
            settings(**{key: value})
    app = create_app({"ARTIFACT": str(served_artifact), "LOAD_OPTIONS": {"trusted_keys": [str(serving_keys[1])]},
                      "BATCHING": False, "BATCH_MAX_WAIT_MS": 5, "BATCH_MAX_RECORDS": 64})
    scorer = app.extensions["blackbox"].scorer
    assert (scorer.batching, scorer.max_wait, scorer.max_records) == (False, 0.005, 64)


@pytest.mark.slow
def test_gunicorn_batches_concurrent_requests_and_answers_each_exactly(served_artifact, serving_keys, served_model,
                                                                        passengers, tmp_path):
    server = Server([str(served_artifact), "--host", "127.0.0.1", "--workers", "1", "--threads", "16",
                     "--trusted-keys", str(serving_keys[1])], tmp_path / "server.log")
    try:
        server.wait_ready()
        records = (passengers * 4)[:160]
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda record: call(server.url + "/predict", record, timeout=60), records))
        assert [status for status, _ in answers] == [200] * len(records)
        assert [json.loads(body)["predictions"][0] for _, body in answers] == served_model.predict_batch(records)
        calls = server.metric("blackbox_batch_records_count")
        assert server.metric("blackbox_batch_records_sum") == len(records)
        assert 0 < calls < len(records), "concurrent requests should have shared model calls"
    finally:
        server.stop()


def test_validate_checks_what_prepare_checks_without_building_a_frame(served_model, passengers):
    records = [{**passengers[0], "cabin": "C85"}, passengers[1]]
    assert served_model.validate(records) == served_model.prepare(records)[1] != []
    bad = [passengers[0], {**passengers[1], "pclass": "first"}]
    with pytest.raises(SchemaError) as validated:
        served_model.validate(bad)
    with pytest.raises(SchemaError) as prepared:
        served_model.prepare(bad)
    assert validated.value.problems == prepared.value.problems != []
