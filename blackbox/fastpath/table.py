"""The plan's input: the prepared DataFrame, or the schema-checked records before any DataFrame is built.

Scope: column access only. The schema builds every served frame with the
training columns in the training order and the training dtypes, so a plan
records the column names once and each call only checks they are the same
(else the plan defers to the reference). A plan takes either form:

* a DataFrame :meth:`Schema.to_frame` prepared (the server's batches);
* :class:`Prepared`: records checked by :meth:`Schema.checked`, each column
  built only when a step reads it, exactly as ``to_frame`` would build it
  (:meth:`Schema.column`), and the DataFrame itself only when the reference
  must run (:meth:`Prepared.frame`). A string column a compiled step reads is
  never built at all: its values are already what ``DataFrame.values`` shows.

Rules (the same answers for both forms, proved at save on both):

* :meth:`Table.values` gives exactly what ``frame[cols].values`` gives (a 2-D
  array in pandas' common dtype; strings as objects, missing as NaN); it never
  returns an array the caller may write into the frame through.
* :meth:`Table.vector` gives what ``frame[col].values`` gives (1-D; an
  ExtensionArray for a pandas string column).
* :meth:`Table.frame_of` gives a DataFrame with those columns, the frame's
  index and dtypes, built from the column arrays (cheaper than ``frame[cols]``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .base import Defer

if TYPE_CHECKING:
    from ..schema import Schema

_FROM_ARRAYS = getattr(pd.DataFrame, "_from_arrays", None)


class Prepared:
    """Records the schema accepted, as columns built on first use; ``warnings`` and ``flagged`` are the schema's."""

    __slots__ = ("schema", "index", "warnings", "flagged", "_values", "_built")

    def __init__(self, schema: Schema, records: Any, *, strict: bool = False) -> None:
        self.schema = schema
        self._values, self.index, self.warnings, self.flagged = schema.checked(records, strict=strict)
        self._built: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def joined(cls, parts: Sequence[Prepared]) -> Prepared:
        """Several inputs checked apart (one per request of a server batch) as one, rows in order.

        The same as checking all their records at once: the schema checks and
        converts each value on its own, so only the index (0..n-1) and the
        warnings' row numbers would differ; ``warnings`` and ``flagged`` stay each part's own.
        """
        first = parts[0]
        joined = cls.__new__(cls)
        joined.schema, joined.warnings, joined.flagged, joined._built = first.schema, [], {}, {}
        joined._values = [
            [v for part in parts for v in part._values[position]]
            if all(isinstance(part._values[position], list) for part in parts)
            else np.concatenate([np.asarray(part._values[position], dtype=object) for part in parts])
            for position in range(len(first._values))
        ]
        joined.index = pd.RangeIndex(sum(len(part) for part in parts))
        return joined

    @property
    def columns(self) -> list[str]:
        return self.schema.columns

    def _column(self, position: int) -> Any:
        """What ``to_frame`` puts in the frame for this field (an array, or an object Series)."""
        found = self._built.get(position)
        if found is None:
            found = self._built[position] = self.schema.column(position, self._values[position], self.index)
        return found

    def array(self, position: int) -> Any:
        """The column's array as the frame would hold it (ndarray or ExtensionArray)."""
        column = self._column(position)
        return column.to_numpy() if isinstance(column, pd.Series) else column

    def numpy(self, position: int) -> np.ndarray:
        """The column as ``DataFrame.values`` shows it; a pandas string column's values taken as they are."""
        if _nan_strings(self.schema.fields[position].dtype):  # str or None: what the string array's to_numpy(object) gives
            return np.array([np.nan if v is None else v for v in self._values[position]], dtype=object)
        column = self.array(position)
        return column if isinstance(column, np.ndarray) else column.to_numpy(dtype=object)

    def frame(self) -> pd.DataFrame:
        """The DataFrame :meth:`Schema.to_frame` would have built from the same records."""
        return pd.DataFrame({name: self._column(p) for p, name in enumerate(self.columns)}, index=self.index)


@functools.lru_cache(maxsize=256)
def _column_index(names: tuple[str, ...]) -> pd.Index:
    """The columns Index a DataFrame of these names gets (an Index is immutable: frames may share one)."""
    return pd.Index(list(names))


@functools.lru_cache(maxsize=64)
def _nan_strings(dtype: str) -> bool:
    """Whether a schema dtype is pandas' string dtype with NaN for missing (``"str"`` in pandas 3)."""
    built = pd.api.types.pandas_dtype(dtype)
    return isinstance(built, pd.StringDtype) and isinstance(built.na_value, float)


def as_frame(prepared: Any) -> pd.DataFrame:
    """A DataFrame for the reference: the frame itself, or the one the prepared records make."""
    return prepared.frame() if isinstance(prepared, Prepared) else prepared


class Table:
    """One call's input (a frame or :class:`Prepared`) with cached per-column arrays."""

    __slots__ = ("source", "names", "index", "_arrays", "_numpy")

    def __init__(self, source: pd.DataFrame | Prepared, names: Sequence[str]) -> None:
        columns = source.columns
        if len(columns) != len(names) or list(columns) != list(names):
            raise Defer("the input's columns are not the ones the plan was built for")
        self.source = source
        self.names = list(columns)
        self.index = source.index
        self._arrays: dict[int, Any] = {}
        self._numpy: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    def array(self, position: int) -> Any:
        """The column's own array (ndarray or pandas ExtensionArray), shared with the input: read only."""
        found = self._arrays.get(position)
        if found is None:
            source = self.source
            if isinstance(source, Prepared):
                found = source.array(position)
            else:
                getter = getattr(source, "_get_column_array", None)
                found = getter(position) if getter is not None else source.iloc[:, position].array
            self._arrays[position] = found
        return found

    def numpy(self, position: int) -> np.ndarray:
        """The column as ``DataFrame.values`` shows it (object for strings, NaN for missing), read only."""
        found = self._numpy.get(position)
        if found is None:
            if isinstance(self.source, Prepared):
                found = self.source.numpy(position)
            else:
                column = self.array(position)
                found = column if isinstance(column, np.ndarray) else column.to_numpy(dtype=object)
            self._numpy[position] = found
        return found

    def values(self, positions: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """``frame[cols].values``: a new 2-D array of ``dtype`` (the common dtype recorded at build)."""
        out = np.empty((len(self), len(positions)), dtype=dtype)
        for j, position in enumerate(positions):
            out[:, j] = self.numpy(position)
        return out

    def vector(self, position: int) -> Any:
        """``frame[col].values``: a copy, so a step that writes into its input cannot change the frame."""
        return self.array(position).copy()

    def frame_of(self, positions: Sequence[int]) -> pd.DataFrame:
        """``frame[cols]``, built from copies of the column arrays as they are (no dtype inference, no checks).

        ``DataFrame._from_arrays`` (pandas' own constructor for exactly that,
        ~10x cheaper than a dict) where pandas has it, else the public one.
        """
        arrays = [self.array(p).copy() for p in positions]
        columns = _column_index(tuple(self.names[p] for p in positions))
        if _FROM_ARRAYS is not None:
            frame: pd.DataFrame = _FROM_ARRAYS(arrays, columns=columns, index=self.index, verify_integrity=False)
            return frame
        return pd.DataFrame(dict(zip(columns, arrays)), index=self.index, copy=False)

    def series(self, position: int) -> pd.Series:
        """``frame[col]``, built from the column array."""
        return pd.Series(self.array(position).copy(), index=self.index, name=self.names[position], copy=False)
