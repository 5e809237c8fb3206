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
model object, so no call ever mixes two models. Every hand-off between a
request's thread and the model thread (a batch queued, a batch answered) is a
byte written to the waiting thread's pipe with the GIL released
(:class:`_Signal`), never a lock or condition released with the GIL held.

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

import contextlib
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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

SETTING = "REQUEST_TIMEOUT (blackbox serve --request-timeout)"


class ModelTimeout(Exception):
    """The model did not answer this request within the request timeout (HTTP 504 ``timeout``)."""


class _Batch:
    """Validated requests for one model, answered by one call on the model thread.

    Each request waiting for it has its thread's :class:`_Signal` in ``waiters``:
    the model thread sets them all once the batch is answered.
    """

    __slots__ = ("model", "parts", "starts", "size", "open", "started", "done", "waiters", "answers", "error")

    def __init__(self, model: Model) -> None:
        self.model = model
        self.parts: list[Prepared] = []  # each request's checked records, in order
        self.starts: list[int] = []  # offset of each request's first record
        self.size = 0  # records in the batch
        self.open = True  # requests may still join (set under the scorer's lock, as the three below)
        self.started = False  # the model thread took it
        self.done = False  # answered, or given up before it started
        self.waiters: list[_Signal] = []
        self.answers: dict[int, Answer | BaseException] = {}  # request offset -> its answer or error
        self.error: BaseException | None = None  # the batch failed before any request could be answered


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
        self._jobs: deque[_Batch] = deque()  # batches for the model thread, in order
        self._pid = 0  # the process whose model thread runs (threads do not survive a fork)
        self._wake: _Signal  # the model thread's: a batch was queued (made with the thread)
        self._overdue = False  # the batch on the model thread ran past its leader's deadline
        self._lock = threading.Lock()  # guards everything below and the batches' flags
        self._cond = threading.Condition(self._lock)  # a leader waiting for requests being validated
        self._open: dict[int, _Batch] = {}  # id(model) -> its open batch
        self._validating = 0

    def score(self, model: Model, records: Sequence[Mapping[str, Any]], *, strict: bool) -> Scored:
        """Validate this request's records (one SchemaError lists every problem), then predict them."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        if not self.batching or len(records) >= self.max_records:
            prepared = model.checked(records, strict=strict)
            self._check_overdue()
            batch, waiter = _Batch(model), _Signal.mine()
            batch.open = False
            self._add(batch, prepared, waiter)
            self._submit(batch)
            return self._answer_of(batch, 0, waiter, deadline, leader=True, warnings=prepared.warnings)
        with self._lock:
            self._validating += 1
        try:
            prepared = model.checked(records, strict=strict)
        finally:
            with self._lock:
                self._validating -= 1
                if self._validating == 0:  # what a waiting leader waits for (a closed batch is notified by _close)
                    self._cond.notify_all()
        self._check_overdue()
        batch, start, waiter, leader = self._join(model, prepared)
        if leader:
            with self._lock:  # requests being validated join before the call (bounded by max_wait)
                self._cond.wait_for(lambda: not batch.open or self._validating == 0, timeout=self.max_wait)
            self._submit(batch)
        return self._answer_of(batch, start, waiter, deadline, leader=leader, warnings=prepared.warnings)

    def _join(self, model: Model, prepared: Prepared) -> tuple[_Batch, int, _Signal, bool]:
        """Add a validated request to the model's open batch (or open one); returns (batch, offset, its signal, is leader)."""
        waiter = _Signal.mine()
        with self._lock:
            batch = self._open.get(id(model))
            if batch is not None and batch.size + len(prepared) > self.max_records:
                self._close(batch)
                batch = None
            leader = batch is None
            if batch is None:
                batch = self._open[id(model)] = _Batch(model)
            start = self._add(batch, prepared, waiter)
            if batch.size >= self.max_records:
                self._close(batch)
            return batch, start, waiter, leader

    @staticmethod
    def _add(batch: _Batch, prepared: Prepared, waiter: _Signal) -> int:
        """Append a request to ``batch`` (under the lock, unless nobody else can see the batch yet); its offset."""
        start = batch.size
        batch.starts.append(start)
        batch.parts.append(prepared)
        batch.waiters.append(waiter)
        batch.size += len(prepared)
        return start

    def _close(self, batch: _Batch) -> None:
        """No more requests join ``batch`` (call with the lock held)."""
        if batch.open:
            batch.open = False
            del self._open[id(batch.model)]
            self._cond.notify_all()

    def _submit(self, batch: _Batch) -> None:
        """Queue ``batch`` for the model thread (started here the first time in this process)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._jobs.clear()
                    self._wake = _Signal()
                    threading.Thread(target=self._serve, args=(self._wake,), name="blackbox-model", daemon=True).start()
                    self._pid = os.getpid()
        self._jobs.append(batch)
        self._wake.set()

    def _answer_of(
        self, batch: _Batch, start: int, waiter: _Signal, deadline: float | None, *, leader: bool,
        warnings: list[dict[str, Any]],
    ) -> Scored:
        """Wait for this request's answer until ``deadline``; the leader that gives up cancels a batch not started yet."""
        if not self._wait(batch, waiter, deadline):
            exc = self._timeout()
            if leader:
                with self._lock:
                    if not batch.started and not batch.done:  # the model thread will skip it
                        self._close(batch)
                        batch.error, batch.done = exc, True
                        waiters = batch.waiters
                    elif not batch.done:  # it runs and cannot be stopped: later requests are told at once
                        self._overdue, waiters = True, []
                    else:
                        waiters = []
                for other in waiters:
                    if other is not waiter:
                        other.set()
            with self._lock:
                done = batch.done and batch.error is not exc
            if not done:
                raise exc
        answer = batch.answers.get(start, batch.error)
        if isinstance(answer, BaseException):
            raise answer
        assert answer is not None  # the model thread answers every request, or sets error
        predictions, probabilities = answer
        return Scored(predictions, probabilities, warnings)

    def _serve(self, wake: _Signal) -> None:
        """The model thread: answer the queued batches one at a time, skipping those given up on."""
        while True:
            if not self._jobs:
                wake.wait(None)
                continue
            batch = self._jobs.popleft()
            with self._lock:  # requests keep joining while the previous batch runs
                if batch.done:  # its leader timed out before the model thread got to it
                    continue
                batch.started = True
                self._close(batch)
            try:
                self._answer(batch)
            finally:
                with self._lock:
                    batch.done, self._overdue = True, False
                for waiter in batch.waiters:
                    waiter.set()

    @staticmethod
    def _wait(batch: _Batch, waiter: _Signal, deadline: float | None) -> bool:
        """Wait until ``batch`` is done (True) or ``deadline`` passes (False); a stale wake-up only loops once more."""
        while not batch.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            waiter.wait(left)
        return True

    def _answer(self, batch: _Batch) -> None:
        """On the model thread: predict the batch, give every request its answer (or the batch an error)."""
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




class _Signal:
    """A wake-up call between threads: a pipe the waiting thread polls, written with the GIL released.

    A lock or a condition would do, but those are released with the GIL held:
    the thread woken can preempt the waker right there (2 cores, 64 threads),
    and the whole process then waits, GIL and all, for the waker to be
    scheduled again (profiled: ~17% of the time the GIL was held, on the model
    thread's wake-ups alone). ``os.write`` drops the GIL around the system call,
    so the process runs on meanwhile. A request thread keeps one (:meth:`mine`)
    for all its requests; a wake-up meant for a request that gave up is left in
    the pipe and costs the next wait one more look at its batch.
    """

    _mine = threading.local()

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._poll = select.poll()
        self._poll.register(self._read, select.POLLIN)

    @classmethod
    def mine(cls) -> _Signal:
        """This thread's signal."""
        signal: _Signal | None = getattr(cls._mine, "signal", None)
        if signal is None:
            signal = cls._mine.signal = cls()
        return signal

    @classmethod
    def _forget(cls) -> None:
        """After a fork: the child's threads make their own (the forking thread's pipe stays the parent's)."""
        cls._mine = threading.local()

    def wait(self, timeout: float | None) -> None:
        """Return once :meth:`set` was called (since the last wait), or after ``timeout`` seconds."""
        if self._poll.poll(None if timeout is None else timeout * 1000):
            with contextlib.suppress(BlockingIOError):  # drained by a wait that raced with this one
                os.read(self._read, 4096)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: wake-ups are pending anyway
            os.write(self._write, b"\0")

    def __del__(self) -> None:
        os.close(self._read)
        os.close(self._write)


os.register_at_fork(after_in_child=_Signal._forget)
