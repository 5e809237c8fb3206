"""Records -> one validated frame -> one prediction call: the server's whole use of a model.

Scope: no HTTP here, so the same code can later score a micro-batch gathered
from several requests. Validation is the model's schema
(:meth:`blackbox.Model.prepare`), never code written for one model.

A worker runs a few threads (gunicorn gthread) so that health checks, JSON and
validation proceed while a prediction runs, but the model itself is called by
one thread at a time: a pipeline holds user code that need not be thread-safe
(sklearn-pandas' ``DataFrameMapper`` writes ``self.transformed_names_`` on
every transform), and the GIL would serialise most of that work anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blackbox import Model


@dataclass(frozen=True)
class Scored:
    """Predictions in input order, class probabilities when the model has them, and input warnings."""

    predictions: list[Any]
    probabilities: list[list[float]] | None
    warnings: list[dict[str, Any]]


class Scorer:
    """Scores batches of records, one model call at a time in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def score(self, model: Model, records: Sequence[Mapping[str, Any]], *, strict: bool) -> Scored:
        """Validate the whole batch (one SchemaError lists every problem), then predict it in one call."""
        frame, warnings = model.prepare(records, strict=strict)
        with self._lock:
            predictions, probabilities = model.predict_and_proba_frame(frame)
        return Scored(predictions, probabilities, warnings)
