"""Following a release in a model store: swap in a verified new model without dropping a request.

Scope: one worker's view of one reference (``NAME@ALIAS``; a server following
several has one Follower, holder and status per reference). :class:`Follower`
resolves it (a cheap read of the alias pointer, verified with the server's
trusted keys; once a release was taken, an older pointer, or an older version
that the pointer does not call a rollback, is refused) every ``POLL_INTERVAL``
seconds, and ``POST /reload`` asks for a check at once. A new target is pulled
(the sha256 the pointer names, signature checked) into ``CACHE_DIR``, vetted in an isolated child with a
time limit (:class:`~serving.holder.Vetted`: a segfault or a hang there is a
refusal, not a dead worker), then loaded and self-tested off the request path;
only then does one reference assignment swap it into the
:class:`~serving.holder.ModelHolder`. Requests read the holder once, so those
in flight finish on the old model and no request mixes two. A target that fails
any check is not swapped in: the old model keeps serving, and ``/ready``,
``/model``, the log and the ``blackbox_reloads_total`` metric say what happened
and why. A release that failed its own checks is not tried again until the
reference moves; a store that could not be reached is tried again at the next poll.

Until a first model is held (the store unreachable at start), the follower
retries with a doubling back-off capped at ``POLL_INTERVAL`` (30 s when that
is 0), and meanwhile serves the last release it loaded from this reference
before, kept in ``CACHE_DIR`` (``status["served_from"]`` says ``cache`` or ``store``).

Each gunicorn worker follows on its own: ``POST /reload`` reaches one worker,
the others catch up at their next poll. Workers share the master's vetted
copies, so a release is vetted once per run unless two workers meet it at once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blackbox import BlackboxError, Model, Release, Store, StoreError
from blackbox.atomic import atomic_write

from .config import Settings
from .holder import ModelHolder, Vetted, load_model
from .logs import RequestLog
from .metrics import Metrics

MAX_BACKOFF = 30.0
"""Longest wait between attempts at a first model when POLL_INTERVAL does not cap it."""


@dataclass(frozen=True)
class Target:
    """A release and the local copy of its artifact."""

    name: str
    version: str
    sha256: str
    file: str


class Follower:
    """Keeps a holder on the release a store reference names."""

    def __init__(
        self, settings: Settings, holder: ModelHolder, metrics: Metrics, log: RequestLog, vetted: Vetted,
        on_first: Callable[[Model], None] | None = None, *, ref: str,
    ) -> None:
        assert settings.store is not None
        self._store = Store.open(settings.store)
        self._ref = ref
        self.name = ref.partition("@")[0]  # the served name: the metrics' model label
        self._settings = settings
        self._holder = holder
        self._metrics = metrics
        self._log = log
        self._vetted = vetted
        self._on_first = on_first or (lambda model: setattr(holder, "model", model))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._release_sha: str | None = None
        self._accepted: Release | None = None  # what the store last named and this worker took: no older pointer is
        self._refused_sha: str | None = None  # a target that failed its own checks: not retried until the alias moves
        self._served_from: str | None = None
        self._error: BlackboxError | None = None
        self.status: dict[str, Any] = {"ref": self._ref, "store": self._store.uri, "result": None}

    def admit_initial(self) -> tuple[Target, str] | None:
        """Vet, without loading it here, what a starting worker would serve, and whether it comes from the store or the cache.

        None if the store cannot be reached and nothing is cached; raises the
        release's own error when it fails its checks (or crashes, or hangs).
        """
        try:
            target, source = self._fetch(self._resolve()), "store"
        except StoreError:
            cached = self._last_good()
            if cached is None:
                return None
            target, source = cached, "cache"
        self._vetted.admit(target.file)
        return target, source

    def load_initial(self) -> Model:
        """The release the reference names now, or the cached last good one if the store is unreachable; raises if neither serves."""
        self.check()
        if self._holder.model is None:
            assert self._error is not None
            raise self._error
        return self._holder.model

    def start(self) -> None:
        """Follow in a daemon thread: first until a model is held, then every POLL_INTERVAL (never when that is 0)."""
        threading.Thread(target=self._run, name=f"blackbox-follow-{self.name}", daemon=True).start()

    def check(self) -> dict[str, Any]:
        """Resolve the reference; swap in its release if it changed and passes every check."""
        with self._lock:
            try:
                return self._check()
            except BlackboxError as exc:
                self._error = exc
                self._metrics.reloaded(self.name, "failed")
                self._log.event("reload_failed", logging.ERROR, ref=self._ref, code=exc.code, reason=exc.message)
                result = "failed" if self._holder.model is not None else "unavailable"
                return self._note(result, code=exc.code, reason=exc.message)

    def _check(self) -> dict[str, Any]:
        try:
            release = self._resolve()
        except StoreError as exc:
            cached = self._last_good() if self._holder.model is None else None
            if cached is None:
                raise
            self._log.event("store_unreachable", logging.WARNING, ref=self._ref, reason=exc.message,
                            serving_cached=cached.version)
            return self._take(cached, "cache")  # nothing serves yet: the copy pulled last time does
        if release.sha256 == self._release_sha:
            self._served_from = "store"
            self._accepted = release
            return self._note("unchanged", version=release.version)
        if release.sha256 == self._refused_sha:
            return self.status
        try:
            outcome = self._take(self._fetch(release), "store")
        except BlackboxError as exc:
            if not isinstance(exc, StoreError):  # the release itself is bad, not the way to it
                self._refused_sha = release.sha256
            raise
        self._accepted = release
        return outcome

    def _resolve(self) -> Release:
        """What the reference names: its pointer verified with the server's keys, and not older than the one taken."""
        options = self._settings.load_options
        return self._store.resolve(
            self._ref, trusted_keys=options.get("trusted_keys"), allow_unsigned=bool(options.get("allow_unsigned")),
            after=self._accepted,
        )

    def _take(self, target: Target, source: str) -> dict[str, Any]:
        """Vet the target in a child, load it here, swap it in."""
        model = load_model(self._vetted.admit(target.file), self._settings.load_options)
        previous = self._holder.model
        self._release_sha = target.sha256
        self._served_from = source
        if source == "store":
            self._remember(target)
        if previous is None:
            self._on_first(model)
            return self._note("loaded", version=model.version)
        self._holder.model = model  # the swap: one reference assignment
        self._metrics.retired(previous.name, previous.version, previous.sha256)
        self._metrics.serving(model.name, model.version, model.sha256)
        self._metrics.reloaded(self.name, "swapped")
        self._log.event(
            "model_swapped", logging.INFO, ref=self._ref, version=model.version, sha256=model.sha256,
            previous_version=previous.version,
        )
        return self._note("swapped", version=model.version, previous_version=previous.version)

    # -- the local cache of pulled releases ------------------------------------------------------

    def _fetch(self, release: Any) -> Target:
        """The release's artifact in CACHE_DIR, pulled (and checked) unless already there."""
        path = self._settings.cache_dir / release.name / f"{release.version}-{release.sha256[:16]}.bbx"
        if not path.exists():
            options = self._settings.load_options
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"Cannot create the cache directory {str(path.parent)!r} (CACHE_DIR): {exc}.") from None
            self._store.pull(
                release, path,  # the artifact must have the sha256 the (signed) pointer names
                trusted_keys=options.get("trusted_keys"), allow_unsigned=bool(options.get("allow_unsigned")),
            )
        return Target(release.name, release.version, release.sha256, str(path))

    def _pointer(self) -> Path:
        return self._settings.cache_dir / f"{self._ref}.json"

    def _remember(self, target: Target) -> None:
        """Record the target as this reference's last good release (best effort: a read-only cache only loses the fallback)."""
        try:
            atomic_write(self._pointer(), json.dumps(asdict(target)).encode())
        except OSError as exc:
            self._log.event("cache_write_failed", logging.WARNING, ref=self._ref, reason=str(exc))

    def _last_good(self) -> Target | None:
        try:
            target = Target(**json.loads(self._pointer().read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return target if Path(target.file).is_file() else None

    def _note(self, result: str, **details: Any) -> dict[str, Any]:
        checked = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.status = {
            "ref": self._ref, "store": self._store.uri, "result": result, "checked_at": checked,
            "served_from": self._served_from, **details,
        }
        return self.status

    def _run(self) -> None:
        interval = self._settings.poll_interval
        cap = interval or MAX_BACKOFF
        delay = min(1.0, cap)
        while self._holder.model is None:
            self._holder.loading = True
            try:
                self.check()
            finally:
                self._holder.loading = False
            if self._holder.model is not None:
                break
            self._wake.wait(delay)
            self._wake.clear()
            delay = min(delay * 2, cap)
        while interval > 0:
            self._wake.wait(interval)
            self._wake.clear()
            self.check()
