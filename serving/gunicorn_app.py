"""Running the app under gunicorn: one model per worker, loaded after the fork.

Scope: process management only. :class:`Server` is a gunicorn application
whose workers each call :func:`serving.create_app` once they have forked (no
``preload_app``): every worker verifies and self-tests its own copy of the
model, and a later hot reload can replace it per worker. The master has
already verified the artifact (``blackbox serve`` does that first), so a bad
artifact stops the start with its own exit code instead of gunicorn's
"worker failed to boot".

SIGTERM is gunicorn's graceful stop: workers finish the requests in flight
(up to ``graceful_timeout``), then the master exits 0.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.config import KNOWN_SETTINGS

from . import create_app
from .metrics import mark_process_dead

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
        # threads == 1 selects sync (no batching possible).
        "worker_class": "gthread" if threads > 1 else "sync",
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
    """gunicorn application serving ``create_app(config)`` in every worker."""

    def __init__(self, config: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
        self.app_config = dict(config)
        self.settings = dict(settings)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        """Called in each worker after the fork."""
        return create_app(self.app_config)


def _child_exit(server: Any, worker: Any) -> None:
    mark_process_dead(worker.pid)
