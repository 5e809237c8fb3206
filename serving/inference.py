"""Records -> checked columns -> predictions, with concurrent requests sharing one model call.

Scope: no HTTP here. Validation is the model's schema (:meth:`blackbox.Model.checked`),
never code written for one model, and it runs in each request's own thread, so a bad
record gets its own 422 and never fails its neighbours. A request's records are checked
(and converted) once: what the model gets is the same input ``Model.predict`` gives
its plan, :class:`~blackbox.fastpath.table.Prepared` (no DataFrame; a batch joins its
requests' columns), or, for a model without a plan, the frame those records make
(exactly :meth:`~blackbox.Model.prepare`'s).

Why micro-batching: each model call has a fixed cost (with the fast path a few
hundred microseconds, most of it per call rather than per row; without it a
``DataFrameMapper`` transform costs about the same for 1 row as for 32), so a
worker that predicts one request at a time is bound by calls, not records.
Requests of one worker (gunicorn gthread) that arrive while the model is busy,
or are still being validated, join one open batch; its first request (the
leader) hands the joined input to the model thread for the one
``predict_and_proba_frame`` call, and every request takes its own slice back.
A request alone never waits: the leader waits (at most ``max_wait``) only while
other requests are being validated. The model is called by one thread at a time: a pipeline holds user
code that need not be thread-safe (sklearn-pandas' ``DataFrameMapper`` writes
``self.transformed_names_`` on every transform), and the GIL would serialise
that work anyway. A hot reload changes the model object; batches are per
model object, so no call ever mixes two models.

One request never fails another: when the shared call of a batch raises, the
leader (still holding the model) calls the model again for each request of the
batch alone, so only the requests whose records make the model fail get an
error (their own, from their own call), and every other one its prediction. A
model broken for every input thus costs one call more per request of the batch
(at most ``max_records`` small calls); a request alone is called once, as
without batching.

Request timeout: every model call runs on this process's one model thread
(which also serialises them), and a request waits for its answer only until
its deadline (``timeout`` seconds after it reached the scorer), then raises
:class:`ModelTimeout` (504). A Python thread cannot be stopped, so a call
that runs past a deadline goes on to its end on the model thread and its
answer is dropped; a call still queued behind it is cancelled instead. While
such an overdue call runs, every new request is told at once (504) rather than
queueing behind it; once the call ends, the worker answers normally again. A
call that never ends (an infinite loop in a model) thus leaves the worker
answering 504 until it is restarted. :attr:`Scorer.overdue` says so, and
``/ready`` is a 503 meanwhile (:mod:`serving.routes.ops`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pandas as pd

from blackbox import Model
from blackbox.fastpath.table import Prepared


@dataclass(frozen=True)
class Scored:
    """Predictions in input order, class probabilities when the model has them, and input warnings."""

    predictions: list[Any]
    probabilities: list[list[float]] | None
    warnings: list[dict[str, Any]]


Answer = tuple[list[Any], list[list[float]] | None]
"""One model call's predictions and probabilities (None: the model has none)."""

T = TypeVar("T")
SETTING = "REQUEST_TIMEOUT (blackbox serve --request-timeout)"


class ModelTimeout(Exception):
    """The model did not answer this request within the request timeout (HTTP 504 ``timeout``)."""


@dataclass
class _Batch:
    """Validated requests for one model, answered by one call; filled in by the leader."""

    model: Model
    parts: list[Prepared] = field(default_factory=list)  # each request's checked records, in order
    starts: list[int] = field(default_factory=list)  # offset of each request's first record
    size: int = 0  # records in the batch
    open: bool = True
    started: bool = False  # the model thread took it (set under the scorer's condition)
    done: threading.Event = field(default_factory=threading.Event)
    answers: dict[int, Answer | Exception] = field(default_factory=dict)  # request offset -> its answer or error
    error: BaseException | None = None  # the batch failed before any request could be answered


class Scorer:
    """Scores requests, one model call at a time in this process, gathering concurrent ones into a batch.

    :param batching: gather concurrent requests (False: each request is its own call).
    :param max_wait: seconds a batch waits for requests still being validated.
    :param max_records: records per model call; a request this large is never batched.
    :param observe: called with the number of records of every model call (a metric).
    :param timeout: seconds a request may take from here to its answer (None: no limit).
    """

    def __init__(
        self,
        *,
        batching: bool = False,
        max_wait: float = 0.0,
        max_records: int = 1,
        observe: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.batching = batching
        self.max_wait = max_wait
        self.max_records = max_records
        self.timeout = timeout
        self._observe = observe
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blackbox-model")  # its thread starts on first use
        self._running: object | None = None  # the job on the model thread
        self._overdue = False  # that job ran past a request's deadline
        self._state = threading.Lock()
        self._cond = threading.Condition()
        self._open: dict[int, _Batch] = {}  # id(model) -> its open batch
        self._validating = 0

    def score(self, model: Model, records: Sequence[Mapping[str, Any]], *, strict: bool) -> Scored:
        """Validate this request's records (one SchemaError lists every problem), then predict them."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        if not self.batching or len(records) >= self.max_records:
            prepared = model.checked(records, strict=strict)
            predictions, probabilities = self._run(lambda: self._call(model, prepared), deadline)
            return Scored(predictions, probabilities, prepared.warnings)
        with self._cond:
            self._validating += 1
        try:
            prepared = model.checked(records, strict=strict)
        finally:
            with self._cond:
                self._validating -= 1
                if self._validating == 0:  # what a waiting leader waits for (a closed batch is notified by _close)
                    self._cond.notify_all()
        warnings = prepared.warnings
        self._check_overdue()
        batch, start, leader = self._join(model, prepared)
        if leader:
            self._lead(batch, deadline)
        if not batch.done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            raise self._timeout()
        answer = batch.answers.get(start, batch.error)
        if isinstance(answer, BaseException):
            raise answer
        assert answer is not None  # the leader answers every request, or sets error
        predictions, probabilities = answer
        return Scored(predictions, probabilities, warnings)

    def _join(self, model: Model, prepared: Prepared) -> tuple[_Batch, int, bool]:
        """Add a validated request to the model's open batch (or open one); returns (batch, offset, is leader)."""
        with self._cond:
            batch = self._open.get(id(model))
            if batch is not None and batch.size + len(prepared) > self.max_records:
                self._close(batch)
                batch = None
            leader = batch is None
            if batch is None:
                batch = self._open[id(model)] = _Batch(model)
            start = batch.size
            batch.starts.append(start)
            batch.parts.append(prepared)
            batch.size += len(prepared)
            if batch.size >= self.max_records:
                self._close(batch)
            return batch, start, leader

    def _close(self, batch: _Batch) -> None:
        """No more requests join ``batch`` (call with the condition held)."""
        if batch.open:
            batch.open = False
            del self._open[id(batch.model)]
            self._cond.notify_all()

    def _lead(self, batch: _Batch, deadline: float | None) -> None:
        """Wait for requests being validated (bounded), then for the model thread, which answers the batch."""
        with self._cond:
            self._cond.wait_for(lambda: not batch.open or self._validating == 0, timeout=self.max_wait)
        try:
            self._run(lambda: self._answer(batch), deadline)
        except ModelTimeout as exc:
            with self._cond:
                if not batch.started:  # the job will find the batch answered and return at once
                    self._close(batch)
                    batch.error = exc
                    batch.done.set()

    def _answer(self, batch: _Batch) -> None:
        """On the model thread: close the batch, predict it, give every request its answer (or the batch an error)."""
        with self._cond:  # requests keep joining while the previous batch runs
            if batch.done.is_set():  # its leader timed out before the model thread got to it
                return
            batch.started = True
            self._close(batch)
        try:
            try:
                joined = batch.parts[0] if len(batch.parts) == 1 else Prepared.joined(batch.parts)
                predictions, probabilities = self._call(batch.model, joined)
            except Exception:
                if len(batch.starts) == 1:
                    raise
                self._isolate(batch)
            else:
                stops = [*batch.starts[1:], batch.size]
                for start, stop in zip(batch.starts, stops):
                    batch.answers[start] = (
                        predictions[start:stop], None if probabilities is None else probabilities[start:stop]
                    )
        except BaseException as exc:  # noqa: BLE001  nothing was answered: every request of the batch gets this error
            batch.error = exc
        finally:
            batch.done.set()

    def _run(self, job: Callable[[], T], deadline: float | None) -> T:
        """``job()`` on the model thread; ModelTimeout once ``deadline`` passes (the job is cancelled if not started)."""
        self._check_overdue()
        token = object()

        def run() -> T:
            with self._state:
                self._running = token
            try:
                return job()
            finally:
                with self._state:
                    self._running, self._overdue = None, False

        future = self._runner.submit(run)
        try:
            return future.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            if not future.cancel():  # running: it cannot be stopped, so later requests are told at once
                with self._state:
                    self._overdue = self._overdue or self._running is token
            raise self._timeout() from None

    @property
    def overdue(self) -> bool:
        """Whether a model call ran past a request's deadline and still runs (every request is a 504 meanwhile)."""
        return self._overdue

    def _check_overdue(self) -> None:
        if self._overdue:
            raise ModelTimeout(
                f"The model is still busy with an earlier call that ran past the request timeout ({self.timeout:g} s, "
                f"setting {SETTING}); this worker answers again once that call ends: retry later."
            )

    def _timeout(self) -> ModelTimeout:
        return ModelTimeout(
            f"The model did not answer within the request timeout ({self.timeout:g} s, setting {SETTING}); "
            "retry later, or send fewer records per request."
        )

    def _isolate(self, batch: _Batch) -> None:
        """The shared call failed: call the model for each request alone, so each gets its own answer or error."""
        for start, part in zip(batch.starts, batch.parts):
            try:
                batch.answers[start] = self._call(batch.model, part)
            except Exception as exc:  # noqa: BLE001  this request's own failure (the model's, on its records)
                batch.answers[start] = exc

    def _call(self, model: Model, prepared: Prepared) -> Answer:
        """One model call: the plan takes the checked columns as they are; without one, the frame they make.

        Either way the input is what :meth:`Model.prepare` gives for the same
        records, with the training dtypes whatever mix of requests shares it (one
        with a column entirely missing, say): each value was checked and
        converted on its own, in its request's thread, and is never checked again.
        """
        if self._observe is not None:
            self._observe(len(prepared))
        source: Prepared | pd.DataFrame = prepared if model.plan is not None else prepared.frame()
        return model.predict_and_proba_frame(source)
