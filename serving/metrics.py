"""Prometheus metrics that stay correct under several gunicorn workers.

Scope: defining, updating and exposing the server's metrics. Every series about
a model carries a ``model`` label (the name it is served under, as in
``/models/{name}``), so several models in one server never mix. Each app gets its
own registry, so apps in one process (tests) never collide. When
``PROMETHEUS_MULTIPROC_DIR`` is set (``blackbox serve`` sets it to a fresh
directory before any worker starts), prometheus_client writes every value to
per-process files there and ``/metrics`` sums all workers' files, so any worker
answers for the whole server; gunicorn's ``child_exit`` hook calls
:func:`mark_process_dead` to drop an exited worker's live gauges.

The drift gauges use ``multiprocess_mode="liveall"``: each worker measures its
own window of inputs (:mod:`.monitor`), so each keeps its own series (a ``pid``
label) instead of a sum or max that no window ever showed; alert on
``max by (feature)``. NaN means no value yet (empty window, a feature without
one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Set
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 10_000)


class Metrics:
    """The server's metrics, registered on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # label values -> the series every request updates (see observe)
        self._served: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._predicted: dict[tuple[str, str], Any] = {}
        self._batches: dict[str, Any] = {}
        multiproc = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # read once, at app creation
        if multiproc:
            multiprocess.MultiProcessCollector(self.registry)
        target = None if multiproc else self.registry  # multiprocess values live in files, not a registry
        self.requests = Counter(
            "blackbox_http_requests", "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"], registry=target,
        )
        self.latency = Histogram(
            "blackbox_http_request_duration_seconds", "Time to answer a request, by route.", ["route"], registry=target
        )
        self.records = Counter(
            "blackbox_records_predicted", "Records predicted, by model and version.", ["model", "model_version"],
            registry=target,
        )
        self.problems = Counter(
            "blackbox_validation_failures", "Problems that made records fail validation, by model and issue.",
            ["model", "issue"], registry=target,
        )
        self.warnings = Counter(
            "blackbox_input_warnings", "Warnings on records that were predicted (unseen category, out of range...), by model "
            "and issue.", ["model", "issue"], registry=target,
        )
        self.reloads = Counter(
            "blackbox_reloads", "Checks of a followed store reference that swapped a model in, or failed, by model.",
            ["model", "result"], registry=target,
        )
        self.model = Gauge(
            "blackbox_model_info", "The model being served (1 for the current one).", ["name", "version", "sha256"],
            registry=target, multiprocess_mode="livemax",
        )
        self.drift_gauges = {
            key: Gauge(f"blackbox_feature_{key}", f"{text} in this worker's window of live inputs (GET /drift).",
                       ["model", "feature"], registry=target, multiprocess_mode="liveall")
            for key, text in (
                ("psi", "Population stability index against the training profile"),
                ("unseen_share", "Share of categories never seen in training"),
                ("missing_rate", "Share of missing values"),
            )
        }
        self.log_rows = Counter(
            "blackbox_prediction_log_rows", "Answered records for the prediction log: written, dropped (its queue was "
            "full), failed (refused by the database, or still unwritten at shutdown).", ["outcome"], registry=target,
        )
        self.log_queue = Gauge(
            "blackbox_prediction_log_queue_rows", "Records waiting for the prediction log's database.",
            registry=target, multiprocess_mode="livesum",
        )
        self.batch = Histogram(
            "blackbox_batch_records", "Records per model call (above 1 per request: micro-batching at work; a failed "
            "shared call is followed by one call per request of it), by model.",
            ["model"], buckets=BATCH_BUCKETS, registry=target,
        )
        self.invalid_outputs = Counter(
            "blackbox_invalid_model_outputs", "Records the model answered with NaN or infinity (500 invalid_model_output), "
            "by model and version.", ["model", "model_version"], registry=target,
        )

    def serving(self, name: str, version: str, sha256: str) -> None:
        """Record which model this process serves."""
        self.model.labels(name, version, sha256).set(1)

    def retired(self, name: str, version: str, sha256: str) -> None:
        """The model this process served before a reload."""
        self.model.labels(name, version, sha256).set(0)

    def drift(self, model: str, features: Mapping[str, Mapping[str, Any]], *, stale: Set[str] = frozenset()) -> None:
        """Set the drift gauges from a :func:`blackbox.monitoring.drift.compare` report; ``stale`` features go to NaN."""
        for name in stale:
            for gauge in self.drift_gauges.values():
                gauge.labels(model, name).set(math.nan)
        for name, entry in features.items():
            for key, gauge in self.drift_gauges.items():
                if key in entry:
                    gauge.labels(model, name).set(math.nan if entry[key] is None else entry[key])

    def reloaded(self, model: str, result: str) -> None:
        self.reloads.labels(model, result).inc()

    def observe(self, *, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._served.get(key)
        if children is None:  # labels() builds and locks on every call: each request's series are looked up once
            children = self._served[key] = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def predicted(self, model: str, count: int, version: str, warnings: Iterable[Mapping[str, Any]]) -> None:
        key = (model, version)
        child = self._predicted.get(key)
        if child is None:
            child = self._predicted[key] = self.records.labels(model, version)
        child.inc(count)
        if warnings:
            self._count(self.warnings, model, warnings)

    def invalid_output(self, model: str, version: str, records: int) -> None:
        """The model answered ``records`` records of a request with NaN or infinity."""
        self.invalid_outputs.labels(model, version).inc(records)

    def batched(self, model: str, records: int) -> None:
        """One model call of ``records`` records."""
        child = self._batches.get(model)
        if child is None:
            child = self._batches[model] = self.batch.labels(model)
        child.observe(records)

    def rejected(self, model: str, problems: Iterable[Mapping[str, Any]]) -> None:
        """Validation problems of a request to ``model`` ("" when the request named no served model)."""
        self._count(self.problems, model, problems)

    def exposition(self) -> bytes:
        """The text exposition format of every worker's values."""
        return generate_latest(self.registry)

    @staticmethod
    def _count(counter: Counter, model: str, entries: Iterable[Mapping[str, Any]]) -> None:
        counts: dict[str, int] = {}
        for entry in entries:
            counts[entry["issue"]] = counts.get(entry["issue"], 0) + 1
        for issue, count in counts.items():
            counter.labels(model, issue).inc(count)


def mark_process_dead(pid: int) -> None:
    """gunicorn ``child_exit`` hook body: forget an exited worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


SIGHUP_RELOADS = Counter(
    "blackbox_sighup_reloads", "SIGHUP vettings of a served file by blackbox serve's master, by model and outcome (ok: "
    "the new workers take it; refused: unsigned, corrupt, crashing or hanging, and the old copy keeps serving).",
    ["model", "outcome"], registry=None,
)
"""Counted in gunicorn's master (serving/gunicorn_app.py): every worker's ``/metrics`` shows it because blackbox serve
sets ``PROMETHEUS_MULTIPROC_DIR`` before the master imports this module (without it, nobody would see it)."""
