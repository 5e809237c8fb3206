"""One chunk: validated by the model's schema, its valid rows predicted, its invalid ones kept with their problems."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import SchemaError
from ..model import Model
from ._chunks import Chunk, Scored
from ._reader import parse


def score_chunk(model: Model, chunk: Chunk, id_column: str | None, probabilities: bool) -> Scored:
    """Validate a chunk with the model's schema, predict its valid rows, and collect the others' problems."""
    data, ids, kept, rejects = parse(chunk, model.schema, id_column)
    frame, problems = _prepare(model, data) if len(data) else (None, [])
    invalid = _by_row(model, data, problems) if problems else {}
    if invalid:
        good = [position for position in range(len(data)) if position not in invalid]
        frame = model.prepare(_subset(data, good))[0] if good else None
        rejects.update((kept[position], found) for position, found in invalid.items())
    valid = [position for position in range(len(chunk.rows)) if position not in rejects] if rejects else None
    predictions: list[Any] = []
    proba = None
    if frame is not None:
        if probabilities and model.has_proba:
            predictions, rows = model.predict_and_proba_frame(frame)
            proba = np.asarray(rows, dtype=float)
        else:
            predictions = model.predict_frame(frame)
    return Scored(
        rows=chunk.rows if valid is None else chunk.rows[valid],
        ids=ids if ids is None or valid is None else (ids.take(valid) if isinstance(ids, pa.ChunkedArray) else [ids[i] for i in valid]),
        predictions=predictions,
        probabilities=proba,
        rejects=[
            (int(chunk.rows[position]), None if ids is None else _id_value(ids, position), problem)
            for position in sorted(rejects)
            for problem in rejects[position]
        ],
    )


def _prepare(model: Model, data: pd.DataFrame | list[Any]) -> tuple[pd.DataFrame | None, list[dict[str, Any]]]:
    """The prepared frame, or None and the schema's problems."""
    try:
        return model.prepare(data)[0], []
    except SchemaError as exc:
        return None, exc.problems


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
        _, part_problems = _prepare(model, part)
        if part_problems:
            grouped.update((offset + position, found) for position, found in _by_row(model, part, part_problems).items())
    return grouped


def _subset(data: pd.DataFrame | list[Any], positions: Sequence[int]) -> pd.DataFrame | list[Any]:
    if isinstance(data, pd.DataFrame):
        return data.iloc[list(positions)].reset_index(drop=True)
    return [data[i] for i in positions]


def _id_value(ids: pa.ChunkedArray | list[Any], position: int) -> Any:
    return ids[position].as_py() if isinstance(ids, pa.ChunkedArray) else ids[position]
