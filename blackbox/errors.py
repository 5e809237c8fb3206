"""The exceptions blackbox raises: one root, one class per failure a caller handles.

Each class carries a stable ``code`` (what the server puts in JSON, so clients
never match prose) and the ``exit_code`` every command-line tool uses for it.
Messages say what was wrong, where, and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class BlackboxError(Exception):
    """Root of every error blackbox raises on purpose."""

    code = "blackbox_error"
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(BlackboxError, ValueError):
    """The call itself is wrong: an unfitted estimator, an unknown option."""

    code = "usage_error"
    exit_code = 2


class ArtifactError(BlackboxError):
    """The file is not a blackbox artifact, or its framing is broken."""

    code = "malformed_artifact"
    exit_code = 3


class AuthenticityError(BlackboxError):
    """The artifact's signature is missing, unknown or invalid."""

    code = "authenticity"
    exit_code = 4


class IntegrityError(BlackboxError):
    """The payload does not match the digest and length its manifest records."""

    code = "integrity"
    exit_code = 5


class EnvironmentMismatchError(BlackboxError):
    """This interpreter cannot safely load the artifact (Python, packages)."""

    code = "environment_mismatch"
    exit_code = 6

    def __init__(self, message: str, mismatches: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.mismatches = list(mismatches)


class SelfTestError(BlackboxError):
    """The model no longer gives the predictions recorded in its golden sample."""

    code = "self_test_failed"
    exit_code = 7

    def __init__(self, message: str, differences: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.differences = list(differences)


class StoreError(BlackboxError):
    """The model store cannot do what was asked: unreachable, a conflict, a missing version or alias."""

    code = "store_error"
    exit_code = 8


class SchemaError(BlackboxError, ValueError):
    """Input records do not fit the schema captured at training time."""

    code = "validation_error"
    exit_code = 9

    def __init__(self, message: str, problems: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
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
        super().__init__(message, [
            {"row": row, "field": None, "issue": "model_rejected", "expected": expected, "received": reason}
            for row in (rows or [None])
        ])
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
    exit_code = 14  # the model failed, as ModelFailedError (12 is a drifted rebuild)

    def __init__(self, message: str, rows: Sequence[int], output: str) -> None:
        super().__init__(message)
        self.rows = list(rows)
        self.output = output

    def __reduce__(self) -> tuple[Any, ...]:  # whole across processes (a Dask worker raises it)
        return type(self), (self.message, self.rows, self.output)

    @property
    def problems(self) -> list[dict[str, Any]]:
        return [
            {"row": row, "field": None, "issue": "invalid_model_output", "expected": f"finite {self.output}", "received": "NaN or infinity"}
            for row in self.rows
        ]

class SelfContainmentError(BlackboxError):
    """The payload needs a module that the serving side will not have."""

    code = "not_self_contained"
    exit_code = 11

    def __init__(self, message: str, references: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.references = list(references)


class ModelFailedError(BlackboxError):
    """The model itself fails on valid input: on every row of a batch, not on a few rows a caller can set aside."""

    code = "model_failed"
    exit_code = 14


class VersionMismatchWarning(UserWarning):
    """A package differs from the version the artifact was saved with (within policy)."""

    def __init__(self, distribution: str, saved: str, installed: str) -> None:
        super().__init__(
            f"{distribution} {installed} is installed but the artifact was saved with {saved}; "
            "predictions are checked by the golden-sample self-test, but pin "
            f"{distribution}=={saved} to be safe (strict=True refuses this)."
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
