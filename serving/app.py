"""The app factory: layered settings, the verified model, and the routes around it.

Scope: assembling one app. Everything it shares lives in
``app.extensions["blackbox"]`` (:mod:`.state`), never in module globals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from blackbox import Model, UsageError
from blackbox.predlog import PredictionLog
from flask import Flask

from . import api, auth, errors, lifecycle, monitor, ops
from .config import Settings, layer
from .follow import Follower
from .holder import ModelHolder, load_model
from .inference import Scorer
from .logs import RequestLog
from .metrics import Metrics
from .predlog import Recorder
from .state import EXTENSION, State


def create_app(config: Mapping[str, Any] | None = None, *, model: Model | None = None) -> Flask:
    """Build the app; the model is loaded and self-tested before this returns, or it raises.

    :param config: settings over :data:`serving.config.DEFAULTS` and the
        ``BLACKBOX_*`` environment (e.g. ``{"ARTIFACT": "model.bbx"}``).
    :param model: serve this already loaded model instead of ``ARTIFACT``
        (it is still self-tested).
    """
    app = Flask(__name__)
    layer(app.config, config)
    settings = Settings.from_config(app.config)
    keys = auth.load_keys(settings)  # before the slow part: a bad key file fails at once
    log = RequestLog(settings.log_format)
    metrics = Metrics()
    holder = ModelHolder()
    follower = Follower(settings, holder, metrics, log) if settings.store is not None else None
    if model is not None:
        model.self_test()
    elif follower is not None:
        model = follower.load_initial()
    elif settings.artifact is not None:
        model = load_model(settings.artifact, settings.load_options)
    else:
        raise UsageError(
            "No artifact to serve: set ARTIFACT (env BLACKBOX_ARTIFACT) to a .bbx path, "
            "or STORE and MODEL to follow a release, or pass model=."
        )
    holder.model = model
    metrics.serving(model.name, model.version, model.sha256)
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
    log.event("model_loaded", logging.INFO, **summary(model, settings), api_keys=len(keys))
    if follower is not None:
        follower.start()
    window.start()
    return app


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
