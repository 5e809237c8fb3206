"""Drift of this worker's live inputs from the training profile: the window, the report, the gauges.

Scope: one worker's view. The request path only appends the records it just
scored to a bounded :class:`collections.deque` (under a lock held for the
append), each cut to the schema's fields with strings over
:data:`blackbox.monitoring.predlog.MAX_TEXT` characters shortened as the
prediction log keeps them (:func:`~blackbox.monitoring.predlog.compact`), so a
record's unknown or huge fields never stay in memory; everything costly (typing the window with the model's schema,
:func:`blackbox.monitoring.drift.compare`) runs when :meth:`Monitor.report` is asked
(the body of ``GET /drift``, :mod:`serving.routes.ops`) and in a daemon thread
that refreshes the Prometheus gauges every ``DRIFT_INTERVAL`` seconds when
records arrived since the last refresh. A refresh that fails, for whatever reason,
is logged (``drift_failed``, with the error's type) and tried again the next
round: the thread never stops refreshing silently. Rounds failing the same way
are logged once, then again every :data:`FAILURE_REPEAT` seconds with how many
rounds failed (``rounds_failed``); the first round that succeeds after them logs
``drift_recovered``.

Each served model has its own window (``/models/{name}/drift``; gauges with
its ``model`` label). The window belongs to one model: it is emptied when the holder swaps in a model
with another payload sha256, and records scored by a model that is no longer
held (requests in flight during a swap) are not counted. Each gunicorn worker
keeps its own window: merging them would mean shipping records between
processes on the request path, and every worker gets a share of the same
traffic, so one worker's window is a fair sample. ``/drift`` therefore names the
worker's pid and window size, and the gauges carry a ``pid`` label (see
:mod:`.metrics`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from blackbox import BlackboxError, Model
from blackbox.monitoring import drift
from blackbox.monitoring.predlog import compact

from .holder import ModelHolder, identity
from .logs import RequestLog
from .metrics import Metrics

FAILURE_REPEAT = 600.0
"""Seconds before refresh rounds still failing the same way are logged again."""


class Monitor:
    """The last ``capacity`` validated records this worker scored with the held model (0: off)."""

    def __init__(
        self, holder: ModelHolder, metrics: Metrics, log: RequestLog, *, capacity: int, interval: float, name: str,
    ) -> None:
        self.name = name  # the served name: the gauges' model label
        self._holder = holder
        self._metrics = metrics
        self._log = log
        self.capacity = capacity
        self._interval = interval
        self._window: deque[Mapping[str, Any]] = deque(maxlen=capacity or None)
        self._lock = threading.Lock()
        self._sha: str | None = None  # the model the window's records belong to
        self._seen = 0  # records observed since the window was (re)started
        self._reported = 0  # value of _seen at the last gauge refresh
        self._features: tuple[str, ...] = ()  # features the gauges currently show
        self._failure: tuple[str, str] | None = None  # (code, reason) of the rounds failing since the last success
        self._failed_rounds = 0
        self._failure_logged = 0.0  # time.monotonic() when it was last logged

    def observe(self, model: Model, records: Sequence[Mapping[str, Any]]) -> None:
        """Remember records ``model`` just scored (the one call on the request path)."""
        if not self.capacity or model is not self._holder.model:
            return
        columns = model.schema.columns
        kept = [{name: compact(record[name]) for name in columns if name in record} for record in records]
        with self._lock:
            if model.sha256 != self._sha:
                self._window.clear()
                self._sha, self._seen, self._reported = model.sha256, 0, 0
            self._window.extend(kept)
            self._seen += len(records)

    def report(self) -> dict[str, Any]:
        """Drift of the window against the held model's training profile (the body of ``GET /drift``)."""
        model = self._holder.require()
        records, seen = self._snapshot(model)
        body: dict[str, Any] = {
            "model": identity(model),
            "scope": "worker",
            "worker": {"pid": os.getpid()},
            "window": {"records": len(records), "capacity": self.capacity, "observed": seen},
            "thresholds": {"moderate": drift.MODERATE, "major": drift.MAJOR},
        }
        profile = model.manifest.profile
        if not self.capacity:
            return {**body, "status": "off", "message": "Drift monitoring is off in this server (DRIFT_WINDOW=0); "
                    "set DRIFT_WINDOW (env BLACKBOX_DRIFT_WINDOW) to a number of records to turn it on."}
        if not profile:
            return {**body, "status": "no_profile", "message": f"{model.name} {model.version} carries no training "
                    "profile (it was saved without train_data); save it again with train_data= to monitor drift."}
        if not records:
            return {**body, "status": "no_data", "message": f"Worker {os.getpid()} has scored no records with "
                    f"{model.name} {model.version} yet; ask again after some predictions."}
        frame, _ = model.prepare(records)
        features = drift.compare(profile, frame)
        self._publish(features, seen)
        return {**body, "status": drift.worst(features) or "stable", "features": features}

    def start(self) -> None:
        """Refresh the gauges in a daemon thread every ``interval`` seconds (not at all when off)."""
        if self.capacity and self._interval > 0:
            threading.Thread(target=self._refresh, name="blackbox-drift", daemon=True).start()

    def restart(self) -> None:
        """In a process forked from this one (``gunicorn --preload``): refresh here too, with a fresh lock.

        Another thread may have held the lock when the process forked; no thread of the parent is in the child to
        release it, so every request observing records would wait for it forever.
        """
        self._lock = threading.Lock()
        self.start()

    def _snapshot(self, model: Model) -> tuple[list[Mapping[str, Any]], int]:
        with self._lock:
            if model.sha256 != self._sha:
                return [], 0
            return list(self._window), self._seen

    def _publish(self, features: Mapping[str, Mapping[str, Any]], seen: int) -> None:
        self._metrics.drift(self.name, features, stale=set(self._features) - set(features))
        self._features = tuple(features)
        self._reported = seen

    def _refresh(self) -> None:
        while True:
            time.sleep(self._interval)
            model = self._holder.model
            if model is None:
                continue
            if model.sha256 != self._sha:  # swapped and nothing scored yet: the old numbers no longer apply
                self._publish({}, 0)
            elif self._seen != self._reported and model.manifest.profile:
                try:
                    self.report()
                except BlackboxError as exc:  # keep refreshing; the log says why this round failed
                    self._failed(exc.code, exc.message)
                except Exception as exc:  # noqa: BLE001  a bug must not end the thread: the gauges would stay stale
                    self._failed("internal_error", f"{type(exc).__name__}: {exc}"[:500],
                                 traceback="".join(traceback.format_exception(exc)))
                else:
                    self._recovered()

    def _failed(self, code: str, reason: str, **extra: str) -> None:
        """Log a failed round unless the rounds before failed the same way and were logged under FAILURE_REPEAT ago."""
        self._failed_rounds += 1
        now = time.monotonic()
        if (code, reason) == self._failure and now - self._failure_logged < FAILURE_REPEAT:
            return
        self._failure, self._failure_logged = (code, reason), now
        self._log.event("drift_failed", logging.ERROR, model=self.name, code=code, reason=reason,
                        rounds_failed=self._failed_rounds, **extra)

    def _recovered(self) -> None:
        if self._failure is not None:
            self._log.event("drift_recovered", logging.INFO, model=self.name, rounds_failed=self._failed_rounds)
            self._failure, self._failed_rounds = None, 0

