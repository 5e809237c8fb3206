"""The model being served, how it is loaded, and how a new artifact is vetted first.

Scope: loading and readiness. :func:`load_model` is the only place the server
calls :func:`blackbox.load`; it passes the configured ``LOAD_OPTIONS`` through
untouched and runs the golden-sample self-test, so a model that is held has
been verified and reproduces its recorded predictions. Requests read
:attr:`ModelHolder.model` once and use that reference to the end, so a later
hot reload can swap the held model without a request ever mixing two models.

Model code is untrusted until it has run once somewhere harmless. :class:`Vetted`
is a private directory of artifact copies that passed :func:`vet` (a load and
self-test in an isolated child interpreter, :func:`blackbox.verify`, killed
after ``LOAD_TIMEOUT`` seconds): a segfault or a hang there is a
:class:`~blackbox.SelfTestError` naming the signal or the time, never a dead
server. ``blackbox serve`` admits every new artifact (at start, at SIGHUP, at a
store reload) through it before any worker loads the copy; the copies are
immutable (named by their sha256), so a worker started later loads exactly the
bytes that passed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import blackbox
from blackbox import BlackboxError, Model
from blackbox.artifact import read_bytes

from . import heap

READY_WAIT = 10.0
"""Seconds a request waits for a model that is being loaded (a worker started while none was serving) before its 503."""


class NotReady(Exception):
    """No verified model is held yet (or the worker is stopping); clients should retry (HTTP 503 with Retry-After)."""

    def __init__(self, message: str = "No verified model is loaded yet; retry shortly.") -> None:
        super().__init__(message)


def identity(model: Model) -> dict[str, str]:
    """How every answer names the model that made it: name, version and the payload's sha256.

    ``payload_sha256`` names the hash (the payload the manifest binds, what ``blackbox
    inspect`` and the prediction log show; not the file's, which ``push`` and ``list``
    show); ``sha256`` repeats it for clients written before the rename.
    """
    return {"name": model.name, "version": model.version, "payload_sha256": model.sha256, "sha256": model.sha256}


def load_model(path: str | os.PathLike[str], options: Mapping[str, Any]) -> Model:
    """Verify and load the artifact at ``path``, then prove it still predicts as it did when saved."""
    model = blackbox.load(path, **options)
    model.self_test()
    return model


def vet(path: str | os.PathLike[str], options: Mapping[str, Any], timeout: float) -> None:
    """Load and self-test ``path`` in an isolated child that may take ``timeout`` seconds; raise its error if it fails.

    Only the artifact's own by-value modules are blocked there (the serving side's
    packages are what it would use anyway); a crash or a timeout is a SelfTestError.
    """
    outcome = blackbox.verify(
        path, block=(), timeout=timeout, trusted_keys=options.get("trusted_keys"),
        allow_unsigned=bool(options.get("allow_unsigned")), strict=bool(options.get("strict")),
    )
    if not outcome.ok and outcome.seconds >= timeout:  # killed at the limit: say which setting it is
        raise blackbox.SelfTestError(f"{outcome.message} The limit is LOAD_TIMEOUT (blackbox serve --load-timeout).")
    outcome.raise_for_status()


class Vetted:
    """A private directory of artifact copies that passed :func:`vet` in this server's run."""

    def __init__(self, directory: str | os.PathLike[str], options: Mapping[str, Any], timeout: float) -> None:
        self.directory = Path(directory)
        self._options = options
        self.timeout = timeout
        """Seconds a vetting (and a new worker's load, at SIGHUP) may take: ``LOAD_TIMEOUT``."""

    def admit(self, path: str | os.PathLike[str]) -> Path:
        """The vetted copy of the artifact at ``path``: copied and vetted unless these bytes passed before."""
        data = read_bytes(path)
        sha256 = hashlib.sha256(data).hexdigest()
        copy = self.directory / f"{sha256}.bbx"
        if copy.exists():
            return copy
        scratch = tempfile.mkdtemp(prefix=".candidate-", dir=self.directory)
        candidate = Path(scratch, Path(path).name)
        candidate.write_bytes(data)  # vet the very bytes the workers will load, not a file that may change
        try:
            vet(candidate, self._options, self.timeout)
            os.replace(candidate, copy)
        except BlackboxError as exc:  # name the file the operator gave, not the private copy
            exc.message = exc.message.replace(str(candidate), str(path))
            exc.args = (exc.message, *exc.args[1:])
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return copy

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class ModelHolder:
    """Holds the current model; ``model`` is None until one has passed its self-test.

    ``loading`` is True while a first model is being loaded: requests then wait
    for it (up to ``wait`` seconds) instead of failing at once. ``draining`` is
    set when the process was told to stop; ``/ready`` then says 503.
    ``failure`` says why no model could be loaded (None: none failed), for
    ``/ready`` and ``GET /models`` while the server's other models serve.
    With ``settle``, each model installed is first kept out of the garbage
    collector's full collections (:func:`serving.heap.settle`).
    """

    def __init__(self, model: Model | None = None, *, wait: float = 0.0, settle: bool = False) -> None:
        self._model = model
        self._settle = settle  # after each install, keep the model out of full collections (serving.heap)
        self._arrived = threading.Event()
        if model is not None:
            self._arrived.set()
        self.wait = wait
        self.loading = False
        self.draining = False
        self.failure: str | None = None

    @property
    def model(self) -> Model | None:
        return self._model

    @model.setter
    def model(self, model: Model | None) -> None:
        self._model = model  # the swap: one reference assignment
        if model is not None:
            if self._settle:
                heap.settle()
            self._arrived.set()

    def forked(self) -> None:
        """In a process forked from this one: a fresh event (a parent's thread may have been setting it at the fork)."""
        self._arrived = threading.Event()
        if self._model is not None:
            self._arrived.set()

    def require(self) -> Model:
        """The current model, or 503 when there is none (read it once per request)."""
        model = self._model
        if model is None and self.loading and self.wait:
            self._arrived.wait(self.wait)
            model = self._model
        if model is None:
            raise NotReady()
        return model
