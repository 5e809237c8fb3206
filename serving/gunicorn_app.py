"""Running the app under gunicorn: the models in every worker, loaded after the fork.

Scope: process management only. :class:`Server` is a gunicorn application
whose workers each build :func:`serving.app.create_app` once they have forked
(no ``preload_app``) and load their own copy of the model in a background
thread: ``/health`` answers from the first moment, ``/ready`` once the model
is in. The master never runs model code: ``blackbox serve`` has vetted the
artifact in an isolated child (:class:`serving.holder.Vetted`) and hands the
workers that vetted, immutable copy, never the file an operator may replace.

SIGHUP vets the file at each served path the same way, in the master, before
any new worker starts: a file that passes becomes the workers' copy; one that
fails (unsigned, corrupt, crashing, hanging) is logged as ``reload_failed``
(naming the served path) and its model keeps its old copy (or stays not
ready), while the others take their new one. When every file fails, nothing
else happens: the running workers keep serving. Then the workers are handed
over: a new generation starts beside the old one, each new worker loads its
models before it accepts (:class:`serving.worker.Held`), the old workers serve
meanwhile, and only once every new worker has said it is ready
(:class:`serving.worker.Readiness`) are the old ones told to stop (SIGTERM:
they finish their requests). A new worker that exits, fails to load, or is not
ready within ``LOAD_TIMEOUT`` ends the hand-over: the new workers are stopped,
the old ones stay, and each model's reload is ``reload_failed`` with the
reason; workers started later load the copies that serve, not the new ones.
When no worker is serving yet (the first ones still loading), there is nothing
to hand over: the old workers are replaced at once. Each model's reload is
counted once its outcome is known, in ``blackbox_sighup_reloads_total{model,
outcome="ok"|"refused"}``, which the master writes to the multiprocess metrics
directory every worker's ``/metrics`` reads. SIGHUPs are coalesced: those that
arrive together are one, and those that arrive while a reload (its vetting or
its hand-over) runs are folded into one more (which replaces the workers again
only if a file changed meanwhile). Following a store, SIGHUP only hands the
workers over (each follows the store itself). gunicorn's own settings are
fixed at start: SIGHUP reopens the log files but re-reads no setting.

A worker started while others serve (one that replaces a worker that exited,
or that ``max_requests`` recycled) also loads before it accepts. An old worker
that exits during a hand-over is not replaced while it runs (the new generation
is coming): a hand-over that finishes leaves the new generation, whole; one
that is abandoned replaces the worker then, with one loading the copy that
serves. Either way the server ends with ``workers`` workers.

SIGTERM is gunicorn's graceful stop: each worker's ``/ready`` turns 503
(``draining``), workers finish the requests in flight (up to
``graceful_timeout``), then the master exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import KNOWN_SETTINGS

from blackbox import BlackboxError, ExitCode, SelfTestError

from .app import create_app
from .holder import Vetted
from .logs import RequestLog
from .metrics import SIGHUP_RELOADS, mark_process_dead
from .state import EXTENSION
from .worker import Readiness

_KNOWN_SETTINGS = frozenset(setting.name for setting in KNOWN_SETTINGS)
GRACEFUL_TIMEOUT = 10
"""Seconds a worker has to finish its requests after SIGTERM (a batch of 10,000 records takes ~2 s)."""


def default_workers() -> int:
    """One worker per usable core: prediction is CPU-bound, so more workers only queue on the same cores."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def options(*, bind: str, workers: int, threads: int, timeout: int) -> dict[str, Any]:
    """gunicorn settings for the prediction server."""
    settings: dict[str, Any] = {
        "bind": [bind],
        "workers": workers,
        # gthread, workers = cores, 16 threads each (serving/cli.py). With the fast path a
        # model call costs ~0.1-0.6 ms, and fewer threads contend less for the GIL: LR, single
        # records, 2x16 against 2x32 in two interleaved sweeps (2026-12-01, each beside a Flask
        # ceiling at the same threads): req/s c=10 +7% / +23%, c=32 +12% / +14%, c=100 +30% / +25%,
        # c=1 and p99 within noise; 2x8 was no better than 2x16, 2x4 worse. (Slow clients hold no
        # thread: serving/worker.py buffers requests in its loop.) Before the fast path, when a
        # call cost ~10 ms, threads had to cover the connections one worker may hold for
        # micro-batching (inference.py) to gather them. bench/bench_server.py then,
        # shared 2-core VM, LogisticRegression, single records, req/s at c=8 / c=32, three
        # runs (the third after batches stopped building a frame per request): 2x32 118/342, 135/295, 169/430; 2x16 98/338, 139/186, 126/483;
        # 1x16 or 1x32 (one core for Python) 87/108, 93/167, 57/217; 2x4 50/110, 139/120;
        # bare Flask under gunicorn -w 2 -k sync 83/77, 104/94, 87/58. 2x32 was never
        # far behind and was best when the workers got unequal shares of the connections.
        # threads == 1 selects sync (no batching possible). serving/worker.py is gthread except that
        # requests are read in its event loop under READ_TIMEOUT, so slow clients hold no thread;
        # both answer what gunicorn's parser refuses in our JSON shape.
        "worker_class": "serving.worker.ThreadWorker" if threads > 1 else "serving.worker.SyncWorker",
        "threads": threads,
        "timeout": timeout,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "keepalive": 5,
        "accesslog": None,  # the app logs one structured line per request itself
        "errorlog": "-",
        "proc_name": "blackbox-serve",
        "child_exit": _child_exit,
    }
    if "control_socket_disable" in _KNOWN_SETTINGS:  # gunicorn >= 27: its one ~/.gunicorn socket collides between servers
        settings["control_socket_disable"] = True
    return settings


@dataclasses.dataclass(frozen=True)
class Admission:
    """What one SIGHUP's vetting admitted: counted ``ok`` once the workers have taken it, or undone."""

    passed: tuple[str, ...]
    """The models whose file passed."""
    changed: bool
    """Whether any model's copy (or availability) changed."""
    previous: tuple[dict[str, str], dict[str, str]]
    """``ARTIFACT`` and ``UNAVAILABLE`` before, restored if the new workers fail."""


class Server(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn application serving ``create_app(config)`` in every worker, from vetted copies.

    :param sources: name -> the artifact path SIGHUP vets again (empty when following a store).

    ``readiness`` is where the workers say they are ready; ``hold`` (set by the
    master before each fork) tells a new worker to load before it accepts.
    """

    def __init__(
        self, config: Mapping[str, Any], settings: Mapping[str, Any], *, vetted: Vetted, sources: Mapping[str, Path],
    ) -> None:
        self.app_config = dict(config)
        self.settings = dict(settings)
        self.vetted = vetted
        self.sources = dict(sources)
        self.readiness = Readiness(tempfile.mkdtemp(prefix="blackbox-ready-"))
        self.hold = False
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        """Called in each worker after the fork: returns at once, the model loads in a thread."""
        app = create_app(self.app_config, background=True, vetted=self.vetted)
        holders = [served.holder for served in app.extensions[EXTENSION].models.values()]
        stop = signal.getsignal(signal.SIGTERM)  # gunicorn's graceful stop, installed before load()

        def draining(signum: int, frame: Any) -> None:
            for holder in holders:
                holder.draining = True
            if callable(stop):
                stop(signum, frame)

        signal.signal(signal.SIGTERM, draining)
        return app

    def admit(self) -> Admission:
        """In the master, at SIGHUP: vet the file at each served path; the workers started next load those copies.

        A model whose file fails keeps its previous copy (or stays unavailable);
        when every file fails, nothing changes and this raises the first error.
        A failure is logged (``reload_failed`` naming the served path) and counted
        in ``blackbox_sighup_reloads_total`` at once, a pass logged
        (``reload_admitted``) and counted by :meth:`conclude`.
        """
        previous = (self.app_config["ARTIFACT"], self.app_config["UNAVAILABLE"])
        admitted = dict(previous[0] or {})
        unavailable = dict(previous[1] or {})
        failures: list[BlackboxError] = []
        passed: list[str] = []
        log = self._log()
        for name, source in self.sources.items():
            try:
                admitted[name] = str(self.vetted.admit(source))
                unavailable.pop(name, None)
            except BlackboxError as exc:
                failures.append(exc)
                reason = exc.message if str(source) in exc.message else f"{source}: {exc.message}"
                SIGHUP_RELOADS.labels(name, "refused").inc()
                log.event("reload_failed", logging.ERROR, model=name, artifact=str(source), code=exc.code, reason=reason)
                if name not in admitted:
                    unavailable[name] = reason
                continue
            passed.append(name)
            log.event("reload_admitted", logging.INFO, model=name, artifact=str(source),
                      sha256=Path(admitted[name]).stem)
        if failures and len(failures) == len(self.sources):
            raise failures[0]
        self.app_config["ARTIFACT"], self.app_config["UNAVAILABLE"] = admitted, unavailable
        return Admission(tuple(passed), (admitted, unavailable) != previous, previous)

    def conclude(self, admission: Admission, failure: str | None = None) -> None:
        """Count each model ``admission`` passed as ``ok``; or, when the new workers failed (``failure`` says how),
        restore the copies that serve and count and log each as ``reload_failed``."""
        if failure is None:
            for name in admission.passed:
                SIGHUP_RELOADS.labels(name, "ok").inc()
            return
        self.app_config["ARTIFACT"], self.app_config["UNAVAILABLE"] = admission.previous
        log = self._log()
        for name in admission.passed:
            source = self.sources[name]
            error = SelfTestError(f"{source}: passed its check in an isolated child, but {failure}; the running "
                                  "workers keep serving the old model (fix the file and send SIGHUP again)")
            SIGHUP_RELOADS.labels(name, "refused").inc()
            log.event("reload_failed", logging.ERROR, model=name, artifact=str(source), code=error.code,
                      reason=error.message)

    def _log(self) -> RequestLog:
        return RequestLog(self.app_config.get("LOG_FORMAT") or "json")

    def run(self) -> None:
        """As BaseApplication.run, with the master below; the readiness directory is removed when the master exits."""
        master = os.getpid()
        try:
            _Arbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(ExitCode.INTERNAL)
        finally:
            if os.getpid() == master:  # forked workers unwind through here too
                shutil.rmtree(self.readiness.directory, ignore_errors=True)


@dataclasses.dataclass
class _HandOver:
    """A reload in progress: the new generation loading while the old one serves."""

    admission: Admission
    outgoing: set[int]
    incoming: set[int]
    deadline: float


class _Arbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, except that SIGHUPs are coalesced, one whose artifacts all fail changes nothing, and
    the workers are handed over (see the module docstring) instead of replaced at once.

    Every SIGHUP would otherwise be a reload of its own, each replacing workers
    that may not have loaded their model yet. SIGHUPs that arrive together are
    one; those that arrive while a reload runs (vetting takes seconds, a hand-over
    as long as a load) are folded into one more, which vets the files again and
    replaces the workers only if a file changed meanwhile.

    The hand-over runs in the master's loop (its signals, heartbeats and reaping
    go on): ``manage_workers`` counts the old generation (and workers told to stop
    that have not exited yet) beyond ``num_workers``, so gunicorn neither kills
    nor replaces them, and each turn of the loop checks the new workers' readiness.
    """

    def __init__(self, app: Server) -> None:
        super().__init__(app)
        self._folded = False
        self._pending = False  # a SIGHUP arrived during a hand-over
        self._handover: _HandOver | None = None
        self._retiring: set[int] = set()  # told to stop, not exited yet
        self._extra = 0  # workers counted beyond num_workers (retiring, and the old generation in a hand-over)

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        signals: list[int] = super().wait_for_signals(0.2 if self._handover else timeout)
        if signals.count(signal.SIGHUP) > 1:
            first = signals.index(signal.SIGHUP)
            signals = [sig for i, sig in enumerate(signals) if sig != signal.SIGHUP or i == first]
        return signals

    def handle_hup(self) -> None:
        if self._handover is None:
            super().handle_hup()
            return
        if not self._pending:
            self.log.info("reload: SIGHUP received during a hand-over, folded into one more reload after it")
        self._pending = True

    def reload(self) -> None:
        folded, self._folded = self._folded, False
        try:
            admission = self.app.admit()
        except BlackboxError:
            self.log.error("reload: every served file was refused (each reload_failed line says why); "
                           "the running workers keep serving the old model")
        else:
            if folded and not admission.changed:
                self.log.info("reload: SIGHUP(s) received during the last reload, no file changed since: "
                              "the workers it started stay")
                self.app.conclude(admission)
            else:
                self._hand_over(admission)
        self._fold_pending()

    def _hand_over(self, admission: Admission) -> None:
        """Start the new generation; the old one serves until it is ready (or at once, when none serves yet)."""
        self.log.reopen_files()
        self.cfg.on_reload(self)
        outgoing = set(self.WORKERS) - self._retiring
        serving = self._serving(outgoing)
        incoming = {self.spawn_worker() for _ in range(self.num_workers - self._extra)}
        if not serving:
            self.log.info("reload: no worker has loaded its model yet: the workers are replaced at once")
            self._retire(outgoing)
            self.app.conclude(admission)
            return
        self._handover = _HandOver(admission, outgoing, incoming, time.monotonic() + self.app.vetted.timeout)
        self.log.info("reload: %d new worker(s) loading; the running ones serve until all are ready", len(incoming))

    def manage_workers(self) -> None:
        if self._handover is not None:
            self._advance(self._handover)
        alive = set(self.WORKERS)
        self._retiring &= alive
        extra = len(self._retiring) + (len(self._handover.outgoing & alive) if self._handover else 0)
        if extra != self._extra:
            self.num_workers += extra - self._extra
            self._extra = extra
        super().manage_workers()

    def spawn_worker(self) -> int:
        self.app.hold = self._serving(set(self.WORKERS) - self._retiring)  # read by the child after the fork
        pid: int = super().spawn_worker()
        return pid

    def _advance(self, handover: _HandOver) -> None:
        """The hand-over's next step: nothing yet, the old generation retired, or the new one stopped."""
        alive = set(self.WORKERS)
        said = {pid: self.app.readiness.read(pid) for pid in handover.incoming & alive}
        failure = next((f"a new worker (pid {pid}) exited before its model was loaded (its exit is logged above)"
                        for pid in sorted(handover.incoming - alive)), None)
        failure = failure or next((f"a new worker (pid {pid}) could not load it: {text.rstrip('.')}"
                                   for pid, text in sorted(said.items()) if text), None)
        if failure is None and any(text is None for text in said.values()):
            if time.monotonic() < handover.deadline:
                return
            failure = (f"the new workers were not ready within {self.app.vetted.timeout:g} s "
                       "(LOAD_TIMEOUT, blackbox serve --load-timeout)")
        self._handover = None
        if failure is None:
            self.log.info("reload: the new workers are ready; the old ones finish their requests and exit")
            self._retire(handover.outgoing & alive)
        else:
            self.log.error("reload: %s; the running workers keep serving the old model", failure)
            self._retire(handover.incoming & alive)
        self.app.conclude(handover.admission, failure)
        if self._pending:
            self._pending, self._folded = False, True
            self.SIG_QUEUE.put_nowait(signal.SIGHUP)

    def _serving(self, pids: set[int]) -> bool:
        """Whether any of these workers has loaded its models (or failed to)."""
        return any(self.app.readiness.read(pid) is not None for pid in pids)

    def _retire(self, pids: set[int]) -> None:
        """SIGTERM, oldest first: each finishes its requests in flight, then exits."""
        for pid in sorted(pids, key=lambda pid: self.WORKERS[pid].age):
            self.kill_worker(pid, signal.SIGTERM)
        self._retiring |= pids

    def _fold_pending(self) -> None:
        """SIGHUPs queued while reloading become one more reload, marked as folded; other signals keep their order."""
        pending: list[int] = []
        while True:
            try:
                pending.append(self.SIG_QUEUE.get_nowait())
            except queue.Empty:
                break
        hups = pending.count(signal.SIGHUP)
        if hups:
            self._folded = True
            self.log.info("reload: %d SIGHUP(s) received while reloading, folded into one more reload", hups)
        for sig in [sig for sig in pending if sig != signal.SIGHUP] + [signal.SIGHUP] * bool(hups):
            self.SIG_QUEUE.put_nowait(sig)


def _child_exit(server: Any, worker: Any) -> None:
    mark_process_dead(worker.pid)
    server.app.readiness.forget(worker.pid)
