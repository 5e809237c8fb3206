"""What flows through a scoring run: chunks of input records, and what scoring one of them gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Chunk:
    """Consecutive input records: their 1-based row numbers and, as read, a table or JSON lines."""

    rows: np.ndarray
    records: pa.Table | list[bytes]


@dataclass(frozen=True)
class Scored:
    """One chunk's predictions for its valid rows, and the problems of its invalid ones."""

    rows: np.ndarray
    ids: pa.ChunkedArray | list[Any] | None
    predictions: list[Any]
    probabilities: np.ndarray | None
    warnings: list[str | None]  # each row's schema warnings (``field:issue;...``), None for a row without
    rejects: list[tuple[int, Any, dict[str, Any]]]  # (row, id, problem), by row
