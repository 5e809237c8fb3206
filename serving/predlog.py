"""The server's side of the prediction log: a bounded queue, one writer thread per worker, and ``/feedback``.

Scope: getting answered predictions into :class:`blackbox.monitoring.predlog.PredictionLog`
without ever making a request wait on the database. The request path only
appends one entry (the request's records and answer, by reference) to a queue
bounded in rows and returns. The writer thread builds the rows and inserts up to
:data:`BATCH_ROWS` per transaction.

Every process model works: the writer thread belongs to the process that
records, started by its first :meth:`Recorder.record`, never at app creation.
A process forked from one holding a Recorder (``gunicorn --preload``, a fork
after ``create_app``) starts with an empty queue, fresh locks and its own
database connections (an ``os.register_at_fork`` hook), so each worker writes its
own answers and the parent's queue stays the parent's. Rows are only queued
while this process's writer is alive (else they are counted ``failed`` at once),
and rows still queued when :meth:`Recorder.close` finds no writer to finish them
are counted ``failed`` too: a queue that is never drained shows in the counters
instead of vanishing.

When the database is down, locked or full, the batch in hand is retried with
exponential backoff while the queue keeps filling up to :data:`CAPACITY_ROWS`,
so a short outage loses nothing; a request whose rows do not fit is still answered (fail-open), and its rows are counted
``dropped``. :meth:`Recorder.close` runs at interpreter exit (a gunicorn worker
exits that way after SIGTERM) and keeps writing for :data:`DRAIN_SECONDS`;
what is still unwritten then is counted ``failed``. Every answered record ends
up in exactly one of ``blackbox_prediction_log_rows_total{outcome="written|dropped|failed"}``,
and outages are logged as rate-limited ``prediction_log_*`` events.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blackbox import Model
from blackbox.errors import problem as _problem
from blackbox.monitoring.predlog import SQLITE_BUSY_MS, TRANSIENT, PredictionLog, prediction_rows
from blackbox.schema import NUMERIC_PATTERN
from flask import Request, g
from werkzeug.exceptions import Conflict, ServiceUnavailable, UnprocessableEntity

from . import payloads
from .inference import Scored
from .lifecycle import request_id
from .logs import RequestLog
from .metrics import Metrics

CAPACITY_ROWS = 50_000
"""Rows a worker holds for the database at most (~50 MB of Titanic-sized records): a minute of full load."""
BATCH_ROWS = 1_000
LINGER_SECONDS = 0.05
"""How long the writer waits for more rows before a transaction, so a busy server writes in batches."""
BACKOFF_SECONDS = (0.1, 5.0)
DRAIN_SECONDS = 5.0
"""Writing time after SIGTERM: within gunicorn's graceful timeout (10 s) with room for requests in flight."""
WARN_SECONDS = 10.0
MAX_LABEL_CHARS = 1_000


class PredictionLogOff(Conflict):
    description = "The prediction log is off, so labels have nowhere to go: start the server with --prediction-log URL."


class PredictionLogUnavailable(ServiceUnavailable):
    description = "The prediction log database is unreachable; the labels were not stored. Retry later."


class InvalidFeedback(UnprocessableEntity):
    """Feedback entries that cannot be stored; ``problems`` name each entry and field."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(
            f"{len(problems)} problem(s) in the feedback: send {{\"request_id\": ..., \"row\": 0, \"label\": ...}} "
            "or a list of them (row defaults to 0)."
        )
        self.problems = problems


@dataclass(frozen=True)
class _Entry:
    """One answered request, as the request path hands it over (no copying, no row building)."""

    request_id: str
    ts: dt.datetime
    client_id: str | None
    latency_ms: float
    model: Model
    records: Sequence[Mapping[str, Any]]
    scored: Scored

    def rows(self) -> list[dict[str, Any]]:
        model = self.model
        return prediction_rows(
            request_id=self.request_id, ts=self.ts, client_id=self.client_id, latency_ms=self.latency_ms,
            model={"name": model.name, "version": model.version, "sha256": model.sha256},
            fields=model.schema.columns, records=self.records,
            predictions=self.scored.predictions, probabilities=self.scored.probabilities,
        )


class Recorder:
    """This worker's queue and writer thread for one :class:`PredictionLog`."""

    def __init__(self, log: PredictionLog, metrics: Metrics, events: RequestLog, *, capacity: int = CAPACITY_ROWS) -> None:
        self.log = log
        self.capacity = capacity
        self._metrics = metrics
        self._events = events
        self._begin()
        for outcome in ("written", "dropped", "failed"):
            metrics.log_rows.labels(outcome)  # exported as 0 from the start, so a dashboard's sum is complete
        atexit.register(self.close)
        alive = weakref.ref(self)  # the fork hook cannot be unregistered: it must not keep a closed app's Recorder
        os.register_at_fork(after_in_child=lambda: (recorder := alive()) is not None and recorder._forked())

    def _begin(self) -> None:
        """This process's queue, locks and accounting; its writer thread starts with the first record."""
        self._pending: deque[_Entry] = deque()
        self._rows = 0  # queued or in the batch being written
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None  # set by close()
        self._wake = threading.Event()
        self._warned: dict[str, float] = {}
        self._unwritten = {"dropped": 0, "failed": 0}
        self._outage = False
        self._abandoned = False

    def _forked(self) -> None:
        """In a child process: nothing of the parent's writer is ours (its thread is gone, its locks may be held)."""
        closed = self._deadline is not None
        self._begin()
        if closed:  # the parent had stopped logging: so has the child
            self._deadline = time.monotonic()
        self._metrics.log_queue.set(0)  # an in-memory gauge starts at the parent's value
        self.log.engine.dispose(close=False)  # the parent's connections stay the parent's

    def _writer_alive(self) -> bool:
        """Whether this process's writer thread runs, starting it if needed; called holding ``_cond``."""
        if self._thread is None or not self._thread.is_alive():
            thread = threading.Thread(target=self._run, name="blackbox-prediction-log", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # "can't start new thread": out of threads or memory
                return False
            self._thread = thread
        return True

    # ---------------------------------------------------------------- request path

    def record(self, model: Model, records: Sequence[Mapping[str, Any]], scored: Scored) -> None:
        """Queue an answered request's rows, or count them dropped; never waits on the database."""
        entry = _Entry(request_id(), dt.datetime.now(dt.timezone.utc), g.get("key_id"),
                       (time.perf_counter() - g.get("started", time.perf_counter())) * 1000, model, records, scored)
        count = len(records)
        with self._cond:
            open_, room = self._deadline is None, self._rows + count <= self.capacity
            writer = open_ and room and self._writer_alive()
            if writer:
                self._pending.append(entry)
                self._rows += count
                self._cond.notify()
        if writer:
            self._metrics.log_queue.inc(count)
        elif open_ and room:
            self._settle("failed", count, "no writer thread could be started in this process", queued=False)
        else:
            self._settle("dropped", count, "the queue is full (the database is slow or down)")

    # ---------------------------------------------------------------- writer thread

    def _run(self) -> None:
        while (entries := self._take()) is not None:
            count = sum(len(entry.records) for entry in entries)
            try:
                rows = [row for entry in entries for row in entry.rows()]
            except Exception as exc:  # noqa: BLE001  a bug in row building must not stop the writer
                self._settle("failed", count, f"the rows could not be built: {exc!r}")
            else:
                self._write(rows)

    def _take(self) -> list[_Entry] | None:
        """The next batch of whole entries (at least one), after lingering for more; None once closed and empty."""
        with self._cond:
            while not self._pending:
                if self._deadline is not None:
                    return None
                self._cond.wait()
            if self._deadline is None and self._rows < BATCH_ROWS:
                self._cond.wait(LINGER_SECONDS)
            entries, count = [], 0
            while self._pending and (not entries or count + len(self._pending[0].records) <= BATCH_ROWS):
                entries.append(self._pending.popleft())
                count += len(entries[-1].records)
            return entries

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``, retrying while the database is unreachable, until written or the drain deadline passes."""
        delay = BACKOFF_SECONDS[0]
        while not self._expired():
            try:
                self.log.append(rows)
            except TRANSIENT as exc:
                self._outage = True
                self._warn("prediction_log_unavailable", exc, rows=len(rows))
                self._wake.wait(delay)
                delay = min(delay * 2, BACKOFF_SECONDS[1])
                continue
            except Exception as exc:  # noqa: BLE001  refused by the database, not an outage: isolate the bad row
                if len(rows) > 1:
                    for row in rows:
                        self._write([row])
                else:
                    self._settle("failed", 1, f"the database refused the row: {exc!r}")
                return
            self._settle("written", len(rows))
            if self._outage:
                self._outage = False
                self._events.event("prediction_log_recovered", logging.INFO, database=self.log.name)
            return
        self._settle("failed", len(rows), "the server stopped before the database came back")

    def _expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    # ---------------------------------------------------------------- accounting

    def _settle(self, outcome: str, count: int, reason: str = "", *, queued: bool = True) -> None:
        """Count rows as written, dropped or failed, exactly once: after close() gave up on the writer, it counts nothing.

        ``queued``: the rows were in the queue (dropped rows never are).
        """
        queued = queued and outcome != "dropped"
        with self._cond:
            if self._abandoned:
                return
            if queued:
                self._rows -= count
            if outcome != "written":
                self._unwritten[outcome] += count
        self._metrics.log_rows.labels(outcome).inc(count)
        if queued:
            self._metrics.log_queue.dec(count)
        if outcome != "written":
            self._warn(f"prediction_log_{outcome}", reason)

    def _warn(self, event: str, reason: object, **fields: Any) -> None:
        """One warning line per event kind every WARN_SECONDS, with the running totals of unwritten rows."""
        now = time.monotonic()
        if now - self._warned.get(event, -WARN_SECONDS) < WARN_SECONDS:
            return
        self._warned[event] = now
        self._events.event(event, logging.WARNING, database=self.log.name, reason=str(reason)[:500],
                           queued_rows=self._rows, **self._unwritten, **fields)

    def close(self, timeout: float = DRAIN_SECONDS) -> None:
        """Stop taking rows, write what is queued for up to ``timeout`` seconds, count the rest ``failed``."""
        with self._cond:
            if self._deadline is not None:
                return
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout + SQLITE_BUSY_MS / 1000 + 1)
        if self._rows:  # still inside a database call, or never taken: nothing of it is confirmed written
            stuck = thread is not None and thread.is_alive()
            self._settle("failed", self._rows, "the server stopped while the database was not answering" if stuck
                         else "no writer thread took these rows")
            with self._cond:
                self._abandoned = True
        self._warned.clear()
        self._events.event("prediction_log_closed", logging.INFO if not any(self._unwritten.values()) else logging.WARNING,
                           database=self.log.name, **self._unwritten)
        self.log.dispose()


# ---------------------------------------------------------------- POST /feedback

def store_feedback(
    recorder: Recorder, request: Request, *, max_entries: int, models: Mapping[str, Model | None],
    addressed: Model | None,
) -> dict[str, Any]:
    """Store the labels of a ``/feedback`` body; the answer says, per entry, whether its prediction is logged yet.

    The body is ``{"request_id": ..., "row": 0, "label": ...}`` or a list of them
    (``row`` defaults to 0, the only record of a single-record request). A label
    for a prediction not logged yet (the log is written asynchronously) is kept all
    the same (``known: false``); a later label for the same record replaces it.

    Each label must be an outcome of the model it is about (:func:`as_label`):
    the model of that name in ``models`` (the served ones) when the log names the
    prediction's model, else ``addressed`` (the route's model, or the only one
    served); with neither, the entry is refused (``unknown_model``). Labels are
    stored as the class itself (``1.0`` and ``"1"`` for the class ``1`` store
    ``1``), so a label column keeps the classes' type. Nothing is stored unless
    every entry passes.
    """
    entries = payloads.read_records(request, lambda body: body if isinstance(body, list) else [body], max_records=max_entries)
    labels = [_label(index, entry) for index, entry in enumerate(entries)]
    problems = [problem for item in labels if isinstance(item, list) for problem in item]
    if problems:
        raise InvalidFeedback(problems)
    entries_ok: list[tuple[str, int, Any]] = labels  # type: ignore[assignment]  # no problems: every item is a tuple
    try:
        logged = recorder.log.predicted_by((rid, row) for rid, row, _ in entries_ok)
        stored = []
        for index, (rid, row, label) in enumerate(entries_ok):
            name = logged.get((rid, row), (None, None))[0]
            model = models.get(name) if name is not None else None
            checked = _checked(index, label, model or addressed)
            if isinstance(checked, dict):
                problems.append(checked)
            else:
                stored.append((rid, row, checked[0]))
        if problems:
            raise InvalidFeedback(problems)
        known = recorder.log.add_labels(stored)
    except TRANSIENT:
        raise PredictionLogUnavailable() from None
    return {
        "stored": len(stored),
        "feedback": [{"request_id": rid, "row": row, "known": seen} for (rid, row, _), seen in zip(stored, known, strict=True)],
        "request_id": request_id(),
    }


def _checked(index: int, label: Any, model: Model | None) -> tuple[Any] | dict[str, Any]:
    """``(label as stored,)``, or the entry's problem with ``label`` for ``model``."""
    if model is None:
        return _problem(index, "label", "unknown_model",
                        "a label for a prediction this server made: this one is not in the log (yet), so which "
                        "model's classes it must match is unknown; send it to /models/NAME/feedback", _shown(label))
    value = as_label(model, label)
    if value is not _REFUSED:
        return (value,)
    classes = model.classes
    if classes is None:
        return _problem(index, "label", "invalid",
                        f"a finite number (model {model.name!r} is a regressor), as a JSON number or numeric text", _shown(label))
    shown = json.dumps(classes[:20]) + (f" and {len(classes) - 20} more" if len(classes) > 20 else "")
    return _problem(index, "label", "unknown_class", f"one of model {model.name!r}'s classes: {shown}", _shown(label))


_REFUSED = object()
_NUMERIC = re.compile(NUMERIC_PATTERN)


def as_label(model: Model, label: Any) -> Any:
    """``label`` as the outcome of ``model`` it names (the class itself), or :data:`_REFUSED`.

    The JSON value must equal a class once read as the classes' own type:
    a number class (integer or float) takes a number or numeric text of the same
    value (``1``, ``1.0``, ``"1"``, ``" 1 "`` for the class ``1``); a string class that
    string exactly, or a number whose text it is; a boolean class a boolean or
    ``"true"``/``"false"``. A boolean is never a number (``true`` is not the class
    ``1``). A regressor takes a finite number or numeric text, stored as a float.
    """
    classes = model.classes
    if classes is None:
        if (model.manifest.get("output") or {}).get("kind") != "regression":
            return label  # an adapter that names no classes: nothing to check against
        number = _number(label)
        return _REFUSED if number is None else number
    for value in classes:
        if _names(value, label):
            return value
    return _REFUSED


def _names(value: Any, label: Any) -> bool:
    """Whether the JSON ``label`` names the class ``value``."""
    if isinstance(value, bool):
        if isinstance(label, str):
            return label.strip().lower() == ("true" if value else "false")
        return isinstance(label, bool) and label is value
    if isinstance(value, str):
        if isinstance(label, str):
            return label == value
        number = _number(label)
        return number is not None and (str(int(number)) if number.is_integer() else repr(number)) == value
    if isinstance(value, (int, float)):
        if isinstance(label, int) and not isinstance(label, bool):
            return label == value  # exactly, however large
        number = _number(label)
        return number is not None and number == value
    return label == value


def _number(label: Any) -> float | None:
    """A JSON number or numeric text as a finite float; None for anything else (booleans included)."""
    if isinstance(label, bool):
        return None
    if isinstance(label, str):
        if len(label) > 100 or not _NUMERIC.match(label):
            return None
        label = float(label)
    if isinstance(label, (int, float)):
        try:
            number = float(label)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _shown(label: Any) -> str:
    """The label as the client sent it, in JSON, cut for the answer."""
    try:
        text = json.dumps(label, ensure_ascii=True, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(label)
    return text if len(text) <= 100 else text[:99] + "…"


def _label(index: int, entry: Any) -> tuple[str, int, Any] | list[dict[str, Any]]:
    """One entry as (request_id, row, label), or the problems that keep it out."""

    def problem(field: str | None, issue: str, expected: str) -> dict[str, Any]:
        if field and isinstance(entry, dict):
            received = type(entry[field]).__name__ if field in entry else "nothing"
        else:
            received = type(entry).__name__
        return _problem(index, field, issue, expected, received)

    if not isinstance(entry, dict):
        return [problem(None, "not_an_object", 'an object {"request_id", "row", "label"}')]
    found = []
    rid, row, label = entry.get("request_id"), entry.get("row", 0), entry.get("label")
    if not isinstance(rid, str) or not 1 <= len(rid) <= 128:
        found.append(problem("request_id", "invalid", "the request_id a prediction answered with (1-128 characters)"))
    if type(row) is not int or row < 0:
        found.append(problem("row", "invalid", "the record's 0-based index in its request (default 0)"))
    if isinstance(label, (dict, list)) or label is None or (isinstance(label, str) and len(label) > MAX_LABEL_CHARS):
        found.append(problem("label", "invalid", f"the observed outcome: a number, boolean or string (at most {MAX_LABEL_CHARS} characters)"))
    found += [problem(str(key)[:40], "unknown_field", "only request_id, row and label") for key in entry
              if key not in ("request_id", "row", "label")]
    return found or (rid, row, label)
