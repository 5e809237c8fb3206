"""Writing the output and the rejects file, chunk by chunk, with columns fixed before the first row."""

from __future__ import annotations

import csv
import io
import json
import queue
import threading
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ..errors import UsageError
from ..model import Model
from ._chunks import Scored

REJECT_COLUMNS = ("field", "issue", "expected", "received")


class OutputSpec:
    """The output's columns and their types, fixed before the first row so every chunk matches."""

    def __init__(self, model: Model, id_column: str | None, id_type: pa.DataType, probabilities: bool) -> None:
        classes = model.classes
        self.prediction_type = pa.array(classes).type if classes else pa.float64()
        self.proba_names = [f"proba_{c}" for c in classes] if classes and model.has_proba and probabilities else []
        self.metadata = {"model_name": model.name, "model_version": model.version, "model_sha256": model.sha256}
        self.id_column = id_column
        fields = [("row", pa.int64())] + ([(id_column, id_type)] if id_column else []) + [("prediction", self.prediction_type)]
        fields += [(name, pa.float64()) for name in self.proba_names] + [("warnings", pa.string())]
        fields += [(name, pa.string()) for name in self.metadata]
        names = [name for name, _ in fields]
        if len(set(names)) < len(names):
            raise UsageError(f"The id column {id_column!r} clashes with an output column ({', '.join(names)}); pass another id_column.",
                             options={"id_column": None})
        self.schema = pa.schema(fields)

    def table(self, scored: Scored) -> pa.Table:
        n = len(scored.rows)
        columns: list[Any] = [pa.array(scored.rows, pa.int64())]
        if self.id_column:
            columns.append(_id_array(scored.ids, self.schema.field(self.id_column).type))
        columns.append(pa.array(scored.predictions, self.prediction_type))
        if self.proba_names:
            assert scored.probabilities is not None  # the model has them: the spec asked for their columns
            columns += [pa.array(scored.probabilities[:, i]) for i in range(len(self.proba_names))]
        columns.append(pa.array(scored.warnings, pa.string()))
        columns += [pa.repeat(pa.scalar(value, pa.string()), n) for value in self.metadata.values()]
        return pa.Table.from_arrays(columns, schema=self.schema)


def _id_array(ids: pa.ChunkedArray | list[Any] | None, kind: pa.DataType) -> Any:
    """Ids as read (CSV text, Parquet values); JSON ids as text, JSON-encoded unless they are strings."""
    if isinstance(ids, pa.ChunkedArray):
        return ids
    return pa.array([value if value is None or isinstance(value, str) else json.dumps(value) for value in ids or []], kind)


class Writer:
    """A file's contents, chunk by chunk; closing finishes the file (also after an error: it is discarded then)."""

    def close(self) -> None:
        """Nothing buffered: each chunk is written whole."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close()


class TableWriter(Writer):
    """CSV or Parquet through Arrow's writers; a CSV header is written even when no row follows."""

    def __init__(self, f: BinaryIO, spec: OutputSpec, fmt: str) -> None:
        self._spec = spec
        self._writer = pa_csv.CSVWriter(f, spec.schema) if fmt == "csv" else pq.ParquetWriter(f, spec.schema)

    def write(self, scored: Scored) -> None:
        if len(scored.rows):
            self._writer.write_table(self._spec.table(scored))

    def close(self) -> None:
        self._writer.close()


class JsonLinesWriter(Writer):
    def __init__(self, f: BinaryIO, spec: OutputSpec) -> None:
        self._f, self._spec = f, spec

    def write(self, scored: Scored) -> None:
        spec = self._spec
        ids = scored.ids.to_pylist() if isinstance(scored.ids, pa.ChunkedArray) else scored.ids or []
        probabilities = scored.probabilities.tolist() if scored.probabilities is not None else None
        lines = []
        for i, row in enumerate(scored.rows.tolist()):
            record: dict[str, Any] = {"row": row}
            if spec.id_column:
                record[spec.id_column] = ids[i]
            record["prediction"] = scored.predictions[i]
            if probabilities is not None:
                record.update(zip(spec.proba_names, probabilities[i]))
            record["warnings"] = scored.warnings[i]
            record.update(spec.metadata)
            lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str))
        if lines:
            self._f.write(("\n".join(lines) + "\n").encode())


def open_writer(fmt: str, f: BinaryIO, spec: OutputSpec) -> Writer:
    """The output's writer, writing in a thread of its own (see :class:`BackgroundWriter`)."""
    return BackgroundWriter(JsonLinesWriter(f, spec) if fmt == "jsonl" else TableWriter(f, spec, fmt))


class BackgroundWriter(Writer):
    """Writes each chunk in a thread while the next one is scored, in order.

    Arrow formats CSV and Parquet without holding the GIL, so on two cores
    writing a chunk overlaps with predicting the next instead of adding to it.
    At most one chunk waits, so memory stays bounded. An error in the thread
    (the same exception object) is raised by the next ``write`` or by ``close``.
    """

    def __init__(self, writer: TableWriter | JsonLinesWriter) -> None:
        self._writer = writer
        self._queue: queue.Queue[Scored | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="blackbox-score-writer", daemon=True)
        self._thread.start()

    def write(self, scored: Scored) -> None:
        self._raise()
        self._queue.put(scored)

    def close(self) -> None:
        self._finish()
        self._raise()

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self._finish()
        if kind is None:  # else the error already leaving the block is the one to report
            self._raise()

    def _run(self) -> None:
        while (scored := self._queue.get()) is not None:
            if self._error is None:  # after a failure, chunks are only drained, so write() never blocks
                try:
                    self._writer.write(scored)
                except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
                    self._error = exc

    def _finish(self) -> None:
        """Write what is queued, stop the thread, and finish the wrapped writer's file."""
        self._queue.put(None)
        self._thread.join()
        self._writer.close()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class RejectsWriter(Writer):
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
