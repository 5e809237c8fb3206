"""Publishing a file atomically: readers see the old file or the whole new one.

The bytes go to a temporary file in the destination's directory, are flushed
and fsynced, and only then renamed over the destination; the directory is
fsynced so the rename survives a crash. On any failure the temporary file is
removed and the destination is untouched.

The published file has the mode a plain ``open(path, "w")`` would give it,
``0o666`` less the process's umask (``mkstemp``'s own 0600 would lock out a
server running as another user); a caller passes ``mode`` for a private file.

A writer killed outright (SIGKILL, the OOM killer, a power cut) cannot remove
its temporary file, so every write first removes what killed writers of the
*same destination* left: the temporary file ``.NAME.XXXXXXXX.locked.tmp`` is
``flock``-ed by its writer for as long as the writer lives (the kernel drops the
lock when the process dies, however it dies), so a file whose lock can be taken
has no writer left; a live writer's file is never touched. A temporary file
without that lock (``.NAME.XXXXXXXX.tmp``, from an older writer, or where the
filesystem has no ``flock``) is removed only once it is :data:`STALE_SECONDS`
old. Other files, and other destinations' temporary files, are never touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

STALE_SECONDS = 3600.0
"""Age after which a temporary file whose writer cannot be checked (no lock) is taken for abandoned."""
_LOCKED = ".locked.tmp"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file whose contents replace ``path`` only if the block succeeds.

    :param mode: the file's permission bits; default: ``0o666`` less the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path)
    fd, tmp = _locked_temporary(path)
    try:
        os.fchmod(fd, default_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # before the file (and its lock) is closed: never seen unlocked by a cleaner
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically and return the path (``mode``: as for :func:`atomic_writer`)."""
    with atomic_writer(path, mode) as f:
        f.write(data)
    return Path(path)


def remove_abandoned(path: str | os.PathLike[str], *, older_than: float = STALE_SECONDS) -> list[Path]:
    """Remove the temporary files of ``path`` that writers which no longer run left beside it; the paths removed."""
    path = Path(path)
    name = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}(?P<locked>\.locked)?\.tmp")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:  # an unreadable directory: the write itself will say what is wrong
        return []
    for entry in entries:
        match = name.fullmatch(entry.name)
        if match and _remove_if_abandoned(Path(entry.path), bool(match["locked"]), older_than):
            removed.append(Path(entry.path))
    return removed


def _remove_if_abandoned(tmp: Path, locked: bool, older_than: float) -> bool:
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW)  # RDWR: NFS emulates flock with write locks
    except OSError:  # gone already, not ours to open, a symbolic link
        return False
    try:
        if locked:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer is alive
                return False
            except OSError:  # no flock here: only age can tell
                locked = False
        if not locked and time.time() - os.fstat(fd).st_mtime < older_than:
            return False
        if os.stat(tmp, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:  # replaced since it was opened
            return False
        tmp.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _locked_temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, open and ``flock``-ed (where the filesystem can) until it is closed."""
    while True:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_LOCKED)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except (BlockingIOError, FileNotFoundError):  # a cleaner took it for abandoned before the lock: it removes it
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                os.close(fd)
                raise
            return fd, tmp  # no flock on this filesystem: cleaners go by age
        os.close(fd)


def default_mode() -> int:
    """The permission bits of a file blackbox publishes: ``0o666`` less the umask (keys pass their own 0600)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (setting it races other threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def fsync_directory(directory: Path) -> None:
    """Make a rename or link in ``directory`` durable."""
    with contextlib.suppress(OSError):  # not every filesystem allows opening a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
