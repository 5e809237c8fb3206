"""What one app shares across its requests, kept in ``app.extensions["blackbox"]``.

Scope: the container and its accessor. Nothing lives in module globals, so
several apps (tests, or one per worker) never see each other's model, keys or
metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from .config import Settings
from .follow import Follower
from .holder import ModelHolder
from .inference import Scorer
from .logs import RequestLog
from .metrics import Metrics

if TYPE_CHECKING:
    from .auth import ApiKey  # auth reads this module
    from .monitor import Monitor  # monitor's route reads this module
    from .predlog import Recorder  # likewise /feedback

EXTENSION = "blackbox"


@dataclass(frozen=True)
class State:
    """Settings, the model holder and its scorer, API keys (id -> ApiKey; empty: no auth), metrics, the log, the drift window, the prediction log."""

    settings: Settings
    holder: ModelHolder
    scorer: Scorer
    keys: Mapping[str, ApiKey]
    metrics: Metrics
    log: RequestLog
    monitor: Monitor
    follower: Follower | None = None
    predlog: Recorder | None = None


def current() -> State:
    """The state of the app handling the current request."""
    state: State = current_app.extensions[EXTENSION]
    return state
