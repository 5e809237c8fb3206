"""The model store on S3: the same scenarios as tests/test_store.py, against a real HTTP endpoint.

The endpoint is moto's standalone server, started by this module on 127.0.0.1
in a subprocess (not an in-process mock), reached through s3fs like real S3.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from blackbox.store import Store, StoreError
from blackbox.store.backends import Conflict

from _helpers import (
    PYTHON,
    child_env,
    file_sha256,
    free_port,
    racing_promotes,
    racing_pushes,
    store_round_trip,
    wait_for_url,
)

pytestmark = pytest.mark.slow
pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

SECRET = "secret-that-must-never-be-printed"


@pytest.fixture(scope="module")
def endpoint() -> str:
    """moto's S3 server on a free local port, with dummy credentials in the environment."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    patch = pytest.MonkeyPatch()
    try:
        wait_for_url(f"{url}/moto-api/", server, seconds=30)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url,
        }.items():
            patch.setenv(name, value)
        yield url
    finally:
        patch.undo()
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def uri(endpoint) -> str:
    """A fresh bucket for each test, so that nothing carries over."""
    import fsspec

    bucket = f"bbx-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/models"


def test_round_trip(uri, artifact, tmp_path, capsys):
    store_round_trip(uri, artifact, tmp_path, capsys)


def test_concurrent_pushes_of_one_version(uri, artifact, tmp_path):
    racing_pushes(uri, artifact, tmp_path)


def test_concurrent_promotes_keep_the_alias_whole(uri, artifact, tmp_path):
    racing_promotes(uri, artifact, tmp_path)


def test_the_store_uses_conditional_writes(uri, artifact):
    """The race guarantees come from S3 itself (If-None-Match / If-Match), not from luck."""
    store = Store.open(uri)
    store.push(artifact)
    backend = store._backend
    with pytest.raises(FileExistsError):
        backend.create(("titanic", "1.0.0", "artifact.bbx"), b"not the artifact")
    pointer_key = ("titanic", "aliases", "latest.json")
    data, etag = backend.read_versioned(pointer_key)
    backend.swap(pointer_key, data + b"\n", etag)
    with pytest.raises(Conflict):
        backend.swap(pointer_key, data, etag)  # that ETag is gone now
    with pytest.raises(Conflict):
        backend.swap(pointer_key, data, None)  # "create" when it exists
    assert store.resolve("titanic@1.0.0").sha256 == file_sha256(artifact)


def test_an_interrupted_upload_never_becomes_a_version(uri, artifact, monkeypatch):
    store = Store.open(uri)
    fs = store._backend.fs

    def reset(*args, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(fs, "pipe_file", reset)
    with pytest.raises(StoreError, match="Connection reset by peer"):
        store.push(artifact)
    monkeypatch.undo()
    assert store.list() == []

    # An upload cut off half-way (a multipart upload with one part sent, never completed) is not an object.
    key = f"{uri.removeprefix('s3://')}/titanic/1.0.0/artifact.bbx"
    partial = fs.open(key, "wb", block_size=5 * 2**20)
    partial.write(b"\0" * (6 * 2**20))
    partial.flush()  # sends the first part
    assert Store.open(uri).list() == []
    with pytest.raises(StoreError):
        Store.open(uri).resolve("titanic@1.0.0")
    assert Store.open(uri).push(artifact).sha256 == file_sha256(artifact)
    partial.discard()  # aborts the multipart upload
    partial.closed = True  # so that its finaliser does not try to complete it
    assert Store.open(uri).resolve("titanic").sha256 == file_sha256(artifact)


def test_an_unreachable_store_is_a_store_error_naming_it_without_credentials(endpoint):
    closed = f"http://127.0.0.1:{free_port()}"
    store = Store.open("s3://bucket/models", client_kwargs={"endpoint_url": closed},
                       config_kwargs={"connect_timeout": 1, "retries": {"max_attempts": 1}})
    with pytest.raises(StoreError) as caught:
        store.list()
    assert "s3://bucket/models" in caught.value.message and "reachable" in caught.value.message
    assert SECRET not in caught.value.message
    assert Store.open("s3://KEY:SECRET@bucket/models").uri == "s3://bucket/models"


def test_gc_aborts_unfinished_multipart_uploads_of_the_stores_own_keys(uri, artifact, capsys):
    """A push killed mid-upload leaves parts S3 keeps (and bills) unseen; gc aborts them, and only the store's."""
    store = Store.open(uri)
    store.push(artifact)
    fs = store._backend.fs
    root = uri.removeprefix("s3://")
    bucket = root.partition("/")[0]

    def begin(path: str):
        upload = fs.open(path, "wb", block_size=5 * 2**20)
        upload.write(b"\0" * (6 * 2**20))
        upload.flush()  # sends the first part: a multipart upload, never completed
        return upload

    def pending() -> set[str]:
        return {u["Key"] for u in fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])}

    uploads = {
        "ours": begin(f"{root}/titanic/2.0.0/artifact.bbx"),
        "another app's": begin(f"{bucket}/other-app/data.bin"),  # same bucket, outside the store
        "not a store key": begin(f"{root}/titanic/notes/big.bin"),  # under the store, but never written by it
    }
    others = {f"{bucket}/other-app/data.bin".partition("/")[2], f"{root}/titanic/notes/big.bin".partition("/")[2]}
    assert pending() == {f"{root}/titanic/2.0.0/artifact.bbx".partition("/")[2]} | others
    try:
        # Younger than the limit: could be an upload in flight. (moto reports every upload as initiated
        # 2010-11-10T20:48:33Z, so "younger" here means younger than 10^9 s.)
        assert store.gc(older_than=1e9) == []
        from blackbox.cli import main as blackbox_cli

        capsys.readouterr()
        assert blackbox_cli(["gc", uri, "--older-than", "0"]) == 0
        out = capsys.readouterr().out
        assert f"{uri}/titanic/2.0.0/artifact.bbx (unfinished upload " in out
        assert pending() == others
        assert Store.open(uri).resolve("titanic").sha256 == file_sha256(artifact)  # nothing else was touched
    finally:
        uploads["ours"].closed = True  # aborted by gc: its finaliser must not try to complete it
        for name in ("another app's", "not a store key"):
            uploads[name].discard()
            uploads[name].closed = True
