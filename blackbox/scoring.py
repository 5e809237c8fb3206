"""Batch scoring: a CSV, Parquet or JSON Lines file in, predictions out, in bounded memory.

Scope: streaming an input file through a loaded :class:`~blackbox.model.Model`
chunk by chunk, on this process or on Dask workers, and publishing the output
atomically. Not here: HTTP, the artifact format, training.

Rules callers rely on:

* Columns are read as the model's schema says, never by type guessing: CSV cells
  are text, turned into numbers only where the schema has a number, so a code
  like ``"01234"`` stays a string. An empty CSV cell is a missing value; a quoted
  empty string ``""`` is an empty string; ``true``/``false`` (any case) are
  booleans. Parquet columns keep their types; JSON Lines records are validated
  exactly as the server validates JSON records.
* Validation is :meth:`Model.prepare`, the server's code. A row that fails it is
  a *reject*: with ``on_error="fail"`` (the default) the run stops with a
  :class:`SchemaError` (exit 9) and publishes nothing; with ``on_error="skip"``
  the other rows are scored and every problem of every rejected row goes to the
  rejects file. A problem that no row owns (a column of the wrong type) always
  fails the run, naming the column.
* ``row`` (in the output and the rejects file) is the 1-based number of the
  record in the input: the N-th data row after a CSV header, the N-th Parquet
  row, the line number in a JSON Lines file (blank lines are not records).
* The output and its rejects file (CSV, header-only when nothing was rejected)
  are written to temporary files beside their destinations and renamed only
  when the whole input has been scored, rejects first, output last: an
  interrupted run leaves no file at the output path. Existing files are refused
  unless ``overwrite``.
* Output columns: ``row``, the id column if given, ``prediction``, ``proba_<class>``
  per class (when the model has probabilities, unless turned off), ``model_name``,
  ``model_version``, ``model_sha256``. The same input and artifact give the same
  bytes; CSV and JSON Lines bytes do not depend on the chunk size either.
* Empty input (a 0-byte file, a header-only CSV, no JSON lines, a 0-row
  Parquet file) scores 0 rows: success with a header-only (or empty) output.
* With ``engine="dask"`` the driver reads and writes; Dask workers validate and
  predict, each loading the artifact through :func:`blackbox.load` once per
  worker process with the trust policy the driver resolved. The artifact path
  must be readable by the workers.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import persist
from .atomic import atomic_writer
from .errors import IntegrityError, SchemaError, UsageError
from .model import Model
from .schema import Field, Schema
from .signing import Keyring, key_id

__all__ = ["DEFAULT_CHUNK_ROWS", "FORMATS", "PARTIAL_SUCCESS", "Summary", "dask_client", "score"]

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
DEFAULT_CHUNK_ROWS = 50_000
PARTIAL_SUCCESS = 10
"""Exit code of a run that scored some rows and rejected others (not an error: nothing failed)."""
LOG_EVERY = 10.0
"""Seconds between progress lines when stderr is not a terminal."""
LOCAL_WORKERS = 2
REJECT_COLUMNS = ("field", "issue", "expected", "received")
_BLOCK_BYTES = 1 << 20  # Arrow's CSV reader reads ~35 blocks ahead: this bounds that to ~36 MB
# Text the fast, vectorised conversion takes; anything else goes to the schema value by value.
_TEXT_PATTERNS = {
    "integer": r"^[+-]?[0-9]+$",
    "number": r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$",
    "boolean": r"^(true|false)$",
}
_FAST_DTYPES = {"integer": ("int64", pa.int64()), "number": ("float64", pa.float64()), "boolean": ("bool", pa.bool_())}


@dataclass(frozen=True)
class Summary:
    """What a run did; ``exit_code`` is 0, or PARTIAL_SUCCESS when rows were rejected."""

    rows_read: int
    rows_scored: int
    rows_rejected: int
    seconds: float
    output: Path
    rejects: Path
    model: str
    worker_loads: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    @property
    def exit_code(self) -> int:
        return PARTIAL_SUCCESS if self.rows_rejected else 0

    def describe(self) -> str:
        lines = [
            f"scored {self.rows_scored:,} of {self.rows_read:,} rows ({self.rows_rejected:,} rejected) "
            f"in {self.seconds:.2f} s ({self.rows_per_second:,.0f} rows/s) with {self.model}",
            f"  output   {self.output}",
            f"  rejects  {self.rejects}",
        ]
        if self.worker_loads:
            loads = ", ".join(f"{worker} {count}" for worker, count in sorted(self.worker_loads.items()))
            lines.append(f"  model loads per Dask worker: {loads}")
        return "\n".join(lines)


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
    rejects: list[tuple[int, Any, dict[str, Any]]]  # (row, id, problem), by row


def score(
    artifact: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    input_format: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_ROWS,
    id_column: str | None = None,
    rejects: str | os.PathLike[str] | None = None,
    on_error: str = "fail",
    overwrite: bool = False,
    engine: str = "local",
    scheduler: str | None = None,
    trusted_keys: Sequence[str | os.PathLike[str]] | None = None,
    allow_unsigned: bool = False,
    probabilities: bool = True,
    progress: bool = False,
) -> Summary:
    """Score every record of ``input`` with the artifact's model and publish ``output`` atomically.

    :param input_format: ``csv``, ``parquet`` or ``jsonl``; default: from the extension.
        The output has the format of its own extension, else the input's.
    :param rejects: where invalid rows are listed; default: ``OUTPUT_STEM.rejects.csv`` beside the output.
    :param on_error: ``fail`` stops at the first invalid row; ``skip`` rejects it and goes on.
    :param engine: ``local`` (this process) or ``dask`` (``scheduler``, or a local cluster).
    :param probabilities: write ``proba_<class>`` columns; without them a forest runs once, not twice.
    :param progress: report progress on stderr (a bar on a terminal, log lines otherwise).
    """
    started = time.perf_counter()
    input, output = Path(input), Path(output)
    rejects = Path(rejects) if rejects is not None else output.with_name(f"{output.stem}.rejects.csv")
    source_format = _format_of(input, input_format)
    output_format = FORMATS.get(output.suffix.lower(), source_format)
    _check_options(input, output, rejects, chunk_size, on_error, overwrite, engine, scheduler)
    keyring = Keyring.from_paths(trusted_keys) if trusted_keys else Keyring.from_environment()
    model = persist.load(artifact, trusted_keys=keyring, allow_unsigned=allow_unsigned)
    source = _Source(input, source_format, model.schema, id_column, chunk_size)
    spec = _OutputSpec(model, id_column, source.id_type, probabilities)
    read = rejected = 0
    meter = _Progress(sys.stderr) if progress else None
    with contextlib.ExitStack() as stack:
        if engine == "dask":
            client = stack.enter_context(dask_client(scheduler))
            remote = _WorkerArtifact.of(Path(artifact).resolve(), model.sha256, keyring, allow_unsigned)
            results = _dask_results(client, source.chunks(), remote, id_column, bool(spec.proba_names))
        else:
            results = (score_chunk(model, chunk, id_column, bool(spec.proba_names)) for chunk in source.chunks())
        # Left in reverse order: the writers finish their files, the rejects file is renamed into place, the output last.
        with (
            atomic_writer(output) as out_file,
            atomic_writer(rejects) as rejects_file,
            _writer(output_format, out_file, spec) as writer,
            _RejectsWriter(rejects_file, id_column) as rejects_writer,
        ):
            for scored in results:
                if scored.rejects and on_error == "fail":
                    raise _first_reject(scored.rejects, input, output)
                writer.write(scored)
                rejects_writer.write(scored.rejects)
                bad = len({row for row, _, _ in scored.rejects})
                read += len(scored.rows) + bad
                rejected += bad
                if meter:
                    meter.update(read, rejected, source.fraction())
        loads = client.run(_worker_loads, remote) if engine == "dask" else {}
    if meter:
        meter.close()
    label = f"{model.name} {model.version} (sha256 {model.sha256[:12]})"
    return Summary(read, read - rejected, rejected, time.perf_counter() - started, output, rejects, label, loads)


def score_chunk(model: Model, chunk: Chunk, id_column: str | None, probabilities: bool) -> Scored:
    """Validate a chunk with the model's schema, predict its valid rows, and collect the others' problems."""
    data, ids, kept, rejects = _parse(chunk, model.schema, id_column)
    frame, problems = _prepare(model, data) if len(data) else (None, [])
    invalid = _by_row(model, data, problems) if problems else {}
    if invalid:
        good = [position for position in range(len(data)) if position not in invalid]
        frame = model.prepare(_subset(data, good))[0] if good else None
        rejects.update((kept[position], found) for position, found in invalid.items())
    valid = [position for position in range(len(chunk.rows)) if position not in rejects]
    predictions: list[Any] = []
    proba = None
    if frame is not None:
        if probabilities and model.has_proba:
            predictions, rows = model.predict_and_proba_frame(frame)
            proba = np.asarray(rows, dtype=float)
        else:
            predictions = model.predict_frame(frame)
    return Scored(
        rows=chunk.rows[valid],
        ids=None if ids is None else (ids.take(valid) if isinstance(ids, pa.ChunkedArray) else [ids[i] for i in valid]),
        predictions=predictions,
        probabilities=proba,
        rejects=[
            (int(chunk.rows[position]), None if ids is None else _id_value(ids, position), problem)
            for position in sorted(rejects)
            for problem in rejects[position]
        ],
    )


@contextlib.contextmanager
def dask_client(scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler``, or for a local cluster of worker processes that ends with the block."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("The Dask engine needs Dask, which is not installed: pip install 'blackbox[dask]'.") from None
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            target: Any = stack.enter_context(
                LocalCluster(n_workers=LOCAL_WORKERS, threads_per_worker=1, processes=True, dashboard_address=":0")
            )
        else:
            target = scheduler
        try:
            client = stack.enter_context(Client(target))
        except OSError as exc:
            raise UsageError(f"Cannot reach the Dask scheduler at {scheduler!r}: {exc}. Check --scheduler.") from None
        yield client


# -- options ---------------------------------------------------------------------------------------
def _format_of(path: Path, given: str | None) -> str:
    if given is not None:
        if given not in FORMATS.values():
            raise UsageError(f"Unknown format {given!r}; use one of {sorted(set(FORMATS.values()))}.")
        return given
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise UsageError(
            f"Cannot tell the format of {str(path)!r} from its extension ({', '.join(FORMATS)}); pass --format csv|parquet|jsonl."
        ) from None


def _check_options(
    input: Path, output: Path, rejects: Path, chunk_size: int, on_error: str, overwrite: bool, engine: str, scheduler: str | None
) -> None:
    if on_error not in ("fail", "skip"):
        raise UsageError(f"on_error must be 'fail' or 'skip', not {on_error!r}.")
    if engine not in ("local", "dask"):
        raise UsageError(f"engine must be 'local' or 'dask', not {engine!r}.")
    if scheduler is not None and engine != "dask":
        raise UsageError("--scheduler only applies to --engine dask.")
    if chunk_size < 1:
        raise UsageError(f"The chunk size must be at least 1 row, not {chunk_size}.")
    if len({input.resolve(), output.resolve(), rejects.resolve()}) < 3:
        raise UsageError(f"The input {str(input)!r}, the output {str(output)!r} and the rejects file {str(rejects)!r} must be three different files.")
    for path in (output, rejects):
        if path.exists() and not overwrite:
            raise UsageError(f"{str(path)!r} already exists; pass --overwrite to replace it, or choose another path.")


# -- reading ---------------------------------------------------------------------------------------
class _Source:
    """An input file read chunk by chunk, with exactly the columns scoring needs."""

    def __init__(self, path: Path, fmt: str, schema: Schema, id_column: str | None, chunk_size: int) -> None:
        self.path, self.format, self.chunk_size, self.id_column = path, fmt, chunk_size, id_column
        self.columns = list(dict.fromkeys(([id_column] if id_column else []) + schema.columns))
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
                "Add them (names match exactly), or score another file.",
                [{"row": None, "field": name, "issue": "missing", "expected": "a column", "received": "no such column"} for name in missing],
            )

    def _read(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a reader; a file it cannot read is bad input data (exit 9), not a crash."""
        try:
            return function(*args, **kwargs)
        except (pa.ArrowException, OSError) as exc:
            raise SchemaError(f"Cannot read {str(self.path)!r} as {self.format.upper()}: {exc}. Fix the file or pass the right --format.") from None


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Tables of exactly ``size`` rows (the last one shorter), whatever sizes the reader produced."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            count += take
            batch = batch.slice(take)
            if count == size:
                yield pa.Table.from_batches(pending)
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending)


def _parse(
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
            rejects[position] = [{"row": None, "field": None, "issue": "invalid_json", "expected": "a JSON object", "received": reason}]
            records.append(None)
    ids = [record.get(id_column) if isinstance(record, dict) else None for record in records] if id_column else None
    return [records[i] for i in kept], ids, kept, rejects


def _column(field: Field, column: pa.ChunkedArray) -> Any:
    """One input column for the schema: text becomes numbers only where the schema has numbers."""
    if not _is_text(column.type):
        return column.to_pandas()
    fast = _FAST_DTYPES.get(field.kind)
    if fast is not None and field.dtype == fast[0]:
        present = column.drop_null()
        if pc.all(pc.match_substring_regex(present, _TEXT_PATTERNS[field.kind], ignore_case=True)).as_py() is not False:
            try:
                typed = pc.cast(column, fast[1])
            except pa.ArrowInvalid:  # e.g. an integer beyond int64: the schema says which row
                typed = None
            if typed is not None and (field.kind == "number" or typed.null_count == 0):
                return typed.to_numpy()
    if field.kind in ("string", "category"):  # kept in Arrow: the schema checks these column-wise
        return pd.Series(pd.arrays.ArrowStringArray(column))
    return pd.Series(column.to_numpy(zero_copy_only=False), dtype=object)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


# -- validation ------------------------------------------------------------------------------------
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


def _first_reject(rejects: list[tuple[int, Any, dict[str, Any]]], input: Path, output: Path) -> SchemaError:
    row, _, problem = rejects[0]
    where = f"field {problem['field']!r}: " if problem["field"] is not None else ""
    more = len(rejects) - 1
    return SchemaError(
        f"{str(input)!r} row {row} (1-based): {where}expected {problem['expected']}, got {problem['received']}"
        + (f"; {more} more problem(s) in the same chunk" if more else "")
        + f". Nothing was written to {str(output)!r}. Fix the input, or rerun with --on-error skip to score the "
        "valid rows and list the invalid ones in a rejects file.",
        [{**problem, "row": reject_row} for reject_row, _, problem in rejects],
    )


# -- writing ---------------------------------------------------------------------------------------
class _OutputSpec:
    """The output's columns and their types, fixed before the first row so every chunk matches."""

    def __init__(self, model: Model, id_column: str | None, id_type: pa.DataType, probabilities: bool) -> None:
        classes = model.classes
        self.prediction_type = pa.array(classes).type if classes else pa.float64()
        self.proba_names = [f"proba_{c}" for c in classes] if classes and model.has_proba and probabilities else []
        self.metadata = {"model_name": model.name, "model_version": model.version, "model_sha256": model.sha256}
        self.id_column = id_column
        fields = [("row", pa.int64())] + ([(id_column, id_type)] if id_column else []) + [("prediction", self.prediction_type)]
        fields += [(name, pa.float64()) for name in self.proba_names] + [(name, pa.string()) for name in self.metadata]
        names = [name for name, _ in fields]
        if len(set(names)) < len(names):
            raise UsageError(f"The id column {id_column!r} clashes with an output column ({', '.join(names)}); pass another --id-column.")
        self.schema = pa.schema(fields)

    def table(self, scored: Scored) -> pa.Table:
        n = len(scored.rows)
        columns: list[Any] = [pa.array(scored.rows, pa.int64())]
        if self.id_column:
            columns.append(_id_array(scored.ids, self.schema.field(self.id_column).type))
        columns.append(pa.array(scored.predictions, self.prediction_type))
        columns += [pa.array(scored.probabilities[:, i]) for i in range(len(self.proba_names))]
        columns += [pa.repeat(pa.scalar(value, pa.string()), n) for value in self.metadata.values()]
        return pa.Table.from_arrays(columns, schema=self.schema)


def _id_array(ids: pa.ChunkedArray | list[Any] | None, kind: pa.DataType) -> Any:
    """Ids as read (CSV text, Parquet values); JSON ids as text, JSON-encoded unless they are strings."""
    if isinstance(ids, pa.ChunkedArray):
        return ids
    return pa.array([value if value is None or isinstance(value, str) else json.dumps(value) for value in ids or []], kind)


class _Writer:
    """A file's contents, chunk by chunk; closing finishes the file (also after an error: it is discarded then)."""

    def close(self) -> None:
        """Nothing buffered: each chunk is written whole."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TableWriter(_Writer):
    """CSV or Parquet through Arrow's writers; a CSV header is written even when no row follows."""

    def __init__(self, f: BinaryIO, spec: _OutputSpec, fmt: str) -> None:
        self._spec = spec
        self._writer = pa_csv.CSVWriter(f, spec.schema) if fmt == "csv" else pq.ParquetWriter(f, spec.schema)

    def write(self, scored: Scored) -> None:
        if len(scored.rows):
            self._writer.write_table(self._spec.table(scored))

    def close(self) -> None:
        self._writer.close()


class _JsonLinesWriter(_Writer):
    def __init__(self, f: BinaryIO, spec: _OutputSpec) -> None:
        self._f, self._spec = f, spec

    def write(self, scored: Scored) -> None:
        spec = self._spec
        ids = scored.ids.to_pylist() if isinstance(scored.ids, pa.ChunkedArray) else scored.ids
        probabilities = scored.probabilities.tolist() if scored.probabilities is not None else None
        lines = []
        for i, row in enumerate(scored.rows.tolist()):
            record: dict[str, Any] = {"row": row}
            if spec.id_column:
                record[spec.id_column] = ids[i]
            record["prediction"] = scored.predictions[i]
            if probabilities is not None:
                record.update(zip(spec.proba_names, probabilities[i]))
            record.update(spec.metadata)
            lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str))
        if lines:
            self._f.write(("\n".join(lines) + "\n").encode())


def _writer(fmt: str, f: BinaryIO, spec: _OutputSpec) -> _Writer:
    return _JsonLinesWriter(f, spec) if fmt == "jsonl" else _TableWriter(f, spec, fmt)


class _RejectsWriter(_Writer):
    """The rejects file: CSV, one line per problem of a rejected row."""

    def __init__(self, f: BinaryIO, id_column: str | None) -> None:
        self._text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        self._csv = csv.writer(self._text, lineterminator="\n")
        self._csv.writerow(["row", *([id_column] if id_column else []), *REJECT_COLUMNS])
        self._with_id = id_column is not None

    def write(self, rejects: list[tuple[int, Any, dict[str, Any]]]) -> None:
        for row, id_value, problem in rejects:
            self._csv.writerow([row, *([id_value] if self._with_id else []), *(problem[key] for key in REJECT_COLUMNS)])

    def close(self) -> None:
        self._text.flush()
        self._text.detach()  # the atomic writer owns the file: it fsyncs and renames it


# -- progress --------------------------------------------------------------------------------------
class _Progress:
    """A bar with rows/s and ETA on a terminal (tqdm); a plain line every LOG_EVERY seconds otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = self._logged = time.perf_counter()
        self._bar: Any = None
        if stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(file=stream, unit=" rows", unit_scale=True, dynamic_ncols=True)

    def update(self, rows: int, rejected: int, fraction: float) -> None:
        if self._bar is not None:
            if fraction:
                self._bar.total = max(round(rows / fraction), rows)  # estimated from the bytes read so far
            self._bar.set_postfix(rejected=rejected, refresh=False)
            self._bar.update(rows - self._bar.n)
            return
        now = time.perf_counter()
        if now - self._logged >= LOG_EVERY:
            self._logged = now
            rate = rows / (now - self._started)
            print(f"blackbox score: {rows:,} rows read ({rejected:,} rejected), {rate:,.0f} rows/s, {fraction:.0%} of the input",
                  file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# -- Dask ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _WorkerArtifact:
    """What a worker needs to load the artifact itself, with the driver's trust policy passed by value."""

    path: str
    sha256: str
    keys: tuple[bytes, ...]
    revoked: frozenset[str]
    allow_unsigned: bool

    @classmethod
    def of(cls, path: Path, sha256: str, keyring: Keyring, allow_unsigned: bool) -> _WorkerArtifact:
        raw = tuple(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) for key in keyring.keys.values())
        return cls(str(path), sha256, raw, keyring.revoked, allow_unsigned)

    def load(self) -> Model:
        keys = [Ed25519PublicKey.from_public_bytes(raw) for raw in self.keys]
        keyring = Keyring({key_id(key): key for key in keys}, self.revoked)
        model = persist.load(self.path, trusted_keys=keyring, allow_unsigned=self.allow_unsigned)
        if model.sha256 != self.sha256:
            raise IntegrityError(
                f"{self.path!r} changed while it was being scored (payload sha256 {model.sha256[:12]}, "
                f"expected {self.sha256[:12]}); rerun once it stops changing."
            )
        return model


# Per worker process: the model of the artifact being scored (one at a time) and how often each was loaded.
_worker_lock = threading.Lock()
_worker_model: dict[_WorkerArtifact, Model] = {}
_worker_load_counts: collections.Counter[_WorkerArtifact] = collections.Counter()


def _score_on_worker(artifact: _WorkerArtifact, chunk: Chunk, id_column: str | None, probabilities: bool) -> Scored:
    with _worker_lock:
        model = _worker_model.get(artifact)
        if model is None:
            model = artifact.load()
            _worker_model.clear()
            _worker_model[artifact] = model
            _worker_load_counts[artifact] += 1
    return score_chunk(model, chunk, id_column, probabilities)


def _worker_loads(artifact: _WorkerArtifact) -> int:
    return _worker_load_counts[artifact]


def _dask_results(
    client: Any, chunks: Iterator[Chunk], artifact: _WorkerArtifact, id_column: str | None, probabilities: bool
) -> Iterator[Scored]:
    """Each chunk scored on a worker, in input order, with a bounded number in flight (bounded memory)."""
    window = 2 * max(sum(client.nthreads().values()), 1)
    pending: collections.deque[Any] = collections.deque()
    for chunk in chunks:
        data = client.scatter(chunk, hash=False)  # sent straight to a worker, not inside the task graph
        pending.append(client.submit(_score_on_worker, artifact, data, id_column, probabilities, pure=False))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
