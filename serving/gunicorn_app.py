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
corrupt, crashing, hanging) is logged as ``reload_failed`` and its model keeps
its old copy (or stays not ready), while the others take their new one. When
every file fails, nothing else happens: the running workers keep serving. Following a store,
SIGHUP only replaces the workers (each follows the store itself).

SIGTERM is gunicorn's graceful stop: each worker's ``/ready`` turns 503
(``draining``), workers finish the requests in flight (up to
``graceful_timeout``), then the master exits 0.
"""

from __future__ import annotations

import logging
import os
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
from .metrics import mark_process_dead
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

    def admit(self) -> None:
        """In the master, at SIGHUP: vet the file at each served path; the workers started next load those copies.

        A model whose file fails keeps its previous copy (or stays unavailable);
        when every file fails, nothing changes and this raises the first error.
        """
        admitted = dict(self.app_config["ARTIFACT"] or {})
        unavailable = dict(self.app_config["UNAVAILABLE"] or {})
        failures: list[BlackboxError] = []
        for name, source in self.sources.items():
            try:
                admitted[name] = str(self.vetted.admit(source))
                unavailable.pop(name, None)
            except BlackboxError as exc:
                failures.append(exc)
                log = RequestLog(self.app_config.get("LOG_FORMAT") or "json")
                log.event("reload_failed", logging.ERROR, model=name, artifact=str(source), code=exc.code, reason=exc.message)
                if name not in admitted:
                    unavailable[name] = exc.message
        if failures and len(failures) == len(self.sources):
            raise failures[0]
        self.app_config["ARTIFACT"], self.app_config["UNAVAILABLE"] = admitted, unavailable

    def run(self) -> None:
        """As BaseApplication.run, with the master below."""
        try:
            _Arbiter(self).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(ExitCode.INTERNAL)


class _Arbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, except that a SIGHUP whose artifact fails its vetting changes nothing."""

    def reload(self) -> None:
        try:
            self.app.admit()
        except BlackboxError as exc:
            self.log.error("reload: failed, the running workers keep serving the old model: %s", exc.message)
            return
        super().reload()


def _child_exit(server: Any, worker: Any) -> None:
    mark_process_dead(worker.pid)
