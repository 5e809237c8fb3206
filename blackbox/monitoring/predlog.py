"""The prediction log: what a served model saw and said, and the labels that arrive later.

Scope: the tables and every read and write of them, so the server, ``blackbox
export-log`` and the drift report share one definition. Nothing here knows
about HTTP or threads; the server's queue and writer thread live in
``serving/recorder.py``.

Any SQLAlchemy URL works (PostgreSQL in production, ``postgresql+psycopg://``
with ``pip install 'blackbox[postgres]'``); a plain path is a SQLite file,
opened in WAL mode so several gunicorn workers append while readers read; a
worker's first use waits (up to :data:`SQLITE_BUSY_MS`) while another switches a
new file to WAL or creates the tables, instead of failing.

``blackbox_predictions`` holds one row per predicted record: its request id and
its index in the request (``row``), the time, the model (name, version and
``model_sha256``: the payload's sha256, ``payload_sha256`` in the server's answers
and ``blackbox inspect``, not the file's of ``push`` and ``list``; the column
keeps its name so that existing tables and readers need no migration), the
client's API key id, the request latency, the record as the model saw it (the schema's fields
only; long strings shortened, see :func:`compact`), the prediction and the
probabilities. A client may reuse a request id (``X-Request-ID`` on a retry), so
the key is a surrogate ``id`` and (request_id, row) is only indexed.
``blackbox_feedback`` is append-only: one row per label received for a
(request_id, row). The latest label (highest ``id``) is the one that counts, so
a corrected label replaces an earlier one and the history stays.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from ..atomic import atomic_writer
from ..errors import UsageError

MAX_TEXT = 256
"""Characters of a string value kept in the log; longer ones keep this prefix plus their length and sha256."""

SQLITE_BUSY_MS = 2000
"""How long a SQLite writer waits for another worker's transaction before the batch is retried."""

TRANSIENT = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, sa.exc.DisconnectionError)
"""Errors that say the database is down, locked or full rather than that it refused the rows: retry them."""

META_COLUMNS = (
    "request_id", "row", "ts", "model_name", "model_version", "model_sha256", "client_id", "latency_ms",
    "prediction", "probabilities",
)
FEEDBACK_COLUMNS = ("label", "label_ts")

metadata = sa.MetaData()
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

predictions = sa.Table(
    "blackbox_predictions", metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("row", sa.Integer, nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("model_sha256", sa.String(64), nullable=False),
    sa.Column("client_id", sa.String(64)),
    sa.Column("latency_ms", sa.Float),
    sa.Column("record", sa.JSON, nullable=False),
    sa.Column("prediction", sa.JSON),
    sa.Column("probabilities", sa.JSON),
    sa.Index("ix_blackbox_predictions_request", "request_id", "row"),
)

feedback = sa.Table(
    "blackbox_feedback", metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("row", sa.Integer, nullable=False),
    sa.Column("label", sa.JSON, nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_blackbox_feedback_request", "request_id", "row"),
)


def database_url(target: str | Path) -> URL:
    """The SQLAlchemy URL of a log given as a URL or a SQLite file path; UsageError if unusable here."""
    text = str(target).strip()
    if not text:
        raise UsageError("The prediction log needs a SQLAlchemy URL or a SQLite file path, got an empty string.")
    try:
        url = sa.make_url(text) if "://" in text else URL.create("sqlite", database=str(Path(text).resolve()))
        url.get_dialect().import_dbapi()
    except sa.exc.ArgumentError as exc:
        raise UsageError(f"Prediction log {text!r} is not a SQLAlchemy URL ({exc}); e.g. sqlite:///log.db, "
                         "postgresql+psycopg://user@host/db, or a file path.") from None
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise UsageError(f"Prediction log {_safe(text)}: its database driver is not installed ({exc}). For PostgreSQL: "
                         "pip install 'blackbox[postgres]' and use postgresql+psycopg://.") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folder = Path(url.database).parent
        if not folder.is_dir():
            raise UsageError(f"Prediction log {url.database!r}: its directory {str(folder)!r} does not exist; create it first.")
    return url


def _safe(text: str) -> str:
    """A URL for messages, without its password."""
    try:
        return sa.make_url(text).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return repr(text)


class PredictionLog:
    """One log database: creates its tables on first use, appends predictions and labels, answers look-ups."""

    def __init__(self, target: str | Path | URL) -> None:
        self.url = target if isinstance(target, URL) else database_url(target)
        self.name = self.url.render_as_string(hide_password=True)
        self.engine = _engine(self.url)
        self._ready = False

    def ensure_tables(self) -> None:
        """Create the tables if missing. Several workers may race here: a loser retries once the winner is done."""
        if self._ready:
            return
        for attempt in range(5):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                break
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError) as exc:
                reason = str(exc.orig).lower()
                raced = "exist" in reason or "duplicate" in reason  # a concurrent CREATE won
                if not raced or attempt == 4:  # down, read-only, locked...: the caller retries later
                    raise
                time.sleep(0.05 * (attempt + 1))
        self._ready = True

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert prediction rows (see :func:`prediction_rows`) in one transaction."""
        self.ensure_tables()
        with self.engine.begin() as conn:
            conn.execute(predictions.insert(), list(rows))

    def predicted_by(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, str]]:
        """The (model_name, model_sha256) of each logged (request_id, row) among ``keys`` (the latest, if logged twice)."""
        self.ensure_tables()
        keys = set(keys)
        ids = sorted({r for r, _ in keys})
        query = (sa.select(predictions.c.request_id, predictions.c.row, predictions.c.model_name, predictions.c.model_sha256)
                 .where(predictions.c.request_id.in_(ids)).order_by(predictions.c.id))
        with self.engine.connect() as conn:
            found = {(r, i): (name, sha) for r, i, name, sha in conn.execute(query)}
        return {key: found[key] for key in keys if key in found}

    def add_labels(self, labels: Sequence[tuple[str, int, Any]]) -> list[bool]:
        """Store (request_id, row, label) entries; for each, whether its prediction is in the log yet."""
        self.ensure_tables()
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(feedback.insert(), [{"request_id": r, "row": i, "label": label, "ts": now} for r, i, label in labels])
            ids = sorted({r for r, _, _ in labels})
            known = {tuple(row) for row in conn.execute(
                sa.select(predictions.c.request_id, predictions.c.row).where(predictions.c.request_id.in_(ids))
            )}
        return [(r, i) in known for r, i, _ in labels]

    def dispose(self) -> None:
        self.engine.dispose()


def _engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, json_serializer=_dumps)
    engine = sa.create_engine(url, json_serializer=_dumps)

    @sa.event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses at most the last commits, never corrupts
        cursor.close()

    return engine


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, waiting as long as busy_timeout would for another connection's write lock.

    On a file still in rollback-journal mode (a new log, which several workers may
    open at once) SQLite answers "database is locked" at once, without calling the
    busy handler, while another connection holds the write lock (switching the file
    to WAL itself, or creating the tables): waiting there could deadlock it. So wait here.
    """
    deadline = time.monotonic() + SQLITE_BUSY_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _dumps(value: Any) -> str:
    """JSON columns through orjson: a third of the writer's time went to the standard library's encoder."""
    return orjson.dumps(value).decode()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def prediction_rows(
    *, request_id: str, ts: dt.datetime, model: Mapping[str, str], client_id: str | None, latency_ms: float,
    fields: Sequence[str], records: Sequence[Mapping[str, Any]], predictions: Sequence[Any],
    probabilities: Sequence[Any] | None,
) -> list[dict[str, Any]]:
    """The log rows of one answered request: one per record, the record cut down to ``fields``."""
    return [
        {
            "request_id": request_id, "row": row, "ts": ts, "model_name": model["name"],
            "model_version": model["version"], "model_sha256": model["sha256"], "client_id": client_id,
            "latency_ms": latency_ms, "record": {name: compact(record.get(name)) for name in fields},
            "prediction": prediction, "probabilities": None if probabilities is None else probabilities[row],
        }
        for row, (record, prediction) in enumerate(zip(records, predictions, strict=True))
    ]


def compact(value: Any) -> Any:
    """A value as the log keeps it: a string over :data:`MAX_TEXT` characters becomes its prefix, length and sha256."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{value[:MAX_TEXT]}...[{len(value)} chars, sha256 {digest}]"
    return value


def read_log(
    url: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    with_feedback: bool = False,
    model_name: str | None = None,
    model_sha256: str | None = None,
) -> pd.DataFrame:
    """The logged predictions in ``[since, until)`` (naive times are UTC), oldest first, as one frame.

    ``model_name`` / ``model_sha256``: only that model's rows (by name: every version;
    by payload sha256: one artifact's).

    Columns: :data:`META_COLUMNS` (``ts`` as ``datetime64[ns, UTC]``), then one
    column per input field in first-seen order, then, with ``with_feedback``,
    the latest ``label`` and its ``label_ts`` (None/NaT where none arrived yet).
    """
    log = _existing(url)
    query = sa.select(*[predictions.c[name] for name in META_COLUMNS], predictions.c.record)
    if with_feedback:
        latest = (sa.select(sa.func.max(feedback.c.id).label("id"))
                  .group_by(feedback.c.request_id, feedback.c.row).subquery())
        labels = sa.select(feedback.c.request_id, feedback.c.row, feedback.c.label, feedback.c.ts).join(
            latest, feedback.c.id == latest.c.id).subquery()
        query = query.add_columns(labels.c.label, labels.c.ts.label("label_ts")).outerjoin(
            labels, sa.and_(labels.c.request_id == predictions.c.request_id, labels.c.row == predictions.c.row))
    if since is not None:
        query = query.where(predictions.c.ts >= _utc(since))
    if until is not None:
        query = query.where(predictions.c.ts < _utc(until))
    if model_name is not None:
        query = query.where(predictions.c.model_name == model_name)
    if model_sha256 is not None:
        query = query.where(predictions.c.model_sha256 == model_sha256)
    try:
        with log.engine.connect() as conn:
            rows = conn.execute(query.order_by(predictions.c.ts, predictions.c.id)).mappings().all()
    except sa.exc.DBAPIError as exc:
        reason = " ".join(str(exc.orig).split()).rstrip(".")
        raise UsageError(f"Cannot read the prediction log {log.name}: {reason}. Is it a blackbox prediction log, "
                         "and is the database up?") from None
    finally:
        log.dispose()
    return _frame(rows, with_feedback)


def _existing(url: str) -> PredictionLog:
    log = PredictionLog(url)
    database = log.url.database
    if log.url.get_backend_name() == "sqlite" and (database in (None, "", ":memory:") or not Path(database).is_file()):
        raise UsageError(f"No prediction log at {database!r}: give the file `blackbox serve --prediction-log` wrote.")
    return log


def _utc(moment: dt.datetime) -> dt.datetime:
    """UTC, naive: what SQLite stores and compares as text; PostgreSQL reads it as UTC too."""
    return (moment.astimezone(dt.UTC) if moment.tzinfo else moment).replace(tzinfo=None)


def _frame(rows: Iterable[Mapping[Any, Any]], with_feedback: bool) -> pd.DataFrame:
    rows = list(rows)
    meta = pd.DataFrame([[row[name] for name in META_COLUMNS] for row in rows], columns=list(META_COLUMNS), dtype=object)
    meta["row"] = meta["row"].astype("int64")
    meta["latency_ms"] = meta["latency_ms"].astype("float64")
    meta["ts"] = _timestamps([row["ts"] for row in rows])
    inputs = pd.DataFrame.from_records([row["record"] for row in rows], index=meta.index)
    inputs.columns = [f"input_{name}" if name in META_COLUMNS + FEEDBACK_COLUMNS else name for name in inputs.columns]
    frame = pd.concat([meta, inputs], axis=1)
    if with_feedback:
        frame["label"] = pd.Series([row["label"] for row in rows], index=meta.index, dtype=object)
        frame["label_ts"] = _timestamps([row["label_ts"] for row in rows])
    return frame


def _timestamps(values: list[Any]) -> pd.Series:
    """datetime64[ns, UTC]; SQLite gives naive datetimes, which the log always wrote in UTC."""
    return pd.Series(pd.to_datetime(pd.Series(values, dtype=object), utc=True), dtype="datetime64[ns, UTC]")


def export_log(
    url: str, out: str | Path, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
    with_feedback: bool = False, labelled_only: bool = False,
) -> int:
    """Write the log as a training set (CSV or Parquet by ``out``'s extension), atomically; the row count.

    Columns: request_id, row, ts and model_version to trace each row, the input
    fields, the prediction, and with feedback the label and its time.
    """
    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise UsageError(f"Cannot export the log to {str(out)!r}: name the output .parquet or .csv.")
    frame = read_log(url, since=since, until=until, with_feedback=with_feedback or labelled_only)
    if labelled_only:
        frame = frame[frame["label"].notna()]
    fields = [name for name in frame.columns if name not in META_COLUMNS + FEEDBACK_COLUMNS]
    extra = list(FEEDBACK_COLUMNS) if with_feedback or labelled_only else []
    frame = frame[["request_id", "row", "ts", "model_version", *fields, "prediction", *extra]].reset_index(drop=True)
    for name in frame.columns[frame.dtypes == object]:
        if len({type(value) for value in frame[name].dropna()}) > 1:  # e.g. labels sent as 1 and "1": Parquet needs one type
            frame[name] = frame[name].map(lambda value: value if value is None else str(value))
    with atomic_writer(out) as f:
        if out.suffix.lower() == ".csv":
            frame.to_csv(f, index=False)
        else:
            frame.to_parquet(f, index=False)
    return len(frame)
