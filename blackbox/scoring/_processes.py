"""Scoring chunks in local worker processes (``jobs``): each loads the artifact once; results in input order.

Scope: the local engine's parallel form, for machines with more cores than one
Python process can use (the GIL serialises a chunk's Python work: the user's
steps, the schema's checks). This process reads the chunks and writes the
results; the workers validate and predict them with the same
:func:`~blackbox.scoring._scorer.score_chunk` as one process, so the output is
the same, row for row.

Rules callers rely on:

* Workers are started with ``spawn`` (this process runs threads: the writer's,
  Arrow's), and each loads, verifies and self-tests the artifact itself under
  this process's trust policy (:class:`~blackbox.scoring._dask.WorkerArtifact`),
  once; a worker that cannot raises the loader's own error here.
* At most ``2 * jobs`` chunks are in flight, so memory is bounded by the chunk
  size and ``jobs``, not by the input.
* A worker that dies (a segfault in the model's code, the OOM killer) fails the
  run with :class:`~blackbox.errors.ModelFailedError` naming the rows of the
  chunks in flight (which one killed it is not known); nothing is published.
* Leaving early (an error, the first reject with ``on_error='fail'``, Ctrl-C,
  SIGTERM through the CLI) terminates the workers, even one stuck in a hung
  model; the workers ignore Ctrl-C (this process stops them) and, on Linux,
  are killed when this process dies, so none is left behind.
* Called from a script, the ``spawn`` start needs the script's work under
  ``if __name__ == "__main__":`` (Python's rule for spawned processes).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..errors import ModelFailedError
from ._chunks import Chunk, Scored
from ._dask import WorkerArtifact, _score_on_worker


def process_results(
    chunks: Iterator[Chunk], artifact: WorkerArtifact, id_column: str | None, probabilities: bool, jobs: int
) -> Generator[Scored, None, None]:
    """Each chunk scored in one of ``jobs`` worker processes, yielded in input order (close it to stop early)."""
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_started)
    pending: collections.deque[tuple[Chunk, Future[Scored]]] = collections.deque()
    try:
        for chunk in chunks:
            pending.append((chunk, pool.submit(_score_on_worker, artifact, chunk, id_column, probabilities)))
            if len(pending) >= 2 * jobs:
                yield _result(pending)
        while pending:
            yield _result(pending)
    except BaseException:  # leaving early: waiting for the chunks in flight could be forever (a hung model)
        _terminate(pool)
        raise
    pool.shutdown(wait=True)


def _worker_started() -> None:
    """In each worker: Ctrl-C is for the parent, which stops the workers; and a worker dies with its parent (Linux)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


_PR_SET_PDEATHSIG = 1


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and kill the workers (the executor has no public way to, before Python 3.14)."""
    workers = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        if process.is_alive():
            process.kill()
    for process in workers:
        process.join(timeout=5)


def _result(pending: collections.deque[tuple[Chunk, Future[Scored]]]) -> Scored:
    """The oldest chunk's result; a dead worker fails the run naming the rows in flight (one of them killed it)."""
    try:
        return pending[0][1].result()
    except BrokenProcessPool:
        first, last = pending[0][0].rows[0], pending[-1][0].rows[-1]
        raise ModelFailedError(
            f"A scoring worker process died while scoring rows {first} to {last} (1-based: the chunks in flight; "
            "one of them crashed it): the model's code crashed it (a segfault), or the system killed it for memory. "
            "Nothing was written. Check the model (blackbox verify), and score those rows with --jobs 1 to see the "
            "crash itself; fewer jobs or a smaller chunk size need less memory."
        ) from None
    finally:
        pending.popleft()
