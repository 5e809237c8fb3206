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
Any other error of a poll (a bug, a full disk) is logged with its traceback and
counted like a refusal, and the thread goes on: it never stops following silently.

Until a first model is held, the follower retries with a doubling back-off
capped at ``POLL_INTERVAL`` (30 s when that is 0). Meanwhile it serves the last
release it loaded from this reference before, kept in ``CACHE_DIR``
(``status["served_from"]`` says ``cache`` or ``store``): when the store cannot
be reached, and also when what the store names is refused (a bad release, a
replayed or forged pointer), whose refusal the status gives (result
``failed``, its code and reason) while the follower keeps following.

Replay protection survives restarts, as The Update Framework keeps its trusted
metadata on disk: the record of NAME@ALIAS in ``CACHE_DIR`` also holds the last
pointer accepted (sequence, version, sha256), passed as ``after=`` to the first
resolve of a new process, so a restarted server refuses an older pointer as a
running one does. ``ALLOW_DOWNGRADE`` (``serve --allow-downgrade``) lifts that
check, for an operator who means to go back. A worker never lowers the recorded
sequence otherwise (workers share the record).

Each gunicorn worker follows on its own: ``POST /reload`` reaches one worker,
the others catch up at their next poll. Under ``gunicorn --preload`` the app
is built in the master, whose thread a worker does not inherit: the app starts
each worker's own (:meth:`Follower.restart`, from a fork hook). Workers share the master's vetted
copies, so a release is vetted once per run unless two workers meet it at once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blackbox import BlackboxError, Model, Release, Store, StoreError
from blackbox.atomic import atomic_write
from blackbox.store.releases import Pointer, parse_ref

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
        self._alias = parse_ref(ref)[1]
        # What the store last named and this server took, kept in CACHE_DIR: no older pointer is accepted after it.
        self._accepted: Release | None = self._recorded_pointer()
        self._refused_sha: str | None = None  # a target that failed its own checks: not retried until the alias moves
        self._served_from: str | None = None
        self._error: BlackboxError | None = None
        self._stopped = False
        self.status: dict[str, Any] = {"ref": self._ref, "store": self._store.uri, "result": None}

    def admit_initial(self) -> tuple[Target, str, str | None] | None:
        """Vet, without loading it here, what a starting worker would serve: the target, ``store`` or ``cache``, and
        why the store's was refused (None: it was not).

        The cached last good copy stands in when the store cannot be reached or what it
        names is refused; None if the store cannot be reached and nothing is cached.
        Raises the refusal when nothing is cached (or the cached copy fails too).
        """
        refused: BlackboxError | None = None
        try:
            target = self._fetch(self._resolve())
            self._vetted.admit(target.file)
            return target, "store", None
        except StoreError:
            pass
        except BlackboxError as exc:  # a refused pointer, or a release that fails its checks
            refused = exc
        cached = self._last_good()
        if cached is None:
            if refused is not None:
                raise refused
            return None
        try:
            self._vetted.admit(cached.file)
        except BlackboxError:
            if refused is not None:
                raise refused from None
            raise
        return cached, "cache", refused.message if refused is not None else None

    def load_initial(self) -> Model:
        """The release the reference names now, or the cached last good one if the store is unreachable; raises if neither serves."""
        self.check()
        if self._holder.model is None:
            assert self._error is not None
            raise self._error
        return self._holder.model

    def start(self) -> None:
        """Follow in a daemon thread: first until a model is held, then every POLL_INTERVAL (never when that is 0)."""
        self._stopped = False
        threading.Thread(target=self._run, name=f"blackbox-follow-{self.name}", daemon=True).start()

    def stop(self) -> None:
        """End the thread after its current check (an app torn down in process: tests, an embedding host)."""
        self._stopped = True
        self._wake.set()

    def restart(self) -> None:
        """In a process forked from one that follows (``gunicorn --preload``): follow here too, with fresh locks.

        The parent's thread is not in the child, and may have held the lock when it forked. A follower that was
        stopped stays stopped (a host that tore the app down, then forks for its own work).
        """
        self._lock = threading.Lock()
        self._wake = threading.Event()
        if not self._stopped:
            self.start()

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
        except BlackboxError as exc:  # the pointer is refused (replayed, forged, another model's)
            return self._fall_back(exc)
        if release.sha256 == self._release_sha:
            self._served_from = "store"
            self._accept(release)
            return self._note("unchanged", version=release.version)
        if release.sha256 == self._refused_sha:
            return self.status
        try:
            outcome = self._take(self._fetch(release), "store")
        except BlackboxError as exc:
            if isinstance(exc, StoreError):
                raise
            self._refused_sha = release.sha256  # the release itself is bad, not the way to it
            return self._fall_back(exc)
        self._accept(release)
        return outcome

    def _fall_back(self, refusal: BlackboxError) -> dict[str, Any]:
        """Nothing serves yet and what the store names is refused: serve the cached last good release, saying why.

        Raises ``refusal`` when a model is held already (it keeps serving) or no cached copy passes.
        """
        cached = self._last_good() if self._holder.model is None else None
        if cached is None:
            raise refusal
        try:
            self._take(cached, "cache")
        except BlackboxError as exc:
            self._log.event("cache_refused", logging.ERROR, ref=self._ref, code=exc.code, reason=exc.message)
            raise refusal from None
        self._error = refusal
        self._metrics.reloaded(self.name, "failed")
        self._log.event("reload_failed", logging.ERROR, ref=self._ref, code=refusal.code, reason=refusal.message,
                        serving_cached=cached.version)
        return self._note(
            "failed", version=cached.version, code=refusal.code,
            reason=f"{refusal.message} Serving the cached last good release {cached.version} (CACHE_DIR) meanwhile.",
        )

    def _resolve(self) -> Release:
        """What the reference names: its pointer verified with the server's keys, and not older than the one taken."""
        options = self._settings.load_options
        return self._store.resolve(
            self._ref, trusted_keys=options.get("trusted_keys"), allow_unsigned=bool(options.get("allow_unsigned")),
            after=self._accepted, allow_downgrade=self._settings.allow_downgrade,
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

    def _record(self) -> dict[str, Any]:
        """This reference's record: the last good target's fields, and ``accepted``, the last pointer taken."""
        try:
            record = json.loads(self._pointer().read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _write(self, record: dict[str, Any]) -> None:
        """Best effort: a read-only cache only loses the fallback and the replay protection across restarts."""
        try:
            atomic_write(self._pointer(), json.dumps(record).encode())
        except OSError as exc:
            self._log.event("cache_write_failed", logging.WARNING, ref=self._ref, reason=str(exc))

    def _remember(self, target: Target) -> None:
        """Record the target as this reference's last good release."""
        self._write({**self._record(), **asdict(target)})

    def _accept(self, release: Release) -> None:
        """Take ``release`` as the one after which no older pointer is believed, here and after a restart."""
        previous, self._accepted = self._accepted, release
        pointer = release.pointer
        if pointer is None or (previous is not None and previous.pointer == pointer and previous.sha256 == release.sha256):
            return
        record = self._record()
        kept = record.get("accepted")
        if (isinstance(kept, dict) and isinstance(kept.get("sequence"), int) and kept["sequence"] > pointer.sequence
                and not self._settings.allow_downgrade):
            return  # another worker took a newer pointer already
        record["accepted"] = {"sequence": pointer.sequence, "version": release.version, "sha256": release.sha256,
                              "rollback": pointer.rollback}
        self._write(record)

    def _recorded_pointer(self) -> Release | None:
        """The last pointer this reference accepted, from CACHE_DIR (None: none recorded)."""
        accepted = self._record().get("accepted")
        if not isinstance(accepted, dict):
            return None
        try:
            sequence, version, sha256 = accepted["sequence"], accepted["version"], accepted["sha256"]
        except KeyError:
            return None
        if type(sequence) is not int or not isinstance(version, str) or not isinstance(sha256, str):
            return None
        pointer = Pointer(alias=self._alias, sequence=sequence, rollback=bool(accepted.get("rollback")),
                          updated_at=None, key_id=None)
        return Release(name=self.name, version=version, sha256=sha256, size=0, created_at=None, key_id=None,
                       metrics={}, pointer=pointer)

    def _last_good(self) -> Target | None:
        record = self._record()
        try:
            target = Target(**{name: record[name] for name in Target.__dataclass_fields__})
        except KeyError:
            return None
        return target if isinstance(target.file, str) and Path(target.file).is_file() else None

    def _note(self, result: str, **details: Any) -> dict[str, Any]:
        checked = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.status = {
            "ref": self._ref, "store": self._store.uri, "result": result, "checked_at": checked,
            "served_from": self._served_from, **details,
        }
        return self.status

    def _run(self) -> None:
        interval = self._settings.poll_interval
        cap = interval or MAX_BACKOFF
        delay = min(1.0, cap)
        while self._holder.model is None and not self._stopped:
            self._holder.loading = True
            try:
                self._poll()
            finally:
                self._holder.loading = False
            if self._holder.model is not None:
                break
            self._wake.wait(delay)
            self._wake.clear()
            delay = min(delay * 2, cap)
        while interval > 0 and not self._stopped:
            self._wake.wait(interval)
            self._wake.clear()
            if not self._stopped:
                self._poll()

    def _poll(self) -> None:
        """One check from the thread: an error that is not a refusal (a bug, an OSError) is logged, counted and
        shown in the status, and the thread goes on; it never stops following silently."""
        try:
            self.check()
        except Exception as exc:  # noqa: BLE001  the thread must outlive whatever one check raises
            self._metrics.reloaded(self.name, "failed")
            reason = f"{type(exc).__name__}: {exc}"[:500]
            self._log.event("reload_failed", logging.ERROR, ref=self._ref, code="internal_error", reason=reason,
                            traceback="".join(traceback.format_exception(exc)))
            self._note("failed" if self._holder.model is not None else "unavailable", code="internal_error", reason=reason)
