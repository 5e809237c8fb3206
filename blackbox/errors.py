"""The exceptions blackbox raises: one root, one class per failure a caller handles.

Each class carries a stable ``code`` (what the server puts in JSON, so clients
never match prose) and the ``exit_code`` (an :class:`ExitCode`) every
command-line tool uses for it. Messages say what was wrong, where, and what to
do, in the terms of the Python API (parameters such as ``overwrite=True``), not
in those of an HTTP route or a command-line flag: ``options`` lists the parameters
a message refers to (with the value it suggests), so the command line can add its
own flags for them; the server adds its routes.

A problem with input data is always :func:`problem`'s
``{"row", "field", "issue", "expected", "received"}`` entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """The exit status of every blackbox command (the README lists the same)."""

    OK = 0
    INTERNAL = 1  # an unexpected failure: a bug
    USAGE = 2
    MALFORMED = 3
    AUTHENTICITY = 4
    INTEGRITY = 5
    ENVIRONMENT = 6
    SELF_TEST = 7
    STORE = 8
    INPUT_DATA = 9
    PARTIAL_SUCCESS = 10  # some rows scored, others rejected: nothing failed
    NOT_SELF_CONTAINED = 11
    REBUILD_DRIFTED = 12
    REBUILD_FAILED = 13
    MODEL_FAILED = 14  # the model fails on valid input, or answers NaN or infinity
    INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT; SIGTERM exits 143): nothing half-written is left


def problem(row: int | None, field: str | None, issue: str, expected: str, received: str) -> dict[str, Any]:
    """One problem (or warning) with input data: where it is (``row`` and ``field``, None when the whole input
    is meant) and what was expected instead. The one constructor of that shape."""
    return {"row": row, "field": field, "issue": issue, "expected": expected, "received": received}


class BlackboxError(Exception):
    """Root of every error blackbox raises on purpose.

    ``options``: the call's parameters the message tells the caller to change,
    each with the value it suggests (None: no particular value), e.g.
    ``{"on_error": "skip"}``; a command line names its flags for them.
    """

    code = "blackbox_error"
    exit_code = ExitCode.INTERNAL

    def __init__(self, message: str, *, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.options = dict(options or {})


class UsageError(BlackboxError, ValueError):
    """The call itself is wrong: an unfitted estimator, an unknown option."""

    code = "usage_error"
    exit_code = ExitCode.USAGE


class ArtifactError(BlackboxError):
    """The file is not a blackbox artifact, or its framing is broken."""

    code = "malformed_artifact"
    exit_code = ExitCode.MALFORMED


class AuthenticityError(BlackboxError):
    """The artifact's signature is missing, unknown or invalid."""

    code = "authenticity"
    exit_code = ExitCode.AUTHENTICITY


class IntegrityError(BlackboxError):
    """The payload does not match the digest and length its manifest records."""

    code = "integrity"
    exit_code = ExitCode.INTEGRITY


class EnvironmentMismatchError(BlackboxError):
    """This interpreter cannot safely load the artifact (Python, packages)."""

    code = "environment_mismatch"
    exit_code = ExitCode.ENVIRONMENT

    def __init__(self, message: str, mismatches: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.mismatches = list(mismatches)


class SelfTestError(BlackboxError):
    """The model no longer gives the predictions recorded in its golden sample."""

    code = "self_test_failed"
    exit_code = ExitCode.SELF_TEST

    def __init__(self, message: str, differences: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.differences = list(differences)


class StoreError(BlackboxError):
    """The model store cannot do what was asked: unreachable, a conflict, a missing version or alias."""

    code = "store_error"
    exit_code = ExitCode.STORE


class SchemaError(BlackboxError, ValueError):
    """Input records do not fit the schema captured at training time."""

    code = "validation_error"
    exit_code = ExitCode.INPUT_DATA

    def __init__(
        self, message: str, problems: Sequence[Mapping[str, Any]] = (), *, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message, options=options)
        self.problems = list(problems)


class ModelInputError(SchemaError):
    """The model refused records that passed the schema: a value it cannot compute with (infinity after a transform, say).

    ``rows`` are the 0-based positions, within the frame given to the model, of
    the records it refused, when they can be told apart (empty when not);
    ``problems`` has the schema's shape, one entry per row (``issue``
    ``model_rejected``), so callers treat it as any other validation failure.
    """

    code = "model_rejected_input"

    def __init__(self, message: str, rows: Sequence[int], reason: str) -> None:
        expected = "values the model can compute with (finite, within its numeric range after its transforms)"
        where: Sequence[int | None] = rows or [None]
        super().__init__(message, [problem(row, None, "model_rejected", expected, reason) for row in where])
        self.rows = list(rows)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # whole across processes (a Dask worker raises it)
        return type(self), (self.message, self.rows, self.reason)


class ModelOutputError(BlackboxError):
    """The model returned NaN or infinity as a prediction or a probability: the model is at fault, not its input.

    ``rows`` are the 0-based positions, within the frame given to the model, of
    the records whose ``output`` (``"predictions"`` or ``"probabilities"``) is
    not finite; ``problems`` lists them in the schema's entry shape.
    """

    code = "invalid_model_output"
    exit_code = ExitCode.MODEL_FAILED  # as ModelFailedError

    def __init__(self, message: str, rows: Sequence[int], output: str) -> None:
        super().__init__(message)
        self.rows = list(rows)
        self.output = output

    def __reduce__(self) -> tuple[Any, ...]:  # whole across processes (a Dask worker raises it)
        return type(self), (self.message, self.rows, self.output)

    @property
    def problems(self) -> list[dict[str, Any]]:
        return [problem(row, None, "invalid_model_output", f"finite {self.output}", "NaN or infinity") for row in self.rows]


class SelfContainmentError(BlackboxError):
    """The payload needs a module that the serving side will not have."""

    code = "not_self_contained"
    exit_code = ExitCode.NOT_SELF_CONTAINED

    def __init__(self, message: str, references: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.references = list(references)


class ModelFailedError(BlackboxError):
    """The model itself fails on valid input: on every row of a batch, not on a few rows a caller can set aside."""

    code = "model_failed"
    exit_code = ExitCode.MODEL_FAILED


class RebuildError(BlackboxError):
    """The recorded training could not be re-run (no recipe, changed data, a failing run)."""

    code = "rebuild_failed"
    exit_code = ExitCode.REBUILD_FAILED


class VersionMismatchWarning(UserWarning):
    """A package differs from the version the artifact was saved with (within policy)."""

    def __init__(self, distribution: str, saved: str, installed: str) -> None:
        match = (f"run it on Python {saved}" if distribution == "Python"
                 else f"install {distribution}=={saved} (`blackbox requirements ARTIFACT` lists every version it was saved with)")
        super().__init__(
            f"{distribution} {installed} is installed but the artifact was saved with {saved}; it loaded because its "
            f"golden sample reproduced. To serve it exactly as saved, {match}; strict=True refuses any difference."
        )
        self.distribution = distribution
        self.saved = saved
        self.installed = installed


def error_class(code: str) -> type[BlackboxError]:
    """The error class whose ``code`` is ``code`` (BlackboxError if none is)."""
    pending: list[type[BlackboxError]] = [BlackboxError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls
        pending.extend(cls.__subclasses__())
    return BlackboxError
