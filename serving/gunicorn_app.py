"""Running the app under gunicorn: the models in every worker, loaded after the fork.

Scope: process management only. :class:`Server` is a gunicorn application
whose workers each build :func:`serving.app.create_app` once they have forked
(no ``preload_app``) and load their own copy of the model in a background
thread: ``/health`` answers from the first moment, ``/ready`` once the model
is in. The master never runs model code: ``blackbox serve`` has vetted the
artifact in an isolated child (:class:`serving.holder.Vetted`) and hands the
workers that vetted, immutable copy, never the file an operator may replace.

SIGHUP vets the file at each served path the same way, in the master, before
gunicorn starts new workers: a file that passes replaces the workers'
copy and the workers are replaced gracefully; one that fails (unsigned,
corrupt, crashing, hanging) is logged as ``reload_failed`` (naming the served
path) and its model keeps its old copy (or stays not ready), while the others
take their new one. When every file fails, nothing else happens: the running
workers keep serving. Each vetting is counted in
``blackbox_sighup_reloads_total{model, outcome="ok"|"refused"}``, which the
master writes to the multiprocess metrics directory every worker's ``/metrics``
reads. SIGHUPs are coalesced: those that arrive together are one, and those
that arrive while a reload runs are folded into one more (which replaces the
workers again only if a file changed meanwhile). Following a store, SIGHUP only
replaces the workers (each follows the store itself).

SIGTERM is gunicorn's graceful stop: each worker's ``/ready`` turns 503
(``draining``), workers finish the requests in flight (up to
``graceful_timeout``), then the master exits 0.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import KNOWN_SETTINGS

from blackbox import BlackboxError, ExitCode

from .app import create_app
from .holder import Vetted
from .logs import RequestLog
from .metrics import SIGHUP_RELOADS, mark_process_dead
from .state import EXTENSION

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
        # gthread, workers = cores, 32 threads each (serving/cli.py). Micro-batching
        # (inference.py) can only gather requests that have a thread in the worker, so
        # threads must cover the connections one worker may hold. bench/bench_server.py,
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


class Server(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    """gunicorn application serving ``create_app(config)`` in every worker, from vetted copies.

    :param sources: name -> the artifact path SIGHUP vets again (empty when following a store).
    """

    def __init__(
        self, config: Mapping[str, Any], settings: Mapping[str, Any], *, vetted: Vetted, sources: Mapping[str, Path],
    ) -> None:
        self.app_config = dict(config)
        self.settings = dict(settings)
        self.vetted = vetted
        self.sources = dict(sources)
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

    def admit(self) -> bool:
        """In the master, at SIGHUP: vet the file at each served path; the workers started next load those copies.

        A model whose file fails keeps its previous copy (or stays unavailable);
        when every file fails, nothing changes and this raises the first error.
        Each outcome is logged (``reload_admitted``, ``reload_failed`` naming the
        served path) and counted in ``blackbox_sighup_reloads_total``. Returns
        whether any model's copy (or availability) changed.
        """
        admitted = dict(self.app_config["ARTIFACT"] or {})
        unavailable = dict(self.app_config["UNAVAILABLE"] or {})
        failures: list[BlackboxError] = []
        log = RequestLog(self.app_config.get("LOG_FORMAT") or "json")
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
            SIGHUP_RELOADS.labels(name, "ok").inc()
            log.event("reload_admitted", logging.INFO, model=name, artifact=str(source),
                      sha256=Path(admitted[name]).stem)
        if failures and len(failures) == len(self.sources):
            raise failures[0]
        changed = (admitted, unavailable) != (self.app_config["ARTIFACT"], self.app_config["UNAVAILABLE"])
        self.app_config["ARTIFACT"], self.app_config["UNAVAILABLE"] = admitted, unavailable
        return changed

    def run(self) -> None:
        """As BaseApplication.run, with the master below."""
        try:
            _Arbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(ExitCode.INTERNAL)


class _Arbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, except that SIGHUPs are coalesced and one whose artifact fails its vetting changes nothing.

    Every SIGHUP would otherwise be a reload of its own, each replacing workers
    that may not have loaded their model yet. SIGHUPs that arrive together are
    one; those that arrive while a reload runs (vetting takes seconds) are folded
    into one more, which vets the files again and replaces the workers only if a
    file changed meanwhile (the workers it would replace started after the signal).
    """

    _folded = False

    def wait_for_signals(self, timeout: float = 1.0) -> list[int]:
        signals: list[int] = super().wait_for_signals(timeout)
        if signals.count(signal.SIGHUP) > 1:
            first = signals.index(signal.SIGHUP)
            signals = [sig for i, sig in enumerate(signals) if sig != signal.SIGHUP or i == first]
        return signals

    def reload(self) -> None:
        folded, self._folded = self._folded, False
        try:
            changed = self.app.admit()
        except BlackboxError:
            self.log.error("reload: every served file was refused (each reload_failed line says why); "
                           "the running workers keep serving the old model")
        else:
            if folded and not changed:
                self.log.info("reload: SIGHUP(s) received during the last reload, no file changed since: "
                              "the workers it started stay")
            else:
                super().reload()
        self._fold_pending()

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
