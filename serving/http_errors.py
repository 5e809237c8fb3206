"""The exceptions only the HTTP side raises: every werkzeug ``HTTPException`` serving defines, and the request body's.

Scope: the classes, nothing else (no serving imports, so any module of the HTTP
side can raise them). Their statuses and wire codes are in the one table,
:data:`serving.errors.TABLE`. The worker core (see :mod:`serving`) raises plain
exceptions of its own (:class:`~serving.holder.NotReady`,
:class:`~serving.state.UnknownModel`, :class:`~serving.inference.ModelTimeout`)
and blackbox errors, which that table maps too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import Conflict, Forbidden, ServiceUnavailable, UnprocessableEntity

from blackbox import SchemaError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


class TooManyRecords(SchemaError):
    """The batch is over the configured record limit (checked before any validation)."""

    code = "too_many_records"


class BodyTimeout(Exception):
    """The client did not send its body within the read timeout (HTTP 408)."""


class WorkerTimeout(Exception):
    """gunicorn's master stopped the worker for its timeout while it handled the request (HTTP 504)."""


class MissingScope(Forbidden):
    """A known key without the scope the route needs (RFC 6750's ``insufficient_scope``)."""

    def __init__(self, key_id: str, scope: str, route: str) -> None:
        super().__init__(
            f"API key {key_id!r} lacks the {scope!r} scope that {route} needs; "
            f"grant it in the keys file (`{key_id}:KEY {scope} ...`) or use a key that has it."
        )
        self.scope = scope

    def get_headers(
        self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None,
    ) -> list[tuple[str, str]]:
        challenge = f'Bearer realm="blackbox", error="insufficient_scope", scope="{self.scope}"'
        return [*super().get_headers(environ, scope), ("WWW-Authenticate", challenge)]


class PredictionLogOff(Conflict):
    description = "The prediction log is off, so labels have nowhere to go: start the server with --prediction-log URL."


class PredictionLogUnavailable(ServiceUnavailable):
    description = "The prediction log database is unreachable; the labels were not stored. Retry later."


class InvalidFeedback(UnprocessableEntity):
    """Feedback entries that cannot be stored; ``problems`` name each entry and field."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(
            f"{len(problems)} problem(s) in the feedback: send {{\"request_id\": ..., \"row\": 0, \"label\": ...}} "
            "or a list of them (row defaults to 0)."
        )
        self.problems = problems
