"""The plan's input: the prepared DataFrame, its columns taken out once, by position.

Scope: column access only. The schema builds every served frame with the
training columns in the training order and the training dtypes, so a plan
records the column names once and each call only checks they are the same
(else the plan defers to the reference). Rules:

* :meth:`Table.values` gives exactly what ``frame[cols].values`` gives (a 2-D
  array in pandas' common dtype; strings as objects, missing as NaN); it never
  returns an array the caller may write into the frame through.
* :meth:`Table.vector` gives what ``frame[col].values`` gives (1-D; an
  ExtensionArray for a pandas string column).
* :meth:`Table.frame` gives a DataFrame with those columns, the frame's index
  and dtypes, built from the column arrays (cheaper than ``frame[cols]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .base import Defer


class Table:
    """One call's input frame with cached per-column arrays."""

    __slots__ = ("frame", "_arrays", "_numpy")

    def __init__(self, frame: pd.DataFrame, names: Sequence[str]) -> None:
        if len(frame.columns) != len(names) or list(frame.columns) != list(names):
            raise Defer("the frame's columns are not the ones the plan was built for")
        self.frame = frame
        self._arrays: dict[int, Any] = {}
        self._numpy: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.frame)

    def array(self, position: int) -> Any:
        """The column's own array (ndarray or pandas ExtensionArray), shared with the frame: read only."""
        found = self._arrays.get(position)
        if found is None:
            getter = getattr(self.frame, "_get_column_array", None)
            found = getter(position) if getter is not None else self.frame.iloc[:, position].array
            self._arrays[position] = found
        return found

    def numpy(self, position: int) -> np.ndarray:
        """The column as ``DataFrame.values`` shows it (object for strings, NaN for missing), read only."""
        found = self._numpy.get(position)
        if found is None:
            column = self.array(position)
            found = column if isinstance(column, np.ndarray) else column.to_numpy(dtype=object)
            self._numpy[position] = found
        return found

    def values(self, positions: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """``frame[cols].values``: a new 2-D array of ``dtype`` (the common dtype recorded at build)."""
        out = np.empty((len(self.frame), len(positions)), dtype=dtype)
        for j, position in enumerate(positions):
            out[:, j] = self.numpy(position)
        return out

    def vector(self, position: int) -> Any:
        """``frame[col].values``: a copy, so a step that writes into its input cannot change the frame."""
        return self.array(position).copy()

    def frame_of(self, positions: Sequence[int]) -> pd.DataFrame:
        """``frame[cols]``, built from the column arrays."""
        names = self.frame.columns
        return pd.DataFrame({names[p]: self.array(p).copy() for p in positions}, index=self.frame.index, copy=False)

    def series(self, position: int) -> pd.Series:
        """``frame[col]``, built from the column array."""
        return pd.Series(self.array(position).copy(), index=self.frame.index, name=self.frame.columns[position], copy=False)
