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
  index and dtypes, built from the column arrays (cheaper than ``frame[cols]``):
  the same blocks ``frame[cols]`` holds (one 2-D block for columns of one numpy
  dtype, one block per extension array), since a user step may look at them.

Columns and frames are on the path of every call, so each is built the
cheapest way that gives the same objects (measured on one record: a pandas
string column ~20 us through ``pd.array``, ~5 us from its Arrow array, up to
64 rows; a frame ~15 us through ``DataFrame._from_arrays``, ~6 us from its
blocks, with pandas' block constructors, used once a frame built with them
at first use is seen to equal the public constructor's), and the general
way otherwise.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .base import Defer

if TYPE_CHECKING:
    from ..schema import Schema

_FROM_ARRAYS = getattr(pd.DataFrame, "_from_arrays", None)


@functools.cache
def _internals() -> Any:
    """pandas' own block constructors (a frame of one block per dtype group without regrouping), once they are seen
    to build what pandas' public constructor builds; None in a pandas where they do not (the general constructor then)."""
    try:
        blocks = importlib.import_module("pandas.core.internals.blocks")
        internals = types.SimpleNamespace(
            new_block=blocks.new_block, get_block_type=blocks.get_block_type, ExtensionBlock=blocks.ExtensionBlock,
            BlockManager=importlib.import_module("pandas.core.internals").BlockManager,
            BlockPlacement=importlib.import_module("pandas._libs.internals").BlockPlacement,
            from_manager=getattr(pd.DataFrame, "_from_mgr"),  # noqa: B009 - private, not in the stubs
        )
        index = pd.RangeIndex(2)
        for arrays in ([np.array([1, 2]), np.array([3, 4])], [pd.array(["a", None], dtype="str")]):
            names = [f"c{i}" for i in range(len(arrays))]
            got = _blocks_frame(internals, arrays, pd.Index(names), index)
            expected = pd.DataFrame(dict(zip(names, arrays)), index=index)
            if got is None or not (got.equals(expected) and list(got.dtypes) == list(expected.dtypes)):
                return None
    except Exception:  # noqa: BLE001 - another pandas: the general constructor then
        return None
    return internals

try:  # a pandas string column of Arrow storage, built from its Arrow array (pd.array's own last step)
    import pyarrow as pa
    from pandas.core.arrays.string_arrow import ArrowStringArray
except ImportError:  # pragma: no cover - no pyarrow: pandas' strings are Python objects, built by pd.array
    pa = None

_SMALL = 64
"""Rows up to which a string column is checked value by value for the direct Arrow build (pd.array's loop is C)."""


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
            values = self._values[position]
            arrow = _arrow_string_dtype(self.schema.fields[position].dtype)
            found = _arrow_strings(values, arrow) if arrow is not None and len(values) <= _SMALL else None
            if found is None:
                found = self.schema.column(position, values, self.index)
            self._built[position] = found
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


def _arrow_strings(values: Any, dtype: pd.StringDtype) -> Any:
    """What ``pd.array(values, dtype=dtype)`` gives for an Arrow string ``dtype`` when every value is a str or None, else None.

    ``ArrowStringArray._from_sequence`` turns each value into a string or a
    missing marker (``ensure_string_array``, nothing to do here) and builds
    the array from ``pa.array(..., large_string, from_pandas=True)``: that
    last step alone.
    """
    if not all(type(v) is str or v is None for v in values):
        return None
    return ArrowStringArray(pa.array(values, type=pa.large_string(), from_pandas=True), dtype=dtype)  # type: ignore[call-arg]


@functools.lru_cache(maxsize=64)
def _arrow_string_dtype(dtype: str) -> pd.StringDtype | None:
    """The pandas dtype for a schema dtype when it is pandas' string dtype of Arrow storage, else None."""
    built = pd.api.types.pandas_dtype(dtype)
    return built if pa is not None and isinstance(built, pd.StringDtype) and built.storage == "pyarrow" else None


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
        if len(positions) == 1:
            column = self.numpy(positions[0])
            if column.dtype == dtype:  # the same values in a new (rows, 1) array
                one: np.ndarray = column.reshape(-1, 1).copy()
                return one
        out = np.empty((len(self), len(positions)), dtype=dtype)
        for j, position in enumerate(positions):
            out[:, j] = self.numpy(position)
        return out

    def vector(self, position: int) -> Any:
        """``frame[col].values``: a copy, so a step that writes into its input cannot change the frame."""
        return self.array(position).copy()

    def frame_of(self, positions: Sequence[int]) -> pd.DataFrame:
        """``frame[cols]``, built from copies of the column arrays as they are (no dtype inference, no checks).

        From its blocks when they are one numpy dtype or all extension arrays
        (:func:`_from_blocks`), else ``DataFrame._from_arrays`` (pandas' own
        constructor for exactly that, ~10x cheaper than a dict) where pandas
        has it, else the public one.
        """
        columns = _column_index(tuple(self.names[p] for p in positions))
        built = _from_blocks([self.array(p) for p in positions], columns, self.index)
        if built is not None:
            return built
        arrays = [self.array(p).copy() for p in positions]
        if _FROM_ARRAYS is not None:
            frame: pd.DataFrame = _FROM_ARRAYS(arrays, columns=columns, index=self.index, verify_integrity=False)
            return frame
        return pd.DataFrame(dict(zip(columns, arrays)), index=self.index, copy=False)

    def series(self, position: int) -> pd.Series:
        """``frame[col]``, built from the column array."""
        return pd.Series(self.array(position).copy(), index=self.index, name=self.names[position], copy=False)


def _from_blocks(arrays: list[Any], columns: pd.Index, index: pd.Index) -> pd.DataFrame | None:
    """The frame of copies of ``arrays`` with the blocks ``frame[cols]`` holds, or None when they take regrouping.

    Columns of one numpy dtype are one C-ordered 2-D block (a copy, as
    ``np.vstack`` makes it); extension arrays one block each, as pandas keeps them.
    """
    internals = _internals()
    return None if internals is None else _blocks_frame(internals, arrays, columns, index)


def _blocks_frame(internals: Any, arrays: list[Any], columns: pd.Index, index: pd.Index) -> pd.DataFrame | None:
    first = arrays[0]
    if type(first) is np.ndarray:
        if first.dtype.kind not in "biufO" or any(type(a) is not np.ndarray or a.dtype != first.dtype for a in arrays):
            return None
        blocks = [internals.new_block(np.vstack(arrays), internals.BlockPlacement(slice(0, len(arrays))), ndim=2)]
    elif all(not isinstance(a, np.ndarray) and internals.get_block_type(a.dtype) is internals.ExtensionBlock for a in arrays):
        blocks = [internals.new_block(a.copy(), internals.BlockPlacement(slice(i, i + 1)), ndim=2) for i, a in enumerate(arrays)]
    else:
        return None
    manager = internals.BlockManager(tuple(blocks), [columns, index], verify_integrity=False)
    frame: pd.DataFrame = internals.from_manager(manager, axes=manager.axes)
    return frame
