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
* The artifact is loaded and self-tested (its golden sample) before any row is
  read, by the driver and by every Dask worker: a failing self-test is a
  :class:`SelfTestError` (exit 7) and nothing is written.
* Validation is :meth:`Model.prepare`, the server's code. A row that fails it is
  a *reject*: with ``on_error="fail"`` (the default) the run stops with a
  :class:`SchemaError` (exit 9) and publishes nothing; with ``on_error="skip"``
  the other rows are scored and every problem of every rejected row goes to the
  rejects file. A problem that no row owns (a column of the wrong type) always
  fails the run, naming the column.
* A row that passes the schema but that the model's own code cannot score is a
  reject like any other (issue ``model_error``, the exception as the reason),
  found by retrying halves of the failed model call (see ``_scorer``). When the
  model fails on every row of a chunk it is the model's fault, not the rows':
  :class:`ModelFailedError` (exit 14) fails the run, never a traceback.
* ``row`` (in the output and the rejects file) is the 1-based number of the
  record in the input: the N-th data row after a CSV header, the N-th Parquet
  row, the line number in a JSON Lines file (blank lines are not records).
* The output and its rejects file (CSV; only when a row was rejected, and a
  run without rejects removes an earlier one there) are written to temporary
  files beside their destinations and renamed only when the whole input has
  been scored, rejects first, output last: an interrupted run leaves no file at
  the output path. Existing files are refused unless ``overwrite``.
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

from ._dask import dask_client
from ._job import DEFAULT_CHUNK_ROWS, PARTIAL_SUCCESS, Summary, score
from ._reader import FORMATS
from ._scorer import score_chunk

__all__ = ["DEFAULT_CHUNK_ROWS", "FORMATS", "PARTIAL_SUCCESS", "Summary", "dask_client", "score", "score_chunk"]
