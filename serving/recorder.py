"""The server's side of the prediction log: a bounded queue and one writer thread per worker.

Scope: getting answered predictions into :class:`blackbox.monitoring.predlog.PredictionLog`
without ever making a request wait on the database. The request path only
appends one entry (the request's records and answer, by reference) to a queue
bounded in rows and returns. The writer thread builds the rows and inserts up to
:data:`BATCH_ROWS` per transaction. Part of the worker core (no Flask): the
caller passes the request's facts (id, client, latency, time) to
:meth:`Recorder.record`. Labels for logged predictions come in through
:mod:`serving.routes.feedback`, straight into :attr:`Recorder.log`.

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
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blackbox import Model
from blackbox.monitoring.predlog import SQLITE_BUSY_MS, TRANSIENT, PredictionLog, prediction_rows

from .inference import Scored
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

        def forked() -> None:
            recorder = alive()
            if recorder is not None:
                recorder._forked()

        os.register_at_fork(after_in_child=forked)

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

    def record(
        self, model: Model, records: Sequence[Mapping[str, Any]], scored: Scored, *,
        request_id: str, client_id: str | None, latency_ms: float, ts: dt.datetime,
    ) -> None:
        """Queue an answered request's rows, or count them dropped; never waits on the database.

        ``client_id``: the API key's id (None without keys); ``latency_ms``: from
        the request's start to its answer; ``ts``: when it was answered (UTC).
        """
        entry = _Entry(request_id, ts, client_id, latency_ms, model, records, scored)
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
            entries: list[_Entry] = []
            count = 0
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
