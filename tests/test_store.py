"""The model store on a local directory (and fsspec's in-memory filesystem): releases, aliases, races, faults.

The scenarios (round trip, racing pushes, racing promotes) are plain functions in
_helpers.py taking a store URI, so tests/test_store_s3.py runs the same ones against S3.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

import blackbox
from blackbox.artifact import pack, unpack
from blackbox.store import Store, StoreError

from _helpers import (
    PYTHON,
    child_env,
    file_sha256,
    racing_promotes,
    racing_pushes,
    resign,
    run_cli,
    store_round_trip,
    variant,
)

EXIT_STORE = StoreError.exit_code


# -- local directory ------------------------------------------------------------------------


@pytest.fixture(params=["directory", "memory"])
def uri(request, tmp_path) -> str:
    return str(tmp_path / "store") if request.param == "directory" else f"memory://bbx-{uuid.uuid4().hex}/models"


def test_round_trip(uri, artifact, tmp_path, capsys):
    store_round_trip(uri, artifact, tmp_path, capsys)


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
    statement = pointer["signed"]
    assert (statement["version"], statement["sha256"], statement["history"]) == ("1.0.0", release.sha256, [])
    assert (statement["name"], statement["alias"], statement["rollback"]) == ("titanic", "staging", False)
    assert pointer["signature"]["key_id"] == release.key_id  # the test key signs artifacts and pointers
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
        child.stdout.close()
    leftovers = list(root.rglob("*.tmp"))
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


# -- release pointers are signed statements (issue #16) -------------------------------------


def pointer_file(root: Path, alias: str, name: str = "titanic") -> Path:
    return root / name / "aliases" / f"{alias}.json"


@pytest.fixture
def two_releases(artifact, tmp_path) -> tuple[Path, Store]:
    """A local store with titanic 1.0.0 and 2.0.0, production promoted 1.0.0 then 2.0.0 (latest: 2.0.0)."""
    root = tmp_path / "store"
    store = Store.open(root)
    store.push(artifact)
    store.push(variant(artifact, tmp_path, "2.0.0"))
    store.promote("titanic", "1.0.0", "production")
    store.promote("titanic", "2.0.0", "production")
    return root, store


def test_an_edited_pointer_is_refused(two_releases, tmp_path, capsys):
    root, store = two_releases
    one, two = store.resolve("titanic@1.0.0"), store.resolve("titanic@2.0.0")
    path = pointer_file(root, "production")
    path.write_text(path.read_text().replace(two.sha256, one.sha256).replace('"2.0.0"', '"1.0.0"'))
    with pytest.raises(blackbox.AuthenticityError, match="titanic/aliases/production.json"):
        store.resolve("titanic@production")
    code, _, err = run_cli(capsys, "pull", root, "titanic@production", "-o", tmp_path / "x.bbx")
    assert code == blackbox.AuthenticityError.exit_code and "signature" in err
    assert not (tmp_path / "x.bbx").exists()


def test_another_models_or_another_alias_pointer_is_refused(two_releases, artifact, tmp_path):
    root, store = two_releases
    store.push(variant(artifact, tmp_path, "1.0.0", name="other"))
    store.promote("other", "1.0.0", "production")
    store.promote("titanic", "1.0.0", "staging")
    planted = pointer_file(root, "production")
    planted.write_bytes(pointer_file(root, "production", "other").read_bytes())  # validly signed, for other@production
    with pytest.raises(blackbox.AuthenticityError, match="other@production"):
        store.resolve("titanic@production")
    planted.write_bytes(pointer_file(root, "staging").read_bytes())  # validly signed, for titanic@staging
    with pytest.raises(blackbox.AuthenticityError, match="titanic@staging"):
        store.resolve("titanic@production")


def test_a_replayed_older_pointer_is_refused_by_a_follower(artifact, tmp_path):
    root = tmp_path / "store"
    store = Store.open(root)
    store.push(artifact)
    old_latest = pointer_file(root, "latest").read_bytes()
    store.promote("titanic", "1.0.0", "production")
    old_production = pointer_file(root, "production").read_bytes()
    store.push(variant(artifact, tmp_path, "2.0.0"))
    store.promote("titanic", "2.0.0", "production")
    for alias, old in (("production", old_production), ("latest", old_latest)):
        served = store.resolve(f"titanic@{alias}")
        assert served.version == "2.0.0" and served.pointer.sequence > 0
        pointer_file(root, alias).write_bytes(old)  # what the store said before: validly signed
        assert store.resolve(f"titanic@{alias}").version == "1.0.0"  # no memory: nothing to compare with
        with pytest.raises(blackbox.AuthenticityError, match="older pointer") as caught:
            store.resolve(f"titanic@{alias}", after=served)
        assert "--allow-downgrade" in caught.value.message
        assert store.resolve(f"titanic@{alias}", after=served, allow_downgrade=True).version == "1.0.0"


def test_a_signed_rollback_is_accepted_and_an_unflagged_downgrade_is_not(two_releases, keys):
    from blackbox import signing
    from blackbox.store import pointers

    root, store = two_releases
    served = store.resolve("titanic@production")
    rolled = store.rollback("titanic", "production")
    assert rolled.version == "1.0.0"
    accepted = store.resolve("titanic@production", after=served)
    assert accepted.version == "1.0.0" and accepted.pointer.rollback
    assert accepted.pointer.sequence > served.pointer.sequence

    # promote refuses to go back unless told; told, its pointer says rollback.
    store.promote("titanic", "2.0.0", "production")
    served = store.resolve("titanic@production")
    with pytest.raises(StoreError, match="downgrade"):
        store.promote("titanic", "1.0.0", "production")
    assert store.resolve("titanic@production").version == "2.0.0"
    assert store.promote("titanic", "1.0.0", "production", allow_downgrade=True).version == "1.0.0"
    assert store.resolve("titanic@production", after=served).pointer.rollback

    # A validly signed, newer pointer to an older version that is not a rollback: refused unless allowed.
    store.promote("titanic", "2.0.0", "production")
    served = store.resolve("titanic@production")
    path = pointer_file(root, "production")
    document = json.loads(path.read_text())
    one = store.resolve("titanic@1.0.0")
    statement = {**document["signed"], **one.record(), "sequence": document["signed"]["sequence"] + 1, "rollback": False}
    path.write_bytes(pointers.seal(statement, signing.load_private_key(keys["private"])))
    with pytest.raises(blackbox.AuthenticityError, match="not a rollback"):
        store.resolve("titanic@production", after=served)
    assert store.resolve("titanic@production", after=served, allow_downgrade=True).version == "1.0.0"


def test_a_pointer_signed_by_an_untrusted_key_is_refused(two_releases, tmp_path):
    from blackbox import signing

    root, store = two_releases
    intruder, _ = signing.keygen(tmp_path / "intruder", "intruder")
    store.promote("titanic", "1.0.0", "staging", signing_key=intruder)
    with pytest.raises(blackbox.AuthenticityError, match="not among the trusted keys"):
        store.resolve("titanic@staging")
    assert store.resolve("titanic@production").version == "2.0.0"


def test_unsigned_pointers_of_old_stores_are_refused_unless_allowed(two_releases, artifact, caplog, capsys):
    root, store = two_releases
    record = store.resolve("titanic@2.0.0").record()
    legacy = {**record, "alias": "production", "updated_at": "2025-01-01T00:00:00Z", "history": []}  # the old format
    pointer_file(root, "production").write_text(json.dumps(legacy))
    with pytest.raises(blackbox.AuthenticityError, match="unsigned") as caught:
        store.resolve("titanic@production")
    assert "blackbox promote" in caught.value.message and "--signing-key" in caught.value.message
    with caplog.at_level("WARNING"):
        assert store.resolve("titanic@production", allow_unsigned=True).version == "2.0.0"
    assert "UNSIGNED" in caplog.text
    # Re-promoting with a key (the default one here) makes it a signed pointer again.
    code, out, err = run_cli(capsys, "promote", root, "titanic", "2.0.0", "--alias", "production")
    assert code == 0, err
    assert store.resolve("titanic@production").pointer.key_id == blackbox.inspect(artifact)["signature"]["key_id"]


def test_writing_a_pointer_needs_a_signing_key(artifact, tmp_path, monkeypatch, capsys):
    from blackbox.signing import SIGNING_KEY_ENV

    monkeypatch.delenv(SIGNING_KEY_ENV)
    root = tmp_path / "store"
    code, _, err = run_cli(capsys, "push", artifact, root)
    assert code == blackbox.UsageError.exit_code and "--signing-key" in err and SIGNING_KEY_ENV in err
    assert not root.exists()
    monkeypatch.undo()


# -- the local store never follows links out of its root ---------------------------------------


def test_links_in_a_local_store_are_never_followed(artifact, tmp_path, capsys):
    root = tmp_path / "store"
    store = Store.open(root)
    store.push(artifact)
    outside = Store.open(tmp_path / "outside")
    outside.push(variant(artifact, tmp_path, "3.0.0"))
    (root / "titanic/3.0.0").symlink_to(tmp_path / "outside/titanic/3.0.0", target_is_directory=True)
    assert [r.version for r in store.list("titanic")] == ["1.0.0"]
    for ref in ("titanic@3.0.0",):
        with pytest.raises(StoreError, match="symbolic link") as caught:
            store.pull(ref, tmp_path / "x.bbx")
        assert str(root / "titanic/3.0.0") in caught.value.message
    code, _, err = run_cli(capsys, "pull", root, "titanic@3.0.0", "-o", tmp_path / "x.bbx")
    assert code == EXIT_STORE and "symbolic link" in err

    secret = tmp_path / "secret.txt"
    secret.write_text("not for the store")
    (root / "titanic/1.0.0/release.json").unlink()
    (root / "titanic/1.0.0/release.json").symlink_to(secret)
    with pytest.raises(StoreError, match="symbolic link"):
        store.resolve("titanic@1.0.0")
    (root / "titanic/1.0.0/release.json").unlink()
    (root / "titanic/1.0.0/artifact.bbx").rename(tmp_path / "moved.bbx")
    (root / "titanic/1.0.0/artifact.bbx").symlink_to(tmp_path / "moved.bbx")
    with pytest.raises(StoreError, match="symbolic link"):
        store.pull("titanic", tmp_path / "x.bbx")
    assert not (tmp_path / "x.bbx").exists()


def test_a_fifo_in_the_store_is_refused_not_waited_on(artifact, tmp_path):
    root = tmp_path / "store"
    Store.open(root).push(artifact)
    (root / "titanic/1.0.0/release.json").unlink()
    os.mkfifo(root / "titanic/1.0.0/release.json")
    with pytest.raises(StoreError, match="not a regular file"):
        Store.open(root).resolve("titanic@1.0.0")


# -- what is not a release is ignored; versions order by a stated rule ---------------------------


def test_junk_in_the_store_is_ignored(artifact, tmp_path, capsys):
    import shutil

    root = tmp_path / "store"
    store = Store.open(root)
    store.push(artifact)
    store.push(variant(artifact, tmp_path, "2.0.0"))
    (root / "README.txt").write_text("models live here")
    (root / "titanic/README.txt").write_text("see the wiki")
    shutil.copytree(root / "titanic/2.0.0", root / "titanic/latest")  # a stray copy, not a release
    shutil.copytree(root / "titanic/2.0.0", root / "titanic/9.9.9")  # a copy under another version's name
    (root / "titanic/empty").mkdir()
    (root / "titanic/aliases/notes.txt").write_text("production is 2.0.0")
    code, out, err = run_cli(capsys, "list", root, "--json")
    assert code == 0, err
    assert [r["version"] for r in json.loads(out)] == ["1.0.0", "2.0.0"]
    assert run_cli(capsys, "list", root)[0] == 0
    assert store.resolve("titanic").version == "2.0.0"
    with pytest.raises(StoreError, match="titanic@2.0.0"):
        store.resolve("titanic@9.9.9")


@pytest.mark.parametrize("order", [("1.0.9", "1.0.10"), ("1.0.10", "1.0.9")])
def test_versions_saved_in_the_same_second_order_by_version(order, artifact, tmp_path):
    store = Store.open(tmp_path / "store")
    created = unpack(artifact.read_bytes()).manifest()["created_at"]
    for version in order:
        store.push(variant(artifact, tmp_path, version, created_at=created))
    assert store.resolve("titanic").version == "1.0.10"
    assert [r.version for r in store.list("titanic")] == ["1.0.9", "1.0.10"]


def test_version_order_is_pep440_then_natural():
    from blackbox.store.releases import version_key

    ordered = [
        "build-9", "build-10", "1.0.0.dev1", "1.0.0a1", "1.0.0-beta", "1.0.0rc1", "1.0.0-rc.2", "1.0",
        "1.0.0+local", "1.0.0.post1", "1.0.1", "2.0.0", "v10.0", "1!0.1",
    ]
    assert sorted(reversed(ordered), key=version_key) == ordered  # noqa: C414  a key that sorts nothing passes in order
    assert version_key("1.0")[1] == version_key("1.0.0")[1]  # equal as versions; the text breaks the tie


# -- names are validated where they are made ---------------------------------------------------------


@pytest.mark.parametrize("field,value", [("name", "../../x"), ("name", "a/b"), ("version", "../1"), ("version", "aliases")])
def test_save_refuses_names_a_store_could_not_hold(field, value, search, titanic, tmp_path):
    with pytest.raises(blackbox.UsageError, match=re.escape(repr(value))):
        blackbox.save(search, tmp_path / "m.bbx", train_data=titanic[0], **{"name": "titanic", "version": "1.0.0", field: value})
    assert list(tmp_path.iterdir()) == []
