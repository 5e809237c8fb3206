"""Following a store alias: new releases swap in, broken ones never do, and no request fails meanwhile."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import blackbox
from blackbox.artifact import unpack
from serving import create_app

from _helpers import Server, call, resign, wait_for


@pytest.fixture(scope="module")
def releases(search, titanic, tmp_path_factory) -> dict[str, Path]:
    """Versions 1.0.0 and 2.0.0 of the model, and a validly signed 3.0.0 that fails its self-test."""
    X_train = titanic[0]
    root = tmp_path_factory.mktemp("releases")
    paths = {v: blackbox.save(search, root / f"{v}.bbx", train_data=X_train, name="titanic", version=v) for v in ("1.0.0", "2.0.0")}
    manifest = unpack(paths["2.0.0"].read_bytes()).manifest()
    manifest["version"] = "3.0.0"
    manifest["golden"]["predictions"] = [1 - p for p in manifest["golden"]["predictions"]]
    paths["3.0.0"] = root / "3.0.0.bbx"
    paths["3.0.0"].write_bytes(resign(paths["2.0.0"].read_bytes(), manifest))
    return paths


@pytest.fixture
def store(releases, tmp_path) -> blackbox.Store:
    store = blackbox.Store.open(tmp_path / "store")
    for path in releases.values():
        store.push(path)
    store.promote("titanic", "1.0.0", "production")
    return store


@pytest.fixture(scope="module")
def records(titanic) -> list[dict]:
    return json.loads(titanic[0].head(20).to_json(orient="records"))


def test_reload_swaps_good_releases_and_refuses_broken_ones(store, records, tmp_path):
    app = create_app({"STORE": str(store.uri), "MODEL": "titanic@production", "POLL_INTERVAL": 0,
                      "CACHE_DIR": str(tmp_path / "cache")})
    client = app.test_client()
    assert client.post("/predict", json=records).get_json()["model"]["version"] == "1.0.0"
    assert client.post("/reload").get_json()["result"] == "unchanged"

    store.promote("titanic", "2.0.0", "production")
    swapped = client.post("/reload")
    assert swapped.status_code == 200 and swapped.get_json()["result"] == "swapped"
    assert swapped.get_json()["previous_version"] == "1.0.0"
    assert client.post("/predict", json=records).get_json()["model"]["version"] == "2.0.0"

    store.promote("titanic", "3.0.0", "production")
    failed = client.post("/reload")
    assert failed.status_code == 409 and failed.get_json()["code"] == "self_test_failed"
    assert client.post("/predict", json=records).get_json()["model"]["version"] == "2.0.0"  # old model still serves
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["reload"]["result"] == "failed"
    assert client.get("/model").get_json()["reload"]["reason"]
    assert client.post("/reload").get_json()["result"] == "failed"  # known bad: not loaded again
    assert "blackbox_reloads_total{model=\"titanic\",result=\"failed\"} 1.0" in client.get("/metrics").get_data(as_text=True)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'blackbox_reloads_total{model="titanic",result="failed"} 1.0' in metrics
    assert 'blackbox_reloads_total{model="titanic",result="swapped"} 1.0' in metrics

    store.rollback("titanic", "production")  # back to 2.0.0: what already serves
    assert client.post("/reload").get_json() | {"checked_at": None} == {
        "ref": "titanic@production", "store": store.uri, "result": "unchanged", "version": "2.0.0", "checked_at": None,
        "served_from": "store",
    }


def test_a_server_serving_a_file_cannot_reload(saved):
    client = create_app({"ARTIFACT": str(saved)}).test_client()
    answer = client.post("/reload")
    assert answer.status_code == 409 and "store" in answer.get_json()["error"]["message"]


def test_store_and_artifact_together_are_refused(saved, store):
    with pytest.raises(blackbox.UsageError, match="not a mix"):
        create_app({"ARTIFACT": str(saved), "STORE": str(store.uri), "MODEL": "titanic@production"})


@pytest.mark.slow
def test_promotions_under_load_fail_no_request(store, records, tmp_path):
    """gunicorn, 2 workers polling every 0.3 s: promote 2.0.0, then broken 3.0.0, then roll back."""
    server = Server(["--store", str(store.uri), "--model", "titanic@production", "--poll-interval", "0.3",
                     "--workers", "2", "--cache-dir", str(tmp_path / "cache")], tmp_path / "server.log")
    versions: Counter[str] = Counter()
    failures: list[tuple[int, bytes]] = []
    stop = threading.Event()
    first_seen: dict[str, float] = {}

    def load() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            status, body = call(server.url + "/predict", records[:3])
            if status != 200:
                failures.append((status, body[:200]))
                continue
            version = json.loads(body)["model"]["version"]
            versions[version] += 1
            first_seen.setdefault(version, time.monotonic())

    try:
        server.wait_ready(workers=2)
        clients = [threading.Thread(target=load) for _ in range(4)]
        for c in clients:
            c.start()
        time.sleep(1.5)
        promoted = time.monotonic()
        store.promote("titanic", "2.0.0", "production")
        wait_for(lambda: _all_workers_on(server, "2.0.0"), seconds=20)
        swap_seconds = time.monotonic() - promoted
        store.promote("titanic", "3.0.0", "production")
        # every worker vets 3.0.0 (in a child: a few seconds), refuses it, and keeps polling
        wait_for(lambda: server.log.read_text().count('"event":"reload_failed"') >= 2, seconds=60)
        time.sleep(1.0)  # more polls: the refused release is not tried again
        store.rollback("titanic", "production")
        time.sleep(1.0)
        stop.set()
        for c in clients:
            c.join()
        failed_reloads = server.metric("blackbox_reloads_total", result="failed")
    finally:
        stop.set()
        assert server.stop() == 0
    assert failures == []
    assert set(versions) == {"1.0.0", "2.0.0"} and versions["2.0.0"] > 0
    assert failed_reloads == 2  # each worker tried the broken release once, not at every poll
    assert '"event":"reload_failed"' in server.log.read_text()
    print(f"\nswap: all workers on 2.0.0 {swap_seconds:.2f}s after promote; requests {dict(versions)}; "
          f"failed reloads {failed_reloads:.0f}")


def _all_workers_on(server: Server, version: str) -> bool:
    swapped = [json.loads(line)["pid"] for line in server.log.read_text().splitlines()
               if line.startswith("{") and '"event":"model_swapped"' in line and f'"version":"{version}"' in line]
    return len(set(swapped)) >= 2
