"""Following a release in a model store: swap in a verified new model without dropping a request.

Scope: one worker's view of one reference (``NAME@ALIAS``). :class:`Follower`
resolves it (a cheap read of the alias pointer) every ``POLL_INTERVAL`` seconds,
and ``POST /reload`` asks for a check at once. A new target is pulled (digest
and signature checked), loaded and self-tested off the request path; only then
does one reference assignment swap it into the :class:`~serving.holder.ModelHolder`.
Requests read the holder once, so those in flight finish on the old model and
no request mixes two. A target that fails any check is not swapped in: the old
model keeps serving, and ``/ready``, ``/model``, the log and the
``blackbox_reloads_total`` metric say what happened and why. A release that
failed its own checks is not tried again until the reference moves; a store
that could not be reached is tried again at the next poll.

Each gunicorn worker follows on its own: ``POST /reload`` reaches one worker,
the others catch up at their next poll.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import threading
from typing import Any

from blackbox import BlackboxError, Model, Store, StoreError

from .config import Settings
from .holder import ModelHolder, load_model
from .logs import RequestLog
from .metrics import Metrics


class Follower:
    """Keeps a holder on the release a store reference names."""

    def __init__(self, settings: Settings, holder: ModelHolder, metrics: Metrics, log: RequestLog) -> None:
        assert settings.store is not None and settings.model_ref is not None
        self._store = Store.open(settings.store)
        self._ref = settings.model_ref
        self._settings = settings
        self._holder = holder
        self._metrics = metrics
        self._log = log
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._release_sha: str | None = None
        self._refused_sha: str | None = None  # a target that failed its own checks: not retried until the alias moves
        self.status: dict[str, Any] = {"ref": self._ref, "store": self._store.uri, "result": None}

    def load_initial(self) -> Model:
        """The release the reference names now (raises if it cannot be served)."""
        release = self._store.resolve(self._ref)
        model = self._load(f"{release.name}@{release.version}")
        self._release_sha = release.sha256
        self._note("loaded", version=release.version)
        return model

    def start(self) -> None:
        """Poll in a daemon thread (not at all when POLL_INTERVAL is 0)."""
        if self._settings.poll_interval > 0:
            threading.Thread(target=self._poll, name="blackbox-follow", daemon=True).start()

    def check(self) -> dict[str, Any]:
        """Resolve the reference; swap in its release if it changed and passes every check."""
        with self._lock:
            try:
                release = self._store.resolve(self._ref)
                if release.sha256 == self._release_sha:
                    return self._note("unchanged", version=release.version)
                if release.sha256 == self._refused_sha:
                    return self.status
                try:
                    model = self._load(f"{release.name}@{release.version}")
                except BlackboxError as exc:
                    if not isinstance(exc, StoreError):  # the release itself is bad, not the way to it
                        self._refused_sha = release.sha256
                    raise
            except BlackboxError as exc:
                self._metrics.reloaded("failed")
                self._log.event("reload_failed", logging.ERROR, ref=self._ref, code=exc.code, reason=exc.message)
                return self._note("failed", code=exc.code, reason=exc.message)
            previous = self._holder.model
            self._holder.model = model  # the swap: one reference assignment
            self._release_sha = release.sha256
            if previous is not None:
                self._metrics.retired(previous.name, previous.version, previous.sha256)
            self._metrics.serving(model.name, model.version, model.sha256)
            self._metrics.reloaded("swapped")
            self._log.event(
                "model_swapped", logging.INFO, ref=self._ref, version=model.version, sha256=model.sha256,
                previous_version=previous.version if previous is not None else None,
            )
            return self._note("swapped", version=model.version, previous_version=previous and previous.version)

    def _load(self, ref: str) -> Model:
        options = self._settings.load_options
        with tempfile.TemporaryDirectory(prefix="blackbox-follow-") as scratch:
            path = self._store.pull(
                ref, scratch, trusted_keys=options.get("trusted_keys"), allow_unsigned=bool(options.get("allow_unsigned"))
            )
            return load_model(path, options)

    def _note(self, result: str, **details: Any) -> dict[str, Any]:
        checked = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.status = {"ref": self._ref, "store": self._store.uri, "result": result, "checked_at": checked, **details}
        return self.status

    def _poll(self) -> None:
        while True:
            self._wake.wait(self._settings.poll_interval)
            self._wake.clear()
            self.check()
