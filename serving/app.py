"""The app factory: layered settings, the verified models, and the routes around them.

Scope: assembling one app. Everything it shares lives in
``app.extensions["blackbox"]`` (:mod:`.state`), never in module globals.
``create_app`` returns a loaded app; the gunicorn workers use
``background=True`` instead, so a worker answers ``/health`` at once and
``/ready`` says 503 until its models are loaded (a thread per model, after the fork).
Each model is built with its own holder, scorer, drift window and follower
(:class:`.state.Served`); a model that fails its checks never stops the others.
The follower and drift threads start in the process that built the app and
again in every process forked from it (``gunicorn --preload``: threads do not
survive a fork).
The core parts are built here and handed to the app; the routes
(:mod:`.routes`), the request hooks (:mod:`.lifecycle`, :mod:`.auth`) and the
error table (:mod:`.errors`) are registered around them.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from blackbox import BlackboxError, Model, UsageError
from blackbox.monitoring.predlog import PredictionLog

from . import auth, errors, lifecycle
from .config import Settings, layer
from .follow import Follower
from .holder import READY_WAIT, ModelHolder, Vetted, load_model
from .inference import Scorer
from .logs import RequestLog
from .metrics import Metrics
from .monitor import Monitor
from .recorder import Recorder
from .routes import api, feedback, ops, v2
from .state import EXTENSION, Served, State


def create_app(
    config: Mapping[str, Any] | None = None, *, model: Model | None = None,
    background: bool = False, vetted: Vetted | None = None,
) -> Flask:
    """Build the app; the models are loaded and self-tested before this returns, or it raises.

    :param config: settings over :data:`serving.config.DEFAULTS` and the
        ``BLACKBOX_*`` environment (e.g. ``{"ARTIFACT": "model.bbx"}``).
    :param model: serve this already loaded model instead of ``ARTIFACT``
        (it is still self-tested).
    :param background: return at once and load in a thread per model (``/ready``
        is 503 until then; requests wait up to :data:`~serving.holder.READY_WAIT` s).
        ``ARTIFACT`` must then be copies already vetted (``blackbox serve`` does that).
    :param vetted: where store releases are vetted (default: a private temporary directory).

    With several models, one that fails its checks is logged (``load_failed``)
    and reported not ready while the others serve; this raises only when none
    loads (so one model alone fails the start as it always did).
    """
    app = Flask(__name__)
    layer(app.config, config)
    settings = Settings.from_config(app.config)
    keys = auth.load_keys(settings)  # before the slow part: a bad key file fails at once
    log = RequestLog(settings.log_format)
    metrics = Metrics()
    if model is None and not settings.artifacts and not settings.model_refs and not settings.unavailable:
        raise UsageError(
            "No artifact to serve: set ARTIFACT (env BLACKBOX_ARTIFACT) to a .bbx path (or several, or a directory), "
            "or STORE and MODEL to follow a release, or pass model=."
        )
    sources: dict[str, str] = (
        {model.name: "model="} if model is not None
        else {**{name: str(path) for name, path in settings.artifacts.items()},
              **{ref.partition("@")[0]: f"{settings.store} {ref}" for ref in settings.model_refs},
              **dict.fromkeys(settings.unavailable, "refused by blackbox serve")}
    )
    shared_vetted = vetted or (_private_vetted(settings) if settings.model_refs else None)
    models: dict[str, Served] = {}
    loads: dict[str, Callable[[], Any]] = {}
    for name, source in sources.items():
        holder = ModelHolder(wait=READY_WAIT if background else 0.0, settle=settings.settle_heap)
        serve = functools.partial(_serve, name, source, holder, metrics, log, settings, len(keys))
        follower = None
        if name in settings.unavailable:
            holder.failure = settings.unavailable[name]
        elif model is not None:
            loads[name] = functools.partial(_self_tested, model, serve)
        elif settings.model_refs:
            assert shared_vetted is not None
            ref = next(r for r in settings.model_refs if r.partition("@")[0] == name)
            follower = Follower(settings, holder, metrics, log, shared_vetted, on_first=serve, ref=ref)
            loads[name] = follower.load_initial
        else:
            loads[name] = functools.partial(_loaded, settings.artifacts[name], settings.load_options, serve)
        scorer = Scorer(
            batching=settings.batching, max_wait=settings.batch_max_wait_ms / 1000,
            max_records=settings.batch_max_records, observe=functools.partial(metrics.batched, name),
            timeout=settings.request_timeout,
        )
        window = Monitor(holder, metrics, log, capacity=settings.drift_window, interval=settings.drift_interval, name=name)
        models[name] = Served(name, holder, scorer, window, follower)
    _load(models, loads, log, background=background and model is None)
    recorder = Recorder(PredictionLog(settings.prediction_log), metrics, log) if settings.prediction_log else None
    app.extensions[EXTENSION] = State(settings, models, keys, metrics, log, predlog=recorder)
    lifecycle.init_app(app)
    auth.init_app(app)
    errors.init_app(app)
    for routes in (api, feedback, ops, v2):
        app.register_blueprint(routes.bp)
    _start_threads(app, models)
    return app


def _start_threads(app: Flask, models: Mapping[str, Served]) -> None:
    """Start each model's follower and drift refresher here, and again in every process forked from this one.

    Threads do not survive a fork: under ``gunicorn --preload`` the app is built in
    the master, and without the hook no worker would follow the store or refresh
    its drift gauges. The child also makes their locks (and the holders' events)
    anew: one a parent's thread held at the fork would stay held there forever. The
    hook holds the app weakly (it cannot be unregistered, and must not keep a
    discarded app's models alive).
    """
    for served in models.values():
        if served.follower is not None:
            served.follower.start()
        served.monitor.start()
    alive = weakref.ref(app)

    def forked() -> None:
        forked_app = alive()
        if forked_app is None:
            return
        for served in forked_app.extensions[EXTENSION].models.values():
            served.holder.forked()
            if served.follower is not None:
                served.follower.restart()
            served.monitor.restart()

    os.register_at_fork(after_in_child=forked)


def _serve(
    name: str, source: str, holder: ModelHolder, metrics: Metrics, log: RequestLog, settings: Settings, api_keys: int,
    loaded: Model,
) -> None:
    """Hold a first model that passed its checks, and say so."""
    holder.model = loaded
    holder.failure = None
    metrics.serving(loaded.name, loaded.version, loaded.sha256)
    log.event("model_loaded", logging.INFO, model=name, **summary(loaded, settings, source), api_keys=api_keys)


def _self_tested(model: Model, serve: Callable[[Model], None]) -> None:
    model.self_test()
    serve(model)


def _loaded(path: Path, options: Mapping[str, Any], serve: Callable[[Model], None]) -> None:
    serve(load_model(path, options))


def _load(models: Mapping[str, Served], loads: Mapping[str, Callable[[], Any]], log: RequestLog, *, background: bool) -> None:
    """Load every model, each in its own daemon thread when ``background``; a failure leaves its model not ready.

    In the foreground, the first failure is raised when no model loaded at all.
    A follower that loads in the background does so from its own thread (``start``).
    """
    failures: list[BlackboxError] = []
    for name, load in loads.items():
        holder, follower = models[name].holder, models[name].follower
        if background:
            if follower is None:
                _in_background(name, load, holder, log)
            continue
        try:
            load()
        except BlackboxError as exc:
            if len(models) == 1:
                raise
            failures.append(exc)
            holder.failure = exc.message
            log.event("load_failed", logging.ERROR, model=name, code=exc.code, reason=exc.message)
    if failures and not any(served.holder.model is not None for served in models.values()):
        raise failures[0]


def _in_background(name: str, load: Callable[[], Any], holder: ModelHolder, log: RequestLog) -> None:
    """Load in a daemon thread; a failure is logged and leaves the model live but not ready."""

    def run() -> None:
        try:
            load()
        except BlackboxError as exc:
            holder.failure = exc.message
            log.event("load_failed", logging.ERROR, model=name, code=exc.code, reason=exc.message)
        finally:
            holder.loading = False

    holder.loading = True
    threading.Thread(target=run, name=f"blackbox-load-{name}", daemon=True).start()


def _private_vetted(settings: Settings) -> Vetted:
    """A vetted-copies directory for this app alone, removed when the process that made it exits.

    Not when a process forked from it exits (a ``gunicorn --preload`` worker): the others still vet into it.
    """
    directory = tempfile.mkdtemp(prefix="blackbox-vetted-")
    atexit.register(_remove_if_mine, directory, os.getpid())
    return Vetted(directory, settings.load_options, settings.load_timeout)


def _remove_if_mine(directory: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(directory, ignore_errors=True)


def summary(model: Model, settings: Settings, source: str) -> dict[str, Any]:
    """What the start-up log says about a served model: enough to know which one it is."""
    manifest = model.manifest
    search = manifest.metric_group("search")
    return {
        "artifact": source,
        "name": model.name,
        "version": model.version,
        "sha256": model.sha256,
        "created_at": manifest.created_at,
        "estimator": manifest.estimator,
        "git_commit": manifest.git.commit if manifest.git else None,
        "cv_score": search.get("best_score"),
        "metrics": {k: v for k, v in (manifest.metrics or {}).items() if k != "search"},
        "strict_fields": settings.strict_fields,
        "prediction_log": settings.prediction_log.render_as_string(hide_password=True) if settings.prediction_log else None,
    }
