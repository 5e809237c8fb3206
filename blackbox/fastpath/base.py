"""What every compiled step is: a node with one input form, and the two ways out of compiled code.

Scope: the node protocol only. A node is built from ONE fitted object and
keeps a reference to it (never a copy), plus the few facts about its input it
was verified with (dtype, width). Rules the rest of the package relies on:

* ``transform(X)`` (transformers) or ``predict``/``predict_proba``/``both``
  (final estimators) compute exactly what the fitted object's own method
  gives for the same ``X``: bit for bit for transformers, the same labels and
  probabilities within 1e-9 for estimators (a matrix product may round the
  last bit differently).
* ``form`` says what a column-slicing container (DataFrameMapper,
  ColumnTransformer) hands the node: ``"array"`` (what ``frame[cols].values``
  gives) or ``"reference"`` (exactly what the container gives the step itself:
  the DataFrame slice for ``input_df=True`` and ColumnTransformer, the values
  otherwise), for code that is called as it is.
* A node that meets an input its arithmetic was not verified for (another
  dtype, a non-finite value where scikit-learn would refuse it, a value of
  another type) raises :class:`Defer` out of the plan; the caller then runs
  the WHOLE call the reference way, so the reference's answer or error is
  what the caller gets.
* Nodes hold no per-call state: one plan serves many threads.
"""

from __future__ import annotations

from typing import Any


class Defer(Exception):
    """This call's input is outside what the compiled arithmetic was verified for: run the reference."""


class Unsupported(Exception):
    """A fitted object (or its settings) the fast path does not compile; the message says why."""


class Node:
    """A compiled step over plain arrays."""

    form = "array"
    kind = "compiled"

    def __init__(self, step: Any, path: str) -> None:
        self.step = step
        self.path = path

    def transform(self, X: Any) -> Any:
        raise NotImplementedError

    def records(self) -> list[dict[str, Any]]:
        """One entry per fitted object: where it is, its type, and how it runs."""
        return [{"path": self.path, "step": _type_name(self.step), "mode": self.kind}]


class Called(Node):
    """A step run as it is, with the input it expects: the user's own code, or a fallback.

    ``kind`` is ``"called"`` for the user's own steps (by design: their code is
    the definition of their feature) and ``"reference"`` for a known library
    step that could not be compiled, with ``reason`` saying why.
    """

    form = "reference"

    def __init__(self, step: Any, path: str, kind: str, reason: str | None = None) -> None:
        super().__init__(step, path)
        self.kind = kind
        self.reason = reason

    def transform(self, X: Any) -> Any:
        return self.step.transform(X)

    def records(self) -> list[dict[str, Any]]:
        record = super().records()[0]
        if self.reason:
            record["reason"] = self.reason
        return [record]


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def is_library_object(obj: Any) -> bool:
    """Whether ``obj``'s class comes from scikit-learn or sklearn-pandas (else it is the user's own)."""
    module = type(obj).__module__.partition(".")[0]
    return module in ("sklearn", "sklearn_pandas")
