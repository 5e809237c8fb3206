"""The app factory: layered settings, the verified model, and the routes around it.

Scope: assembling one app. Everything it shares lives in
``app.extensions["blackbox"]`` (:mod:`.state`), never in module globals.
``create_app`` returns a loaded app; the gunicorn workers use
``background=True`` instead, so a worker answers ``/health`` at once and
``/ready`` says 503 until its model is loaded (in a thread, after the fork).
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import Any

from blackbox import BlackboxError, Model, UsageError
from blackbox.predlog import PredictionLog
from flask import Flask

from . import api, auth, errors, lifecycle, monitor, ops
from .config import Settings, layer
from .follow import Follower
from .holder import READY_WAIT, ModelHolder, Vetted, load_model
from .inference import Scorer
from .logs import RequestLog
from .metrics import Metrics
from .predlog import Recorder
from .state import EXTENSION, State


def create_app(
    config: Mapping[str, Any] | None = None, *, model: Model | None = None,
    background: bool = False, vetted: Vetted | None = None,
) -> Flask:
    """Build the app; the model is loaded and self-tested before this returns, or it raises.

    :param config: settings over :data:`serving.config.DEFAULTS` and the
        ``BLACKBOX_*`` environment (e.g. ``{"ARTIFACT": "model.bbx"}``).
    :param model: serve this already loaded model instead of ``ARTIFACT``
        (it is still self-tested).
    :param background: return at once and load in a thread (``/ready`` is 503
        until then; requests wait up to :data:`~serving.holder.READY_WAIT` s).
        ``ARTIFACT`` must then be a copy already vetted (``blackbox serve`` does that).
    :param vetted: where store releases are vetted (default: a private temporary directory).
    """
    app = Flask(__name__)
    layer(app.config, config)
    settings = Settings.from_config(app.config)
    keys = auth.load_keys(settings)  # before the slow part: a bad key file fails at once
    log = RequestLog(settings.log_format)
    metrics = Metrics()
    holder = ModelHolder(wait=READY_WAIT if background else 0.0)

    def serve(loaded: Model) -> None:
        holder.model = loaded
        metrics.serving(loaded.name, loaded.version, loaded.sha256)
        log.event("model_loaded", logging.INFO, **summary(loaded, settings), api_keys=len(keys))

    follower = None
    if settings.store is not None:
        follower = Follower(settings, holder, metrics, log, vetted or _private_vetted(settings), on_first=serve)
    elif model is None and settings.artifact is None:
        raise UsageError(
            "No artifact to serve: set ARTIFACT (env BLACKBOX_ARTIFACT) to a .bbx path, "
            "or STORE and MODEL to follow a release, or pass model=."
        )
    if model is not None:
        model.self_test()
        serve(model)
    elif follower is not None:
        if not background:
            follower.load_initial()
    elif background:
        artifact, options = settings.artifact, settings.load_options
        _in_background(lambda: load_model(artifact, options), holder, log, serve)
    else:
        serve(load_model(settings.artifact, settings.load_options))
    scorer = Scorer(
        batching=settings.batching, max_wait=settings.batch_max_wait_ms / 1000,
        max_records=settings.batch_max_records, observe=metrics.batched,
    )
    window = monitor.Monitor(holder, metrics, log, capacity=settings.drift_window, interval=settings.drift_interval)
    recorder = Recorder(PredictionLog(settings.prediction_log), metrics, log) if settings.prediction_log else None
    app.extensions[EXTENSION] = State(
        settings, holder, scorer, keys, metrics, log, monitor=window, follower=follower, predlog=recorder
    )
    lifecycle.init_app(app)
    auth.init_app(app)
    errors.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(monitor.bp)
    if follower is not None:
        follower.start()
    window.start()
    return app


def _in_background(load: Callable[[], Model], holder: ModelHolder, log: RequestLog, serve: Callable[[Model], None]) -> None:
    """Load in a daemon thread; a failure is logged and leaves the app live but not ready."""

    def run() -> None:
        try:
            serve(load())
        except BlackboxError as exc:
            log.event("load_failed", logging.ERROR, code=exc.code, reason=exc.message)
        finally:
            holder.loading = False

    holder.loading = True
    threading.Thread(target=run, name="blackbox-load", daemon=True).start()


def _private_vetted(settings: Settings) -> Vetted:
    """A vetted-copies directory for this app alone, removed when the process exits."""
    directory = tempfile.mkdtemp(prefix="blackbox-vetted-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return Vetted(directory, settings.load_options, settings.load_timeout)


def summary(model: Model, settings: Settings) -> dict[str, Any]:
    """What the start-up log says about the served model: enough to know which one it is."""
    manifest = model.manifest
    search = (manifest.get("metrics") or {}).get("search") or {}
    return {
        "artifact": str(settings.artifact) if settings.artifact else f"{settings.store} {settings.model_ref}",
        "name": model.name,
        "version": model.version,
        "sha256": model.sha256,
        "created_at": manifest.get("created_at"),
        "estimator": manifest.get("estimator"),
        "git_commit": (manifest.get("git") or {}).get("commit"),
        "cv_score": search.get("best_score"),
        "metrics": {k: v for k, v in (manifest.get("metrics") or {}).items() if k != "search"},
        "strict_fields": settings.strict_fields,
        "prediction_log": settings.prediction_log.render_as_string(hide_password=True) if settings.prediction_log else None,
    }
