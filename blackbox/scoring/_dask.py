"""Scoring chunks on Dask workers, each loading the artifact once, in input order and bounded memory."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import persist
from ..errors import IntegrityError, UsageError
from ..model import Model
from ..signing import Keyring
from ._chunks import Chunk, Scored
from ._scorer import score_chunk

LOCAL_WORKERS = 2


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
            raise UsageError(f"Cannot reach the Dask scheduler at {scheduler!r}: {exc}. Check the scheduler address.",
                             options={"scheduler": None}) from None
        yield client


@dataclass(frozen=True)
class WorkerArtifact:
    """What a worker needs to load the artifact itself, with the driver's trust policy passed by value."""

    path: str
    sha256: str
    keyring: Keyring = field(compare=False)
    allow_unsigned: bool
    fast_path: bool = True
    manifest_sha256: str | None = None  # the driver's manifest (schema, golden sample, ...): None, not compared

    def load(self) -> Model:
        """The worker's own copy, verified and self-tested like every loader's (the worker's packages may differ)."""
        model = persist.load(self.path, trusted_keys=self.keyring, allow_unsigned=self.allow_unsigned, fast_path=self.fast_path)
        manifest = manifest_sha256(model)
        if model.sha256 != self.sha256 or self.manifest_sha256 not in (None, manifest):
            raise IntegrityError(
                f"{self.path!r} changed while it was being scored (payload sha256 {model.sha256[:12]}, manifest "
                f"{manifest[:12]}; expected {self.sha256[:12]}, {(self.manifest_sha256 or 'any')[:12]}); rerun once it "
                "stops changing."
            )
        model.self_test()
        return model


def manifest_sha256(model: Model) -> str:
    """A digest of the model's manifest as read (a re-signed file with the same payload has another)."""
    return hashlib.sha256(json.dumps(model.manifest.to_json(), sort_keys=True).encode()).hexdigest()


# Per worker process: the model of the artifact being scored (one at a time) and how often each was loaded.
_worker_lock = threading.Lock()
_worker_model: dict[WorkerArtifact, Model] = {}
_worker_load_counts: collections.Counter[WorkerArtifact] = collections.Counter()


def _score_on_worker(artifact: WorkerArtifact, chunk: Chunk, id_column: str | None, probabilities: bool) -> Scored:
    with _worker_lock:
        model = _worker_model.get(artifact)
        if model is None:
            model = artifact.load()
            _worker_model.clear()
            _worker_model[artifact] = model
            _worker_load_counts[artifact] += 1
    return score_chunk(model, chunk, id_column, probabilities)


def worker_loads(artifact: WorkerArtifact) -> int:
    return _worker_load_counts[artifact]


def dask_results(
    client: Any, chunks: Iterator[Chunk], artifact: WorkerArtifact, id_column: str | None, probabilities: bool
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
