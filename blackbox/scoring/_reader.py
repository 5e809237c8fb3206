"""Reading an input file chunk by chunk, with the columns the schema asks for and the types it gives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ..errors import SchemaError, UsageError, problem
from ..schema import Field, Schema
from ._chunks import Chunk

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_BLOCK_BYTES = 1 << 20  # Arrow's CSV reader reads ~35 blocks ahead: this bounds that to ~36 MB
_BOOLEANS = {"true": True, "false": False}
_BOOLEAN_WORDS = pa.array(list(_BOOLEANS))
_FAST_DTYPES = {"integer": ("int64", pa.int64()), "number": ("float64", pa.float64()), "boolean": ("bool", pa.bool_())}


def format_of(path: Path, given: str | None) -> str:
    if given is not None:
        if given not in FORMATS.values():
            raise UsageError(f"Unknown format {given!r}; use one of {sorted(set(FORMATS.values()))}.")
        return given
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise UsageError(
            f"Cannot tell the format of {str(path)!r} from its extension ({', '.join(FORMATS)}); pass input_format='csv', 'parquet' or 'jsonl'.",
            options={"input_format": "csv|parquet|jsonl"},
        ) from None


class Source:
    """An input file read chunk by chunk, with exactly the columns scoring needs."""

    def __init__(self, path: Path, fmt: str, schema: Schema, id_column: str | None, chunk_size: int) -> None:
        self.path, self.format, self.chunk_size, self.id_column = path, fmt, chunk_size, id_column
        self.columns = list(dict.fromkeys(([id_column] if id_column else []) + schema.columns))
        self._nullable = {field.name for field in schema.fields if field.nullable}
        self.size = path.stat().st_size
        self.id_type = pa.string()
        self._total = self.size  # bytes, or rows for Parquet
        self._done = 0
        if fmt == "parquet" and self.size:
            file = self._read(pq.ParquetFile, path)
            self._require(file.schema_arrow.names)
            self._total = file.metadata.num_rows
            if id_column:
                self.id_type = file.schema_arrow.field(id_column).type
        elif fmt == "csv" and self.size:
            self._require(self._read(pa_csv.open_csv, path, read_options=pa_csv.ReadOptions(block_size=_BLOCK_BYTES)).schema.names)

    def chunks(self) -> Iterator[Chunk]:
        """The input's records, ``chunk_size`` at a time (the last chunk may be shorter)."""
        if not self.size:
            return
        if self.format == "jsonl":
            yield from self._jsonl_chunks()
            return
        start = 0
        for table in _rebatch(self._batches(), self.chunk_size):
            start += table.num_rows
            if self.format == "parquet":
                self._done = start
            yield Chunk(np.arange(start - table.num_rows + 1, start + 1), table)

    def fraction(self) -> float:
        """How much of the input has been read, from 0 to 1."""
        return min(self._done / self._total, 1.0) if self._total else 1.0

    def _batches(self) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            batches = self._read(pq.ParquetFile, self.path).iter_batches(batch_size=self.chunk_size, columns=self.columns)
            while (batch := self._read(next, batches, None)) is not None:
                yield batch
            return
        with pa.OSFile(str(self.path)) as raw:
            reader = self._read(
                pa_csv.open_csv,
                raw,
                read_options=pa_csv.ReadOptions(block_size=_BLOCK_BYTES),
                convert_options=pa_csv.ConvertOptions(
                    column_types=dict.fromkeys(self.columns, pa.string()),
                    include_columns=self.columns,
                    strings_can_be_null=True,
                    null_values=[""],
                    quoted_strings_can_be_null=False,
                ),
            )
            while (batch := self._read(next, reader, None)) is not None:
                self._done = raw.tell()  # the reader reads a few blocks ahead: close enough for progress
                yield batch

    def _jsonl_chunks(self) -> Iterator[Chunk]:
        with open(self.path, "rb") as f:
            rows: list[int] = []
            lines: list[bytes] = []
            for number, line in enumerate(f, 1):
                if line.strip():
                    rows.append(number)
                    lines.append(line)
                if len(lines) == self.chunk_size:
                    self._done = f.tell()
                    yield Chunk(np.asarray(rows), lines)
                    rows, lines = [], []
            self._done = self.size
            if lines:
                yield Chunk(np.asarray(rows), lines)

    def _require(self, names: list[str]) -> None:
        missing = [name for name in self.columns if name not in names]
        if missing:
            what = "the id column and the model's inputs" if self.id_column else "the model's inputs"
            raise SchemaError(
                f"{str(self.path)!r} lacks column(s) {', '.join(map(repr, missing[:5]))}"
                f"{' and more' if len(missing) > 5 else ''}, which {what} need ({', '.join(self.columns)}). "
                "Add them (names match exactly), or score another file."
                + (" A row may leave them empty (the model fills them in, with a null_imputed warning), but a file "
                   "without the whole column is more likely the wrong file: add it empty to score this one."
                   if all(name in self._nullable for name in missing) else ""),
                [problem(None, name, "missing", "a column", "no such column") for name in missing],
            )

    def _read(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a reader; a file it cannot read is bad input data (exit 9), not a crash."""
        try:
            return function(*args, **kwargs)
        except (pa.ArrowException, OSError) as exc:
            raise SchemaError(
                f"Cannot read {str(self.path)!r} as {self.format.upper()}: {exc}. Fix the file or pass the right input_format.",
                options={"input_format": None},
            ) from None


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Tables of exactly ``size`` rows (the last one shorter), whatever sizes the reader produced.

    Each column is one contiguous array: pandas and the pipeline's string
    operations work a little faster on one array than on the reader's pieces.
    """
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == size:
                yield pa.Table.from_batches(pending).combine_chunks()
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending).combine_chunks()


def parse(
    chunk: Chunk, schema: Schema, id_column: str | None
) -> tuple[pd.DataFrame | list[Any], pa.ChunkedArray | list[Any] | None, list[int], dict[int, list[dict[str, Any]]]]:
    """The chunk as :meth:`Model.prepare` takes it, its ids, which positions it keeps, and early rejects."""
    if isinstance(chunk.records, pa.Table):
        table = chunk.records
        frame = pd.DataFrame({f.name: _column(f, table.column(f.name)) for f in schema.fields})
        return frame, table.column(id_column) if id_column else None, list(range(table.num_rows)), {}
    records: list[Any] = []
    kept: list[int] = []
    rejects: dict[int, list[dict[str, Any]]] = {}
    for position, line in enumerate(chunk.records):
        try:
            records.append(json.loads(line))
            kept.append(position)
        except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 and bad JSON
            reason = str(exc)[:80]
            rejects[position] = [problem(None, None, "invalid_json", "a JSON object", reason)]
            records.append(None)
    ids = [record.get(id_column) if isinstance(record, dict) else None for record in records] if id_column else None
    return [records[i] for i in kept], ids, kept, rejects


def _column(field: Field, column: pa.ChunkedArray) -> Any:
    """One input column for the schema: text becomes numbers only where the schema has numbers."""
    if not _is_text(column.type):
        return column.to_pandas()
    fast = _FAST_DTYPES.get(field.kind)
    if fast is not None and field.dtype == fast[0]:
        typed = _cast(column, field.kind, fast[1])
        if typed is not None and (field.kind == "number" or typed.null_count == 0):
            return typed.to_numpy()
    if field.kind in ("string", "category"):  # kept in Arrow: the schema checks these column-wise
        return pd.Series(pd.arrays.ArrowStringArray(column))
    return _text_values(field, column)


def _text_values(field: Field, column: pa.ChunkedArray) -> pd.Series:
    """The slow, exact reading of a text column: the schema judges each value (numeric text is a number to it).

    Text has no booleans, so ``true``/``false`` in any ASCII case are the booleans
    here; any other text stays text, which the schema reports with its row.
    """
    values = column.to_numpy(zero_copy_only=False)
    if field.kind == "boolean":
        values = [_BOOLEANS.get(v.lower(), v) if isinstance(v, str) and v.isascii() else v for v in values]
    return pd.Series(values, dtype=object)


def _cast(column: pa.ChunkedArray, kind: str, target: pa.DataType) -> pa.ChunkedArray | None:
    """``column`` parsed by Arrow when that reads every value as the schema would; else None (the schema judges each value).

    Arrow's number parsers are stricter than the schema's except for a few
    spellings, ruled out around the cast: hexadecimal integers, ``1``/``0`` as
    booleans, and ``nan``/``inf`` (the schema reports those as not finite).
    """
    present = column.drop_null()
    # Plain comparisons, not ignore_case matching: that runs a regex engine, ~10x slower on a column.
    if kind == "boolean" and pc.all(pc.is_in(pc.ascii_lower(present), value_set=_BOOLEAN_WORDS)).as_py() is False:
        return None
    if kind == "integer" and pc.any(pc.or_(pc.match_substring(present, "x"), pc.match_substring(present, "X"))).as_py():
        return None
    try:
        typed = pc.cast(column, target)
    except pa.ArrowInvalid:  # e.g. "abc", or an integer beyond int64: the schema says which row
        return None
    if kind == "number" and pc.all(pc.is_finite(typed)).as_py() is False:
        return None
    return typed


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))
