"""A server following a store alias: write access to the store is not enough to change what it serves.

The attacker here can write any file in the store but holds no signing key
(issue #16): they edit a pointer, plant another model's (or another alias's)
validly signed pointer, or put back an older, validly signed one. The server
keeps serving what it served, and says why in its reload status.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import blackbox
from serving import create_app

from _helpers import variant


@pytest.fixture
def store(artifact, tmp_path) -> tuple[Path, blackbox.Store]:
    """titanic 1.0.0 and 2.0.0, other 1.0.0; titanic@production promoted 1.0.0 then 2.0.0 (old pointer kept)."""
    root = tmp_path / "store"
    store = blackbox.Store.open(root)
    for path in (artifact, variant(artifact, tmp_path, "2.0.0"), variant(artifact, tmp_path, "1.0.0", name="other")):
        store.push(path)
    store.promote("other", "1.0.0", "production")
    store.promote("titanic", "1.0.0", "staging")
    store.promote("titanic", "1.0.0", "production")
    (tmp_path / "production-1.0.0.json").write_bytes(pointer(root).read_bytes())
    store.promote("titanic", "2.0.0", "production")
    return root, store


def pointer(root: Path, alias: str = "production", name: str = "titanic") -> Path:
    return root / name / "aliases" / f"{alias}.json"


@pytest.fixture
def client(store, tmp_path):
    root, _ = store
    app = create_app({"STORE": str(root), "MODEL": "titanic@production", "POLL_INTERVAL": 0,
                      "CACHE_DIR": str(tmp_path / "cache")})
    return app.test_client()


@pytest.fixture(scope="module")
def records(titanic) -> list[dict]:
    return json.loads(titanic[0].head(3).to_json(orient="records"))


def served(client, records) -> str:
    answer = client.post("/predict", json=records)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()["model"]["version"]


def refused(client, match: str) -> None:
    """POST /reload is refused as an authenticity failure whose reason contains ``match``."""
    answer = client.post("/reload")
    body = answer.get_json()
    assert answer.status_code == 409 and body["result"] == "failed" and body["code"] == "authenticity", body
    assert match in body["reason"], body["reason"]


def test_forged_pointers_are_refused_by_a_following_server(store, client, records, tmp_path):
    root, store_ = store
    assert served(client, records) == "2.0.0"
    genuine = pointer(root).read_bytes()
    one, two = store_.resolve("titanic@1.0.0"), store_.resolve("titanic@2.0.0")

    pointer(root).write_text(genuine.decode().replace(two.sha256, one.sha256).replace('"2.0.0"', '"1.0.0"'))
    refused(client, "edited after it was signed")
    assert served(client, records) == "2.0.0"

    pointer(root).write_bytes(pointer(root, name="other").read_bytes())  # another model's signed pointer
    refused(client, "other@production")
    pointer(root).write_bytes(pointer(root, "staging").read_bytes())  # another alias's signed pointer
    refused(client, "titanic@staging")
    assert served(client, records) == "2.0.0"
    assert client.get("/ready").status_code == 200

    pointer(root).write_bytes(genuine)
    assert client.post("/reload").get_json()["result"] == "unchanged"


def test_a_replayed_older_pointer_is_refused_by_a_following_server(store, client, records, tmp_path):
    root, _ = store
    assert served(client, records) == "2.0.0"
    pointer(root).write_bytes((tmp_path / "production-1.0.0.json").read_bytes())  # validly signed, but older
    refused(client, "older pointer")
    assert served(client, records) == "2.0.0"


def test_a_signed_rollback_swaps_the_server_back(store, client, records):
    root, store_ = store
    assert served(client, records) == "2.0.0"
    store_.rollback("titanic", "production")
    answer = client.post("/reload").get_json()
    assert answer["result"] == "swapped" and answer["version"] == "1.0.0", answer
    assert served(client, records) == "1.0.0"


def test_pointers_are_verified_with_the_servers_own_trusted_keys(store, records, keys, tmp_path, monkeypatch):
    from blackbox.signing import TRUSTED_KEYS_ENV

    root, store_ = store
    monkeypatch.delenv(TRUSTED_KEYS_ENV)  # only --trusted-keys (LOAD_OPTIONS) says whom to trust
    app = create_app({"STORE": str(root), "MODEL": "titanic@production", "POLL_INTERVAL": 0,
                      "CACHE_DIR": str(tmp_path / "cache"), "LOAD_OPTIONS": {"trusted_keys": [str(keys["public"])]}})
    client = app.test_client()
    assert served(client, records) == "2.0.0"
    store_.rollback("titanic", "production", trusted_keys=[keys["public"]])
    assert client.post("/reload").get_json()["result"] == "swapped"
