"""One chunk: validated by the model's schema, its valid rows predicted, its invalid ones kept with their problems.

A row that passes the schema but that the model cannot score is a reject too.
When the model call on a chunk's valid rows fails, the rows its error names
(:class:`ModelInputError`: a value it cannot compute with; :class:`ModelOutputError`:
a NaN or infinite answer) are rejected with that error's problem and the rest is
predicted again; any other exception (the model's own code raising) has its rows
found by retrying halves down to single rows, issue ``model_error`` with the
exception as the reason. Only when the model fails on every row of a chunk of
at least :data:`BROKEN_AFTER_ROWS` rows (seen early: that many single rows
failing with no call succeeding), or isolating the failures would take more than
:data:`MAX_ISOLATION_CALLS` model calls, is it the model's fault:
:class:`ModelFailedError` (exit 14) fails the run. A smaller chunk failing
entirely (the input's short last chunk) is rejects like any other; the run
(:mod:`._job`) fails the same way when the model scored no row of it at all.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import ModelFailedError, ModelInputError, ModelOutputError, SchemaError, problem
from ..fastpath.table import Prepared, as_frame
from ..manifest import jsonable
from ..model import Model
from ..schema import Flagged
from ._chunks import Chunk, Scored
from ._reader import parse

MAX_ISOLATION_CALLS = 2_000
"""Model calls a chunk may spend finding the rows the model fails on: about 2·log2(chunk rows) per such row,
and each call on a few rows costs the model's fixed overhead (a few ms for a pipeline)."""
MODEL_ERROR = "model_error"
"""The issue of a reject whose model call raised (the model's own code)."""
MODEL_ISSUES = frozenset({MODEL_ERROR, "model_rejected", "invalid_model_output"})
"""Issues of rejects the model, not the schema, refused (the last two from ModelInputError and ModelOutputError)."""
BROKEN_AFTER_ROWS = 8
"""Rows that all fail, with no call on the chunk succeeding, that show the model fails on everything."""


def score_chunk(model: Model, chunk: Chunk, id_column: str | None, probabilities: bool) -> Scored:
    """Validate a chunk with the model's schema, predict its valid rows, and collect the others' problems."""
    data, ids, kept, rejects = parse(chunk, model.schema, id_column)
    frame, flagged, problems = _prepare(model, data) if len(data) else (None, {}, [])
    invalid = _by_row(model, data, problems) if problems else {}
    good: Sequence[int] = range(len(data))
    if invalid:
        good = [position for position in range(len(data)) if position not in invalid]
        frame, flagged, _ = _prepare(model, _subset(data, good)) if good else (None, {}, [])
        rejects.update((kept[position], found) for position, found in invalid.items())
    predictions: list[Any] = []
    proba = None
    warned = _tags(flagged, len(good), model.schema.columns)
    if frame is not None:
        try:
            predictions, proba, failed = _predict(model, frame, probabilities and model.has_proba)
        except _AtFault as fault:
            raise fault.raised(chunk.rows[[kept[position] for position in good]]) from None
        if failed:
            rejects.update((kept[good[position]], [problem]) for position, problem in failed.items())
            warned = [tags for position, tags in enumerate(warned) if position not in failed]
    valid = [position for position in range(len(chunk.rows)) if position not in rejects] if rejects else None
    return Scored(
        rows=chunk.rows if valid is None else chunk.rows[valid],
        ids=ids if ids is None or valid is None else (ids.take(valid) if isinstance(ids, pa.ChunkedArray) else [ids[i] for i in valid]),
        predictions=predictions,
        probabilities=proba,
        warnings=warned,
        rejects=[
            (int(chunk.rows[position]), None if ids is None else _id_value(ids, position), problem)
            for position in sorted(rejects)
            for problem in rejects[position]
        ],
    )


class _Isolation:
    """Finding the rows of a chunk the model fails on: rows its error names, else halves retried down to single rows."""

    def __init__(self, model: Model, source: pd.DataFrame | Prepared, probabilities: bool) -> None:
        self.model, self.source, self.probabilities = model, source, probabilities
        self._frame: pd.DataFrame | None = None  # the source as a frame, built when it must be split
        self.calls = 0
        self.succeeded = False
        self.predictions: list[Any] = []
        self.probas: list[np.ndarray] = []
        self.failed: dict[int, dict[str, Any]] = {}  # position in the frame -> its problem
        self.last: Exception | None = None

    def predict(self, positions: np.ndarray) -> Exception | None:
        """Predict the rows at ``positions`` (ascending) and keep the answers, or return the model's exception."""
        if self.calls > MAX_ISOLATION_CALLS:
            raise _AtFault(f"more rows than {MAX_ISOLATION_CALLS:,} model calls could isolate (at least {len(self.failed):,})",
                           self.last)
        part = self.source if len(positions) == len(self.source) else self.frame().iloc[positions].reset_index(drop=True)
        self.calls += 1
        try:
            predictions, proba = _call(self.model, part, self.probabilities)
        except Exception as exc:  # noqa: BLE001  the model's own code may raise anything
            self.last = exc
            return exc
        self.succeeded = True
        self.predictions += predictions
        if proba is not None:
            self.probas.append(proba)
        return None

    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = as_frame(self.source)
        return self._frame

    def isolate(self, positions: np.ndarray, error: Exception) -> None:
        """The rows at ``positions`` failed together with ``error``: find the ones the model fails on."""
        named = error.rows if isinstance(error, (ModelInputError, ModelOutputError)) else []
        if named and all(0 <= row < len(positions) for row in named):  # the model said which rows
            assert isinstance(error, (ModelInputError, ModelOutputError))
            for row, problem in zip(named, error.problems, strict=True):
                self._fail(positions[row], {**problem, "row": None}, error)
            rest = np.delete(positions, named)
            if len(rest) and (failure := self.predict(rest)) is not None:
                self.isolate(rest, failure)
        elif len(positions) == 1:
            self._fail(positions[0], _model_problem(error), error)
        else:
            middle = len(positions) // 2
            for half in (positions[:middle], positions[middle:]):
                if (failure := self.predict(half)) is not None:
                    self.isolate(half, failure)

    def _fail(self, position: int, problem: dict[str, Any], error: Exception) -> None:
        self.failed[int(position)] = problem
        if not self.succeeded and BROKEN_AFTER_ROWS <= len(self.failed) < len(self.source):
            raise _AtFault(f"every row it was tried on ({len(self.failed)} alone, none succeeded)", error)


def _predict(model: Model, source: pd.DataFrame | Prepared, probabilities: bool) -> tuple[list[Any], np.ndarray | None, dict[int, dict[str, Any]]]:
    """Predictions (and probabilities) for the rows the model can score, and the problem of each row it cannot, by position.

    Raises :class:`_AtFault` when the model, not the rows, is at fault.
    """
    search = _Isolation(model, source, probabilities)
    if (error := search.predict(np.arange(len(source)))) is not None:
        search.isolate(np.arange(len(source)), error)
        if len(source) >= BROKEN_AFTER_ROWS and len(search.failed) == len(source):
            raise _AtFault("every row", error)
    if not probabilities:
        return search.predictions, None, search.failed
    if not search.probas:  # every row failed: rejects, and no probabilities to concatenate
        return search.predictions, np.empty((0, len(model.classes or ()))), search.failed
    proba = np.concatenate(search.probas) if len(search.probas) > 1 else search.probas[0]
    return search.predictions, proba, search.failed


class _AtFault(Exception):
    """The model, not the data, is at fault: it fails on (nearly) every valid row of a chunk."""

    def __init__(self, which: str, error: Exception | None) -> None:
        super().__init__(which, error)
        self.which, self.error = which, error

    def raised(self, numbers: np.ndarray) -> ModelFailedError:
        return model_failed(self.which, len(numbers), int(numbers[0]), int(numbers[-1]), _reason(self.error))


def model_failed(which: str, rows: int, first: int, last: int, reason: str) -> ModelFailedError:
    """The model, not the data, is at fault: it failed on ``which`` of ``rows`` valid rows (1-based ``first`` to ``last``)."""
    return ModelFailedError(
        f"The model failed on {which} of the {rows:,} valid rows from row {first} to row {last} (1-based), although "
        f"they passed its schema: {reason}. This is not a few bad rows to reject: the model cannot score this input. "
        "Check the model (blackbox verify) and the input against its training data."
    )


def _call(model: Model, source: pd.DataFrame | Prepared, probabilities: bool) -> tuple[list[Any], np.ndarray | None]:
    if probabilities:
        predictions, proba = model.predict_and_proba_arrays(source)  # the probabilities stay an array, for the writer
        return jsonable(predictions), proba
    return model.predict_frame(source), None


def _model_problem(error: Exception) -> dict[str, Any]:
    return problem(None, None, MODEL_ERROR, "a record the model can score", _reason(error))


def _reason(error: Exception | None) -> str:
    return "no exception was kept" if error is None else f"{type(error).__name__}: {error}"[:300]


def _prepare(model: Model, data: pd.DataFrame | list[Any]) -> tuple[pd.DataFrame | Prepared | None, Flagged, list[dict[str, Any]]]:
    """The model's input and the rows of each warning, or None and the schema's problems.

    The input is the checked columns for the plan, else the prepared frame. The
    plan reads the columns as they are (a column is built only when a step
    reads it, and no DataFrame is built unless the call is deferred), as
    ``Model.predict`` gives it records.
    """
    try:
        prepared = model.checked(data)
    except SchemaError as exc:
        return None, {}, [dict(problem) for problem in exc.problems]
    return (prepared if model.plan is not None else prepared.frame()), prepared.flagged, []


def _tags(flagged: Flagged, rows: int, columns: list[str]) -> list[str | None]:
    """Each row's warnings as ``field:issue`` joined by ``;`` in schema order (unknown fields last), None for a row without.

    A field name is percent-encoded where it holds ``%``, ``;``, ``:`` or a control character
    (``urllib.parse.unquote`` reads it back), so no name can pass for another warning.
    """
    tags: list[list[str] | None] = [None] * rows
    order = {name: position for position, name in enumerate(columns)}
    for field, issue in sorted(flagged, key=lambda key: (order.get(key[0], len(order)), key[0], key[1])):
        tag = f"{_ESCAPE.sub(lambda m: f'%{ord(m.group()):02X}', field)}:{issue}"
        for row in flagged[field, issue]:
            found = tags[row]
            if found is None:
                tags[row] = [tag]
            else:
                found.append(tag)
    return [None if found is None else ";".join(found) for found in tags]


_ESCAPE = re.compile(r"[%;:\x00-\x1f\x7f]")


def _by_row(model: Model, data: pd.DataFrame | list[Any], problems: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """``problems`` of ``data`` grouped by the position of their row.

    Problems that name no row (a capped "N more rows" entry, a column of the wrong
    type) are resolved by validating each half on its own; on a single row they
    can only be about the column, which fails the run.
    """
    if all(problem["row"] is not None for problem in problems):
        found: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        for problem in problems:
            found[problem["row"]].append(problem)
        return dict(found)
    if len(data) == 1:
        column = next(problem for problem in problems if problem["row"] is None)
        raise SchemaError(
            f"Column {column['field']!r} of the input cannot be scored: expected {column['expected']}, got {column['received']}. "
            "Convert the column to the type the model's schema gives it.",
            problems,
        )
    grouped: dict[int, list[dict[str, Any]]] = {}
    half = len(data) // 2
    for offset, positions in ((0, range(half)), (half, range(half, len(data)))):
        part = _subset(data, positions)
        part_problems = _prepare(model, part)[2]
        if part_problems:
            grouped.update((offset + position, found) for position, found in _by_row(model, part, part_problems).items())
    return grouped


def _subset(data: pd.DataFrame | list[Any], positions: Sequence[int]) -> pd.DataFrame | list[Any]:
    if isinstance(data, pd.DataFrame):
        return data.iloc[list(positions)].reset_index(drop=True)
    return [data[i] for i in positions]


def _id_value(ids: pa.ChunkedArray | list[Any], position: int) -> Any:
    return ids[position].as_py() if isinstance(ids, pa.ChunkedArray) else ids[position]
