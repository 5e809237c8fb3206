"""The model store on a local directory (and fsspec's in-memory filesystem): releases, aliases, races, faults.

The scenarios (round trip, racing pushes, racing promotes) are plain functions
taking a store URI, so tests/test_store_s3.py runs the same ones against S3.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

import blackbox
from blackbox.artifact import pack, unpack
from blackbox.cli import main as blackbox_cli
from blackbox.store import Store, StoreError
from conftest import PYTHON, child_env, resign

EXIT_STORE = StoreError.exit_code


@pytest.fixture(scope="module")
def artifact(search, titanic, tmp_path_factory) -> Path:
    """One signed artifact, titanic 1.0.0; other versions are re-signed copies with an edited manifest."""
    X_train, *_ = titanic
    path = tmp_path_factory.mktemp("store-artifacts") / "titanic-1.0.0.bbx"
    return blackbox.save(search, path, train_data=X_train, name="titanic", version="1.0.0",
                         metrics={"holdout": {"accuracy": 0.8}})


def variant(artifact: Path, directory: Path, version: str, **changes) -> Path:
    """A signed artifact like ``artifact`` but with another version (and any other manifest changes)."""
    data = artifact.read_bytes()
    manifest = {**unpack(data).manifest(), "version": version, **changes}
    path = directory / f"{manifest['name']}-{version}-{uuid.uuid4().hex[:8]}.bbx"
    path.write_bytes(resign(data, manifest))
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = blackbox_cli([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def race(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls in threads released at the same instant; return each one's result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # the outcome under test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- scenarios shared with the S3 tests --------------------------------------------------


def round_trip(uri: str, artifact: Path, tmp_path: Path, capsys) -> None:
    """push / list / promote / rollback / pull through the command line, as a release manager would."""
    v2 = variant(artifact, tmp_path, "2.0.0", created_at="2099-01-01T00:00:00Z")
    old = variant(artifact, tmp_path, "0.9.0", created_at="2000-01-01T00:00:00Z")

    code, out, err = run_cli(capsys, "push", artifact, uri)
    assert code == 0, err
    assert "titanic@1.0.0 is in" in out
    for path in (v2, old):
        assert run_cli(capsys, "push", path, uri)[0] == 0

    code, out, _ = run_cli(capsys, "list", uri, "titanic", "--json")
    listed = {r["version"]: r for r in json.loads(out)}
    assert list(listed) == ["0.9.0", "1.0.0", "2.0.0"]  # oldest first
    assert listed["1.0.0"]["sha256"] == file_sha256(artifact)
    assert listed["1.0.0"]["key_id"] == blackbox.inspect(artifact)["signature"]["key_id"]
    assert listed["1.0.0"]["metrics"]["holdout"] == {"accuracy": 0.8}
    assert "candidates" not in listed["1.0.0"]["metrics"]["search"]  # kept in the manifest, not the record
    assert listed["2.0.0"]["aliases"] == ["latest"]  # pushing an older version later does not move latest

    store = Store.open(uri)
    assert run_cli(capsys, "promote", uri, "titanic", "1.0.0", "--alias", "production")[0] == 0
    code, out, _ = run_cli(capsys, "promote", uri, "titanic", "2.0.0", "--alias", "production")
    assert code == 0 and "titanic@production -> 2.0.0" in out
    assert store.resolve("titanic@production").version == "2.0.0"
    assert store.resolve("titanic").version == "2.0.0"  # NAME alone is NAME@latest
    assert store.resolve("titanic@0.9.0").sha256 == file_sha256(old)

    code, out, _ = run_cli(capsys, "list", uri)
    row = next(line for line in out.splitlines() if line.startswith("titanic") and " 2.0.0 " in line)
    assert "latest,production" in row and "holdout.accuracy 0.8000" in row

    code, out, _ = run_cli(capsys, "rollback", uri, "titanic", "--alias", "production")
    assert code == 0 and "rolled back to 1.0.0" in out
    assert store.resolve("titanic@production").version == "1.0.0"

    dest = tmp_path / "pulled" / "model.bbx"
    code, out, err = run_cli(capsys, "pull", uri, "titanic@production", "-o", dest)
    assert code == 0, err
    assert dest.read_bytes() == artifact.read_bytes()
    assert blackbox.load(dest).version == "1.0.0"

    code, _, err = run_cli(capsys, "rollback", uri, "titanic", "--alias", "production")
    assert code == EXIT_STORE and "no previous target left" in err


def racing_pushes(uri: str, artifact: Path, tmp_path: Path, rounds: int = 3) -> None:
    """Two pushes of one version with different bytes, at the same instant: exactly one wins, whole."""
    for n in range(rounds):
        version = f"8.0.{n}"
        paths = [variant(artifact, tmp_path, version, metadata={"writer": w}) for w in "ab"]
        results = race([lambda p=p: Store.open(uri).push(p) for p in paths])
        won = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
        assert len(won) == 1, results
        lost = results[1 - won[0]]
        assert isinstance(lost, StoreError) and "already exists" in lost.message and "immutable" in lost.message
        release, data = Store.open(uri).fetch(f"titanic@{version}")  # verifies digest and signature
        assert data == paths[won[0]].read_bytes()
        assert release.sha256 == file_sha256(paths[won[0]])


def racing_promotes(uri: str, artifact: Path, tmp_path: Path) -> None:
    """Promotes from several writers at once: each either lands or is told it lost; the pointer stays whole."""
    versions = [f"5.{i}.0" for i in range(6)]
    for version in versions:
        Store.open(uri).push(variant(artifact, tmp_path, version))
    landed: list[str] = []
    for pair in (versions[0:2], versions[2:4], versions[4:6]):
        results = race([lambda v=v: Store.open(uri).promote("titanic", v, "production") for v in pair])
        for version, result in zip(pair, results, strict=True):
            if isinstance(result, Exception):
                assert isinstance(result, StoreError) and "changed by someone else" in result.message
            else:
                landed.append(version)
    store = Store.open(uri)
    pointer, _ = store._pointer("titanic", "production")
    targets = [entry["version"] for entry in pointer["history"]] + [pointer["version"]]
    assert sorted(targets) == sorted(landed)  # every landed promote is recorded once, nothing else
    assert len(landed) >= 3  # each race has a winner
    assert store.resolve("titanic@production").version == pointer["version"]


# -- local directory ------------------------------------------------------------------------


@pytest.fixture(params=["directory", "memory"])
def uri(request, tmp_path) -> str:
    return str(tmp_path / "store") if request.param == "directory" else f"memory://bbx-{uuid.uuid4().hex}/models"


def test_round_trip(uri, artifact, tmp_path, capsys):
    round_trip(uri, artifact, tmp_path, capsys)


def test_layout_is_name_version_artifact_with_records_and_alias_pointers(artifact, tmp_path):
    root = tmp_path / "store"
    store = Store.open(f"file://{root}")
    release = store.push(artifact)
    store.promote("titanic", "1.0.0", "staging")
    assert release.uri == f"file://{root}/titanic/1.0.0/artifact.bbx"
    assert (root / "titanic/1.0.0/artifact.bbx").read_bytes() == artifact.read_bytes()
    record = json.loads((root / "titanic/1.0.0/release.json").read_text())
    assert record == release.record()
    pointer = json.loads((root / "titanic/aliases/staging.json").read_text())
    assert (pointer["version"], pointer["sha256"], pointer["history"]) == ("1.0.0", release.sha256, [])
    assert {p.name for p in root.rglob("*") if p.is_file()} == {"artifact.bbx", "release.json", "staging.json",
                                                                "latest.json", ".lock"}
    assert store.pull("titanic@staging", tmp_path) == tmp_path / "titanic-1.0.0.bbx"  # a directory: NAME-VERSION.bbx
    assert store.pull("titanic", f"{tmp_path}/new/") == tmp_path / "new/titanic-1.0.0.bbx"


def test_versions_are_immutable(artifact, tmp_path, capsys):
    uri = str(tmp_path / "store")
    assert run_cli(capsys, "push", artifact, uri)[0] == 0
    code, out, err = run_cli(capsys, "push", artifact, uri, "--json")  # the same bytes again: a no-op
    assert code == 0 and json.loads(out)["version"] == "1.0.0"
    other = variant(artifact, tmp_path, "1.0.0", metadata={"retrained": True})
    code, _, err = run_cli(capsys, "push", other, uri)
    assert code == EXIT_STORE
    assert "Version 1.0.0 of titanic already exists" in err and "versions are immutable" in err and uri in err
    assert (tmp_path / "store/titanic/1.0.0/artifact.bbx").read_bytes() == artifact.read_bytes()


def test_unsigned_and_damaged_artifacts_are_refused_before_anything_is_written(artifact, tmp_path, capsys):
    parts = unpack(artifact.read_bytes())
    unsigned = tmp_path / "unsigned.bbx"
    unsigned.write_bytes(pack(parts.manifest_bytes, parts.payload))
    damaged = tmp_path / "damaged.bbx"
    damaged.write_bytes(artifact.read_bytes()[:-1] + bytes([artifact.read_bytes()[-1] ^ 1]))
    uri = tmp_path / "store"
    assert run_cli(capsys, "push", unsigned, uri)[0] == blackbox.AuthenticityError.exit_code
    assert run_cli(capsys, "push", damaged, uri)[0] == blackbox.IntegrityError.exit_code
    assert run_cli(capsys, "push", tmp_path / "absent.bbx", uri)[0] == blackbox.ArtifactError.exit_code
    assert not uri.exists()
    assert run_cli(capsys, "push", unsigned, uri, "--allow-unsigned")[0] == 0  # explicitly, and then keyless
    assert Store.open(uri).resolve("titanic@1.0.0").key_id is None


def test_concurrent_pushes_of_one_version(artifact, tmp_path):
    racing_pushes(str(tmp_path / "store"), artifact, tmp_path)


def test_concurrent_promotes_keep_the_alias_whole(artifact, tmp_path):
    racing_promotes(str(tmp_path / "store"), artifact, tmp_path)


@pytest.mark.parametrize("fault", ["no space", "permission", "interrupt"])
def test_a_failed_push_leaves_no_version_and_no_temporary_file(fault, artifact, tmp_path, monkeypatch, capsys):
    root = tmp_path / "store"
    if fault == "no space":
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", fsync)
    elif fault == "permission":
        def mkstemp(dir, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)
        monkeypatch.setattr("blackbox.store.backends.tempfile.mkstemp", mkstemp)
    else:
        def link(src, dst):
            raise KeyboardInterrupt
        monkeypatch.setattr(os, "link", link)

    if fault == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            Store.open(root).push(artifact)
    else:
        code, _, err = run_cli(capsys, "push", artifact, root)
        assert code == EXIT_STORE
        assert ("No space left on device" if fault == "no space" else "Permission denied") in err
        assert str(root) in err and "Traceback" not in err
    monkeypatch.undo()
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert Store.open(root).list() == []
    with pytest.raises(StoreError, match="neither an alias nor a version"):
        Store.open(root).resolve("titanic@1.0.0")


def test_a_killed_push_never_becomes_a_version_and_gc_removes_its_leftovers(artifact, tmp_path):
    root = tmp_path / "store"
    child = subprocess.Popen(
        [PYTHON, "-c", (
            "import os, sys, time\n"
            "def link(src, dst):\n"
            "    print('written', flush=True); time.sleep(60)\n"
            "os.link = link\n"
            "from blackbox.store import Store\n"
            "Store.open(sys.argv[1]).push(sys.argv[2])\n"
        ), str(root), str(artifact)],
        stdout=subprocess.PIPE, env=child_env(), text=True,
    )
    try:
        assert child.stdout.readline() == "written\n"  # the temporary file is complete, about to be published
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    leftovers = [p for p in root.rglob("*.tmp")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == artifact.stat().st_size
    store = Store.open(root)
    assert store.list() == []
    with pytest.raises(StoreError):
        store.resolve("titanic@1.0.0")
    assert store.gc() == []  # too young: could be an upload in flight
    assert store.gc(older_than=0) == [str(leftovers[0])]
    assert store.push(artifact).version == "1.0.0"


@pytest.mark.parametrize("argv", [
    ["pull", "{store}", "../../etc@passwd", "-o", "{tmp}/x"],
    ["pull", "{store}", "titanic@../x", "-o", "{tmp}/x"],
    ["promote", "{store}", "titanic", "/etc/passwd", "--alias", "production"],
    ["promote", "{store}", "titanic", "1.0.0", "--alias", "../production"],
    ["promote", "{store}", "titanic", "1.0.0", "--alias", "latest"],
    ["rollback", "{store}", "..", "--alias", "production"],
    ["list", "{store}", "a/b"],
])
def test_names_versions_and_aliases_are_validated(argv, artifact, tmp_path, capsys):
    store = tmp_path / "store"
    Store.open(store).push(artifact)
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run_cli(capsys, *(a.format(store=store, tmp=tmp_path) for a in argv))
    assert code == blackbox.UsageError.exit_code, err
    assert sorted(tmp_path.rglob("*")) == before


def test_an_artifact_named_with_a_path_is_refused(artifact, tmp_path, capsys):
    evil = tmp_path / "evil.bbx"
    evil.write_bytes(resign(artifact.read_bytes(), {**unpack(artifact.read_bytes()).manifest(), "name": "../x"}))
    code, _, err = run_cli(capsys, "push", evil, tmp_path / "store")
    assert code == blackbox.UsageError.exit_code and "'../x'" in err
    assert not (tmp_path / "store").exists() and not (tmp_path / "x").exists()


def test_alias_errors_say_what_to_do(artifact, tmp_path, capsys):
    uri = tmp_path / "store"
    Store.open(uri).push(artifact)
    code, _, err = run_cli(capsys, "rollback", uri, "titanic", "--alias", "production")
    assert code == EXIT_STORE and "no alias 'production'" in err and "blackbox promote" in err
    code, _, err = run_cli(capsys, "promote", uri, "titanic", "9.9.9", "--alias", "production")
    assert code == EXIT_STORE and "Version 9.9.9 of titanic is not in" in err and "push it first" in err
    code, _, err = run_cli(capsys, "pull", uri, "titanic@staging", "-o", tmp_path / "x.bbx")
    assert code == EXIT_STORE and "neither an alias nor a version" in err


def test_pull_refuses_what_the_store_altered_and_keeps_the_destination(artifact, tmp_path, capsys):
    uri = tmp_path / "store"
    store = Store.open(uri)
    store.push(artifact)
    store.promote("titanic", "1.0.0", "production")
    dest = tmp_path / "serving.bbx"
    dest.write_bytes(b"the model being served")
    stored = uri / "titanic/1.0.0/artifact.bbx"

    stored.write_bytes(variant(artifact, tmp_path, "1.0.0", metadata={"swapped": True}).read_bytes())
    code, _, err = run_cli(capsys, "pull", uri, "titanic@production", "-o", dest)
    assert code == blackbox.IntegrityError.exit_code and "does not match its release record" in err
    assert dest.read_bytes() == b"the model being served"
    assert [p.name for p in tmp_path.glob(".serving.bbx*")] == []

    stored.unlink()  # the pointer now names a version whose artifact is gone
    code, _, err = run_cli(capsys, "pull", uri, "titanic@production", "-o", dest)
    assert code == EXIT_STORE and "titanic@1.0.0" in err and "is missing" in err
    assert dest.read_bytes() == b"the model being served"


def test_promote_refuses_an_artifact_from_an_untrusted_signer(artifact, tmp_path, capsys):
    from blackbox import signing

    private, _ = signing.keygen(tmp_path / "intruder", "intruder")
    uri = tmp_path / "store"
    store = Store.open(uri)
    store.push(artifact)
    evil = tmp_path / "evil.bbx"
    evil.write_bytes(variant(artifact, tmp_path, "8.0.0").read_bytes())
    blackbox.sign(evil, private)
    code, _, err = run_cli(capsys, "push", evil, uri)
    assert code == blackbox.AuthenticityError.exit_code and "not among the trusted keys" in err
    # Someone with write access to the store but not the key plants it anyway (MA-07).
    (uri / "titanic/8.0.0").mkdir()
    (uri / "titanic/8.0.0/artifact.bbx").write_bytes(evil.read_bytes())
    code, _, err = run_cli(capsys, "promote", uri, "titanic", "8.0.0", "--alias", "production")
    assert code == blackbox.AuthenticityError.exit_code
    assert not (uri / "titanic/aliases/production.json").exists()


def test_training_pushes_what_it_saved(search, artifact, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import training.__main__ as train_cli

    monkeypatch.setattr(train_cli, "search", lambda *args, **kwargs: search)  # the fitted fixture: no grid search
    uri = tmp_path / "store"
    result = CliRunner().invoke(train_cli.cli, [
        "--out", str(tmp_path / "t.bbx"), "--small-grid", "--no-verify", "--version", "3.0.0", "--push", str(uri),
    ])
    assert result.exit_code == 0, result.output
    assert "push: titanic@3.0.0 is in" in result.output
    release = Store.open(uri).resolve("titanic@3.0.0")
    assert release.sha256 == file_sha256(tmp_path / "t.bbx")
    assert set(release.metrics["holdout"]) == {"accuracy", "roc_auc", "f1", "log_loss"}


def test_store_errors_are_blackbox_errors_with_exit_code_8():
    assert issubclass(StoreError, blackbox.BlackboxError)
    assert (StoreError.code, StoreError.exit_code) == ("store_error", 8)


def test_list_of_an_empty_store_is_empty(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "list", tmp_path / "nothing-here", "--json")
    assert code == 0 and json.loads(out) == []
