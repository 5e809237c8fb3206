"""A whole run: options checked, the model loaded, chunks read, scored and written, outputs published atomically."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import persist
from ..atomic import atomic_writer
from ..errors import ExitCode, SchemaError, UsageError
from ..signing import Keyring
from ._dask import WorkerArtifact, dask_client, dask_results, manifest_sha256, worker_loads
from ._processes import process_results
from ._progress import Progress
from ._reader import FORMATS, Source, format_of
from ._scorer import MODEL_ERROR, MODEL_ISSUES, model_failed, score_chunk
from ._writer import OutputSpec, RejectsWriter, open_writer

DEFAULT_CHUNK_ROWS = 50_000
PARTIAL_SUCCESS = ExitCode.PARTIAL_SUCCESS
"""Exit code of a run that scored some rows and rejected others (not an error: nothing failed)."""


@dataclass(frozen=True)
class Summary:
    """What a run did; ``exit_code`` is 0, or PARTIAL_SUCCESS when rows were rejected."""

    rows_read: int
    rows_scored: int
    rows_rejected: int
    seconds: float
    output: Path
    rejects: Path | None
    """The rejects file; None when no row was rejected (no file is written then)."""
    model: str
    worker_loads: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    @property
    def exit_code(self) -> ExitCode:
        return PARTIAL_SUCCESS if self.rows_rejected else ExitCode.OK

    def describe(self) -> str:
        lines = [
            f"scored {self.rows_scored:,} of {self.rows_read:,} rows ({self.rows_rejected:,} rejected) "
            f"in {self.seconds:.2f} s ({self.rows_per_second:,.0f} rows/s) with {self.model}",
            f"  output   {self.output}",
            f"  rejects  {self.rejects if self.rejects else 'none (no rejects file written)'}",
        ]
        if self.worker_loads:
            loads = ", ".join(f"{worker} {count}" for worker, count in sorted(self.worker_loads.items()))
            lines.append(f"  model loads per Dask worker: {loads}")
        return "\n".join(lines)


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
    jobs: int = 1,
    trusted_keys: Sequence[str | os.PathLike[str]] | None = None,
    allow_unsigned: bool = False,
    probabilities: bool = True,
    fast_path: bool = True,
    progress: bool = False,
) -> Summary:
    """Score every record of ``input`` with the artifact's model and publish ``output`` atomically.

    :param input_format: ``csv``, ``parquet`` or ``jsonl``; default: from the extension.
        The output has the format of its own extension, else the input's.
    :param rejects: where invalid rows are listed; default: ``OUTPUT_STEM.rejects.csv`` beside the output.
        Written only when a row is rejected; a run without rejects removes one left there (with ``overwrite``)
        so it cannot pass for this run's.
    :param on_error: ``fail`` stops at the first invalid row; ``skip`` rejects it and goes on.
    :param engine: ``local`` (this process) or ``dask`` (``scheduler``, or a local cluster).
    :param jobs: with the local engine, worker processes scoring chunks side by side (1: this process alone),
        each loading the artifact once; the output is the same.
    :param probabilities: write ``proba_<class>`` columns; without them a forest runs once, not twice.
    :param fast_path: score through the artifact's fast path when it has one (``blackbox.load``'s option).
    :param progress: report progress on stderr (a bar on a terminal, log lines otherwise).
    """
    started = time.perf_counter()
    input, output = Path(input), Path(output)
    rejects = Path(rejects) if rejects is not None else output.with_name(f"{output.stem}.rejects.csv")
    source_format = format_of(input, input_format)
    output_format = FORMATS.get(output.suffix.lower(), source_format)
    _check_options(input, output, rejects, chunk_size, on_error, overwrite, engine, scheduler, jobs)
    keyring = Keyring.from_paths(trusted_keys) if trusted_keys else Keyring.from_environment()
    model = persist.load(artifact, trusted_keys=keyring, allow_unsigned=allow_unsigned, fast_path=fast_path)
    model.self_test()
    source = Source(input, source_format, model.schema, id_column, chunk_size)
    spec = OutputSpec(model, id_column, source.id_type, probabilities)
    read = rejected = 0
    refused: list[tuple[int, Any, dict[str, Any]]] = []  # the first and last row the model failed on, while none scored
    refused_rows = 0
    meter = Progress(sys.stderr) if progress else None
    with contextlib.ExitStack() as stack:
        remote = WorkerArtifact(str(Path(artifact).resolve()), model.sha256, keyring, allow_unsigned, fast_path,
                                manifest_sha256(model))
        if engine == "dask":
            client = stack.enter_context(dask_client(scheduler))
            results = dask_results(client, source.chunks(), remote, id_column, bool(spec.proba_names))
        elif jobs > 1:
            results = stack.enter_context(contextlib.closing(
                process_results(source.chunks(), remote, id_column, bool(spec.proba_names), jobs)))
        else:
            results = (score_chunk(model, chunk, id_column, bool(spec.proba_names)) for chunk in source.chunks())
        # Left in reverse order: the rejects file (opened at the first reject) is finished and renamed into
        # place, then the output is finished and renamed, last.
        with contextlib.ExitStack() as files:
            writer = files.enter_context(open_writer(output_format, files.enter_context(atomic_writer(output)), spec))
            rejects_writer: RejectsWriter | None = None
            for scored in results:
                if scored.rejects and on_error == "fail":
                    raise _first_reject(scored.rejects, input, output)
                writer.write(scored)
                if scored.rejects:
                    if rejects_writer is None:
                        rejects_writer = files.enter_context(RejectsWriter(files.enter_context(atomic_writer(rejects)), id_column))
                    rejects_writer.write(scored.rejects)
                bad = len({row for row, _, _ in scored.rejects})
                read += len(scored.rows) + bad
                rejected += bad
                model_rejects = [reject for reject in scored.rejects if reject[2]["issue"] in MODEL_ISSUES]
                if read == rejected and model_rejects:
                    refused = [(refused or model_rejects)[0], model_rejects[-1]]
                    refused_rows += len({row for row, _, _ in model_rejects})
                if meter:
                    meter.update(read, rejected, source.fraction())
            if read and read == rejected and refused:  # the model failed on every valid row: not a few bad rows
                (first, _, problem), (last, _, _) = refused
                reason = problem["received"] if problem["issue"] == MODEL_ERROR else f"{problem['expected']}: {problem['received']}"
                raise model_failed("every row", refused_rows, first, last, reason)
        loads = client.run(worker_loads, remote) if engine == "dask" else {}
    if meter:
        meter.close()
    if not rejected:
        rejects.unlink(missing_ok=True)  # another run's (overwrite was checked): it does not list this output's rows
    label = f"{model.name} {model.version} (payload sha256 {model.sha256[:12]})"
    return Summary(read, read - rejected, rejected, time.perf_counter() - started, output, rejects if rejected else None, label, loads)


def _check_options(
    input: Path, output: Path, rejects: Path, chunk_size: int, on_error: str, overwrite: bool, engine: str, scheduler: str | None,
    jobs: int,
) -> None:
    if on_error not in ("fail", "skip"):
        raise UsageError(f"on_error must be 'fail' or 'skip', not {on_error!r}.")
    if engine not in ("local", "dask"):
        raise UsageError(f"engine must be 'local' or 'dask', not {engine!r}.")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"jobs must be a whole number of worker processes, at least 1, not {jobs!r}.")
    if jobs > 1 and engine != "local":
        raise UsageError("jobs applies to the local engine; Dask sizes its own workers.", options={"jobs": 1})
    if scheduler is not None and engine != "dask":
        raise UsageError("A scheduler only applies with engine='dask'.", options={"scheduler": None, "engine": "dask"})
    if chunk_size < 1:
        raise UsageError(f"The chunk size must be at least 1 row, not {chunk_size}.")
    if len({input.resolve(), output.resolve(), rejects.resolve()}) < 3:
        raise UsageError(f"The input {str(input)!r}, the output {str(output)!r} and the rejects file {str(rejects)!r} must be three different files.")
    for path, other in ((output, "output path"), (rejects, "rejects path (rejects=, default OUTPUT_STEM.rejects.csv)")):
        if path.exists() and not overwrite:
            raise UsageError(
                f"{str(path)!r} already exists; pass overwrite=True to replace it, or choose another {other}.",
                options={"overwrite": True},
            )


def _first_reject(rejects: list[tuple[int, Any, dict[str, Any]]], input: Path, output: Path) -> SchemaError:
    row, _, problem = rejects[0]
    if problem["issue"] == MODEL_ERROR:
        what = f"the model cannot score it although it passed the schema ({problem['received']})"
    elif problem["issue"] in MODEL_ISSUES:
        what = f"the model cannot score it although it passed the schema: expected {problem['expected']}, got {problem['received']}"
    else:
        where = f"field {problem['field']!r}: " if problem["field"] is not None else ""
        what = f"{where}expected {problem['expected']}, got {problem['received']}"
    more = len(rejects) - 1
    return SchemaError(
        f"{str(input)!r} row {row} (1-based): {what}"
        + (f"; {more} more problem(s) in the same chunk" if more else "")
        + f". Nothing was written to {str(output)!r}. Fix the input, or rerun with on_error='skip' to score the "
        "valid rows and list the invalid ones in a rejects file.",
        [{**problem, "row": reject_row} for reject_row, _, problem in rejects],
        options={"on_error": "skip"},
    )
