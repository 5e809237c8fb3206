"""What one app shares across its requests, kept in ``app.extensions["blackbox"]``.

Scope: the container (part of the worker core: no Flask here; the HTTP side
reaches it through :func:`serving.routes.current`). Nothing lives in module
globals, so several apps (tests, or one per worker) never see each other's
model, keys or metrics.

A server serves one or several models, each a :class:`Served` under its name
(``/models/{name}/...``) with everything of its own: holder (and so readiness
and reload state), micro-batching scorer, drift window and store follower.
Settings, keys, metrics (labelled by model) and the prediction log (whose rows
name their model) are shared. The single-model routes (``/predict``...) address
the only model; with several, :meth:`State.served` raises :class:`UnknownModel`
naming them (a 404).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blackbox import Model

from .config import Settings
from .follow import Follower
from .holder import ModelHolder
from .inference import Scorer
from .logs import RequestLog
from .metrics import Metrics
from .monitor import Monitor
from .recorder import Recorder

if TYPE_CHECKING:
    from .auth import ApiKey  # the HTTP side's: only its type here

EXTENSION = "blackbox"


class UnknownModel(LookupError):
    """The request names no model this server serves, or names none while it serves several (HTTP 404)."""


@dataclass(frozen=True)
class Served:
    """One served model: its name, holder, scorer, drift window and (following a store) its follower."""

    name: str
    holder: ModelHolder
    scorer: Scorer
    monitor: Monitor
    follower: Follower | None = None

    def not_ready(self) -> str | None:
        """Why this model cannot answer now (None: it can)."""
        holder = self.holder
        if holder.draining:
            return "This worker is draining (it was told to stop); send requests to another one."
        if holder.model is not None:
            return None
        if holder.loading:
            return "The model is loading (verifying and self-testing it); retry shortly."
        if self.follower is not None:
            reason = self.follower.status.get("reason") or "see load_failed in the log"
            return f"No model could be loaded yet ({reason}); the server keeps retrying."
        reason = holder.failure or "see load_failed in the log"
        return f"No model could be loaded yet ({reason}); fix the artifact, then send blackbox serve SIGHUP."


@dataclass(frozen=True)
class State:
    """Settings, the served models by name, API keys (id -> ApiKey; empty: no auth), metrics, the log, the prediction log."""

    settings: Settings
    models: Mapping[str, Served]
    keys: Mapping[str, ApiKey]
    metrics: Metrics
    log: RequestLog
    predlog: Recorder | None = None

    def served(self, name: str | None = None) -> Served:
        """The model named ``name``; without a name, the only one (UnknownModel naming them when there are several)."""
        if name is None and len(self.models) == 1:
            return next(iter(self.models.values()))
        if name is not None and name in self.models:
            return self.models[name]
        names = ", ".join(self.models)
        if name is None:
            raise UnknownModel(f"This server serves several models ({names}); address one as /models/{{name}}/..., "
                               "e.g. POST /models/{name}/predict (GET /models lists them).")
        raise UnknownModel(f"This server serves no model named {name[:100]!r}; it serves {names} (GET /models).")

    def sole_model(self) -> Model | None:
        """The held model when exactly one is served (for log lines that name no model), else None."""
        return next(iter(self.models.values())).holder.model if len(self.models) == 1 else None

    # The only model's parts, as a single-model server (and its tests) read them.
    @property
    def holder(self) -> ModelHolder:
        return self.served().holder

    @property
    def scorer(self) -> Scorer:
        return self.served().scorer

    @property
    def monitor(self) -> Monitor:
        return self.served().monitor

    @property
    def follower(self) -> Follower | None:
        return self.served().follower
