"""Atomic publication: what killed writers leave behind is removed by the next write of the same file, and nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from blackbox.atomic import STALE_SECONDS, atomic_write

from _helpers import child_env

WRITER = """
import os, signal, sys
from blackbox.atomic import atomic_writer

with atomic_writer(sys.argv[1]) as f:
    f.write(b"half of the new contents")
    f.flush()
    print("ready", flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # what kill -9 or the OOM killer does: no cleanup runs
    sys.stdin.readline()  # a live writer, still writing
    f.write(b", and the rest")
"""


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def writer(target: Path, mode: str) -> subprocess.Popen:
    """A process inside ``atomic_writer(target)``, once it has written part of the file."""
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target), mode], env=child_env(),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n", "the writer never started"
    return child


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    target = tmp_path / "out.csv"
    target.write_bytes(b"old")
    with writer(target, "kill") as child:  # the with closes its pipes
        assert child.wait(timeout=30) == -9
    left = temporaries(tmp_path)
    assert len(left) == 1 and left[0].startswith(".out.csv.")  # the hidden temporary file, and the old target intact
    assert target.read_bytes() == b"old"

    atomic_write(target, b"new")
    assert temporaries(tmp_path) == [] and target.read_bytes() == b"new"


def test_a_live_writers_temporary_file_is_never_removed(tmp_path):
    target = tmp_path / "out.csv"
    child = writer(target, "wait")
    try:
        theirs = temporaries(tmp_path)
        atomic_write(target, b"mine")  # a concurrent write of the same file
        assert temporaries(tmp_path) == theirs
        child.communicate("go\n", timeout=30)
        assert child.returncode == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert temporaries(tmp_path) == [] and target.read_bytes() == b"half of the new contents, and the rest"


def test_only_the_same_targets_abandoned_files_are_removed(tmp_path):
    target = tmp_path / "out"
    other = tmp_path / ".out.csv.abcd1234.locked.tmp"  # another file's (out.csv) temporary: not ours
    young = tmp_path / ".out.abcd1234.tmp"  # without a lock (an older writer, the store's): only age tells
    old = tmp_path / ".out.zyxw9876.tmp"
    unrelated = tmp_path / ".out.notes.tmp"
    for path in (other, young, old, unrelated):
        path.write_bytes(b"x")
    past = time.time() - STALE_SECONDS - 60
    os.utime(old, (past, past))
    os.utime(unrelated, (past, past))

    atomic_write(target, b"new")
    assert temporaries(tmp_path) == sorted(p.name for p in (other, young, unrelated))


def _under_umask(umask: int, write):
    old = os.umask(umask)
    try:
        return write()
    finally:
        os.umask(old)


def test_written_files_follow_the_umask_and_private_keys_stay_private(search, titanic, tmp_path):
    """A server running as another user (umask 022) must read artifacts and scored files; never a private key."""
    import blackbox
    from blackbox.signing import keygen

    mode = lambda path: Path(path).stat().st_mode & 0o777  # noqa: E731
    assert mode(_under_umask(0o022, lambda: atomic_write(tmp_path / "plain", b"x"))) == 0o644
    assert mode(_under_umask(0o077, lambda: atomic_write(tmp_path / "plain", b"y"))) == 0o600  # a replacement too
    assert mode(_under_umask(0o002, lambda: atomic_write(tmp_path / "group", b"x"))) == 0o664
    artifact = _under_umask(0o022, lambda: blackbox.save(search, tmp_path / "model.bbx", train_data=titanic[0], name="t", version="1"))
    assert mode(artifact) == 0o644
    private, public = _under_umask(0o022, lambda: keygen(tmp_path / "keys", "k"))
    assert mode(private) == 0o600 and mode(public) == 0o644
    store = blackbox.Store.open(tmp_path / "store")
    _under_umask(0o022, lambda: store.push(artifact, signing_key=private))
    released = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert released and all(mode(p) == 0o644 for p in released), {str(p): oct(mode(p)) for p in released}
