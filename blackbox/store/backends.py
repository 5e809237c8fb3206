"""Where a model store's bytes live, and the three primitives its safety rests on.

A backend stores small objects under keys (tuples of validated path parts) and
offers, besides plain reads and listings:

* ``create(key, data)``: publish a whole object that must not exist yet, raising
  FileExistsError if it does. Readers see nothing or every byte, never a part.
* ``read_versioned(key)`` / ``swap(key, data, token)``: compare-and-swap. The
  token says which state was read; ``swap`` raises :class:`Conflict` if the
  object changed since (token ``None``: it must still not exist).
* ``age(key)`` and ``delete(key)``, for collecting what interrupted writers left;
  ``uploads()`` and ``abort_upload(key, id)`` for writes a store keeps unseen (S3
  multipart uploads never completed).

A local store never follows a symbolic link below its root (a link could lead
anywhere on the machine): it refuses one by name. How each backend keeps
those promises, and where it cannot, is said on the class. Nothing here knows
about artifacts, releases or aliases (see blackbox.store.store).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import posixpath
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic import atomic_write, default_mode, fsync_directory
from ..errors import StoreError

Key = tuple[str, ...]
LOCK_FILE = ".lock"


class Conflict(Exception):
    """The object changed between the read and the conditional write: a concurrent writer won."""


class Backend:
    """The primitives a store needs (see the module docstring); subclasses implement them."""

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What a failed read or write raises."""
        return (OSError,)

    def read(self, key: Key) -> bytes | None:
        raise NotImplementedError

    def read_versioned(self, key: Key) -> tuple[bytes | None, Any]:
        """The object's bytes (None if absent) and the token ``swap`` compares: here, the bytes themselves."""
        data = self.read(key)
        return data, data

    def create(self, key: Key, data: bytes) -> None:
        raise NotImplementedError

    def swap(self, key: Key, data: bytes, token: Any) -> None:
        raise NotImplementedError

    def children(self, key: Key) -> list[str]:
        """Names directly under ``key`` (empty if there is nothing there)."""
        raise NotImplementedError

    def age(self, key: Key) -> float:
        """Seconds since the object was last written."""
        raise NotImplementedError

    def delete(self, key: Key) -> None:
        raise NotImplementedError

    def uploads(self) -> list[tuple[Key, str, float]]:
        """Writes begun and never finished that the store keeps unseen: (key, upload id, age in seconds)."""
        return []

    def abort_upload(self, key: Key, upload_id: str) -> None:
        raise NotImplementedError


class LocalBackend(Backend):
    """A directory on a local (POSIX) filesystem.

    ``create`` writes a temporary file in the destination's directory, fsyncs it
    and hard-links it to the final name: ``link`` fails if the name exists, so of
    two concurrent creators exactly one wins, and the name only ever holds a
    complete, fsynced file. ``swap`` holds an ``flock`` on the directory's lock
    file (released by the kernel if the process dies), compares the current bytes
    with the token and replaces the file atomically (temp + fsync + rename).

    No part of a key may be a symbolic link (the root itself may be one): every
    operation checks each part with ``lstat`` and refuses a link, naming it;
    listings leave links out; reads open the file with ``O_NOFOLLOW`` and read
    only regular files (a FIFO or device planted in the store is refused, not
    waited on). A directory swapped for a link between the check and its use
    escapes the check; what is read is still verified (digest, signature) before use.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: Key) -> Path:
        """The path of ``key``, after checking that no part of it below the root is a symbolic link."""
        path = self.root
        for part in key:
            path = path / part
            if path.is_symlink():
                raise self._link(path)
        return path

    def _link(self, path: Path) -> StoreError:
        return StoreError(
            f"{path} is a symbolic link (to {os.readlink(path)!r}), and the model store never follows links: one "
            f"could lead out of the store root {self.root}. Refusing it; put the file or directory itself there, "
            "or remove the link."
        )

    def read(self, key: Key) -> bytes | None:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: a stray file where a directory would be
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # became a link since the check
                raise self._link(path) from None
            raise
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise StoreError(f"{path} is not a regular file; refusing to read it. Remove it from the store.")
            return f.read()

    def create(self, key: Key, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, default_mode())  # mkstemp's 0600 would lock out a server running as another user
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_directory(path.parent)

    def swap(self, key: Key, data: bytes, token: Any) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(path.parent):
            if self.read(key) != token:
                raise Conflict(str(path))
            atomic_write(path, data)

    def children(self, key: Key) -> list[str]:
        try:
            return sorted(p.name for p in self._path(key).iterdir() if not p.is_symlink())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def age(self, key: Key) -> float:
        return time.time() - self._path(key).lstat().st_mtime

    def delete(self, key: Key) -> None:
        self._path(key).unlink(missing_ok=True)

    @staticmethod
    @contextlib.contextmanager
    def _locked(directory: Path) -> Iterator[None]:
        with open(directory / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield  # closing the file releases the lock


class FsspecBackend(Backend):
    """Any fsspec filesystem, best effort: for stores without conditional writes.

    ``create`` checks that the key is absent, uploads to a temporary key beside
    it and moves that into place (a rename where the filesystem has one, a
    server-side copy on object stores), so no reader sees a partial object. But
    check-then-move and ``swap``'s compare-then-write are two steps: two writers
    racing inside that window can both succeed, the later one winning. The store
    reads every published artifact back and compares its digest, so a writer
    that lost such a race learns it; alias history can still lose an entry.
    """

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    def _path(self, key: Key) -> str:
        return posixpath.join(self.root, *key)

    def read(self, key: Key) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self._path(key)))
        except FileNotFoundError:
            return None

    def create(self, key: Key, data: bytes) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            raise FileExistsError(path)
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        self.fs.pipe_file(tmp, data)
        try:
            self.fs.mv(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(tmp)

    def swap(self, key: Key, data: bytes, token: Any) -> None:
        if self.read(key) != token:
            raise Conflict(self._path(key))
        self.fs.pipe_file(self._path(key), data)

    def children(self, key: Key) -> list[str]:
        path = self._path(key)
        self.fs.invalidate_cache(path)  # other processes write too: never answer from a stale listing
        try:
            entries = self.fs.ls(path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries if str(e).rstrip("/") != path)

    def age(self, key: Key) -> float:
        modified: dt.datetime = self.fs.modified(self._path(key))
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=dt.UTC)
        return time.time() - modified.timestamp()

    def delete(self, key: Key) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))


class S3Backend(FsspecBackend):
    """S3 and S3-compatible stores (s3fs), with the conditional writes S3 supports.

    ``create`` is one PutObject with ``If-None-Match: *``: S3 makes an object
    visible only once it is whole (an interrupted upload never appears), and of
    two concurrent creators exactly one gets 200, the other 412. ``swap`` is a
    PutObject with ``If-Match: <ETag read>`` (or ``If-None-Match: *`` for a new
    alias). Both need a server that evaluates the condition atomically, as AWS
    S3 does; a server that checks and writes in two steps (moto, some
    S3-compatible stores) leaves a window of microseconds inside one request.
    """

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError  # s3fs depends on botocore

        return (OSError, BotoCoreError, ClientError)

    def read_versioned(self, key: Key) -> tuple[bytes | None, Any]:
        try:
            # s3fs reads with If-Match on the ETag it saw, so data and token agree.
            with self.fs.open(self._path(key), "rb") as f:
                return f.read(), f.details["ETag"]
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            if _precondition_failed(exc):
                raise Conflict(self._path(key)) from exc
            raise

    def create(self, key: Key, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data, mode="create")

    def uploads(self) -> list[tuple[Key, str, float]]:
        """Multipart uploads begun under the store's root and never completed or aborted."""
        bucket, _, prefix = self.root.partition("/")
        prefix = f"{prefix}/" if prefix else ""
        found: list[tuple[Key, str, float]] = []
        page_from: dict[str, str] = {}
        while True:
            page = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **page_from)
            for upload in page.get("Uploads", []):
                key = tuple(upload["Key"][len(prefix):].split("/"))
                found.append((key, upload["UploadId"], time.time() - upload["Initiated"].timestamp()))
            if not page.get("IsTruncated"):
                return found
            page_from = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    def abort_upload(self, key: Key, upload_id: str) -> None:
        bucket, _, path = self._path(key).partition("/")
        self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=path, UploadId=upload_id)

    def swap(self, key: Key, data: bytes, token: Any) -> None:
        condition = {"IfMatch": token} if token is not None else {"mode": "create"}
        try:
            self.fs.pipe_file(self._path(key), data, **condition)
        except FileExistsError as exc:
            raise Conflict(self._path(key)) from exc
        except FileNotFoundError as exc:  # If-Match on an object deleted meanwhile
            raise Conflict(self._path(key)) from exc
        except OSError as exc:
            if _precondition_failed(exc):
                raise Conflict(self._path(key)) from exc
            raise


def _precondition_failed(exc: BaseException) -> bool:
    """True when S3 refused a conditional request (412, or 409 for a concurrent conditional write)."""
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict")


def open_backend(uri: str | os.PathLike[str], storage_options: dict[str, Any]) -> Backend:
    """The backend for a store URI: a plain path or ``file://`` is local; anything else goes through fsspec."""
    text = os.fspath(uri)
    if "://" not in text or text.startswith("file://"):
        return LocalBackend(Path(text.removeprefix("file://")))
    # Imported here: a local store needs neither fsspec nor a cloud SDK.
    import fsspec

    fs, root = fsspec.core.url_to_fs(text, **{"use_listings_cache": False, **storage_options})
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return (S3Backend if protocols & {"s3", "s3a"} else FsspecBackend)(fs, root)
