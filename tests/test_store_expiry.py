"""Signed alias pointers may expire (as The Update Framework's metadata does): a frozen store cannot serve one forever.

Someone who can write to the store but holds no key cannot forge a newer pointer,
but can keep putting back the current one, so that no new release ever reaches
the servers. A pointer promoted with ``expires_in`` is refused once that time has
passed; the publisher re-signs it by promoting the same version again. ``list``
shows each alias's expiry, and an expired alias as expired, with that remedy.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import time

import pytest

import blackbox
from blackbox.cli import main
from serving import create_app

from _helpers import run_cli, variant

SOON = dt.timedelta(seconds=2)


@pytest.fixture
def store(artifact, tmp_path):
    root = tmp_path / "store"
    store = blackbox.Store.open(root)
    for path in (artifact, variant(artifact, tmp_path, "2.0.0")):
        store.push(path)
    store.promote("titanic", "1.0.0", "production")
    return root, store


def expires_at(root, alias: str = "production") -> dt.datetime:
    claims = json.loads((root / "titanic" / "aliases" / f"{alias}.json").read_text())["signature"]
    return dt.datetime.strptime(claims["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def wait_past(moment: dt.datetime) -> None:
    time.sleep(max(0.0, (moment - dt.datetime.now(dt.UTC)).total_seconds()) + 0.05)


def test_an_expired_pointer_is_refused_and_promoting_again_re_signs_it(store):
    root, store_ = store
    store_.promote("titanic", "2.0.0", "production", expires_in=SOON)
    release = store_.resolve("titanic@production")
    assert release.version == "2.0.0" and release.pointer.expires_at is not None
    wait_past(expires_at(root))
    with pytest.raises(blackbox.AuthenticityError, match=r"alias pointer of titanic@production, expired at .*--expires-in"):
        store_.resolve("titanic@production")
    assert [r.version for r in store_.list("titanic")] == ["1.0.0", "2.0.0"]  # the releases stay listed

    store_.promote("titanic", "2.0.0", "production")  # the publisher re-signs it (here: to never expire)
    release = store_.resolve("titanic@production")
    assert release.version == "2.0.0" and release.pointer.expires_at is None
    assert store_.rollback("titanic", "production").version == "1.0.0"  # the history survived the expiry


def test_an_expiry_needs_a_signature_and_a_positive_duration(store):
    _, store_ = store
    with pytest.raises(blackbox.UsageError, match="unsigned pointer cannot expire"):
        _unsigned_promote(store_)
    with pytest.raises(blackbox.UsageError, match="positive duration"):
        store_.promote("titanic", "2.0.0", "staging", expires_in=dt.timedelta(0))


def _unsigned_promote(store_):
    import os

    from blackbox.signing import SIGNING_KEY_ENV

    saved = os.environ.pop(SIGNING_KEY_ENV, None)
    try:
        return store_.promote("titanic", "2.0.0", "staging", expires_in=SOON, allow_unsigned=True)
    finally:
        if saved is not None:
            os.environ[SIGNING_KEY_ENV] = saved


def test_a_following_server_keeps_serving_when_the_pointer_expires_and_says_why(store, tmp_path, titanic):
    root, store_ = store
    store_.promote("titanic", "2.0.0", "production", expires_in=SOON)
    client = create_app({"STORE": str(root), "MODEL": "titanic@production", "POLL_INTERVAL": 0,
                         "CACHE_DIR": str(tmp_path / "cache")}).test_client()
    records = json.loads(titanic[0].head(2).to_json(orient="records"))
    assert client.post("/predict", json=records).get_json()["model"]["version"] == "2.0.0"
    wait_past(expires_at(root))
    answer = client.post("/reload")
    body = answer.get_json()
    assert answer.status_code == 409 and body["code"] == "authenticity" and "expired at" in body["reason"], body
    assert client.post("/predict", json=records).get_json()["model"]["version"] == "2.0.0"  # what serves stays
    store_.promote("titanic", "2.0.0", "production", expires_in=dt.timedelta(days=1))  # re-signed
    assert client.post("/reload").status_code == 200


def test_cli_promote_expires_in_days(store, capsys):
    root, _ = store
    assert main(["promote", str(root), "titanic", "2.0.0", "--alias", "production", "--expires-in", "30"]) == 0
    assert "the pointer expires in 30 days" in capsys.readouterr().out
    left = expires_at(root) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29, hours=23) < left <= dt.timedelta(days=30)
    for days in ("0", "3000000"):  # none, and past the year 9999 (an OverflowError traceback before)
        assert main(["promote", str(root), "titanic", "2.0.0", "--alias", "production", "--expires-in", days]) == 2
    with pytest.raises(blackbox.UsageError, match="after the year 9999"):
        blackbox.Store.open(root).promote("titanic", "2.0.0", "production", expires_in=dt.timedelta(days=3_000_000))


def resign(root, alias: str, private_key, expires_at) -> None:
    """Re-sign ALIAS's pointer as it stands, with the trusted key, claiming ``expires_at`` (whatever it is)."""
    from blackbox import signing
    from blackbox.store import pointers

    path = root / "titanic" / "aliases" / f"{alias}.json"
    path.write_bytes(pointers.seal(json.loads(path.read_text())["signed"], signing.load_private_key(private_key), expires_at))


def expire(root, alias: str, private_key) -> str:
    """Re-sign ALIAS's pointer as it stands with an expiry a day ago (its term ran out); return that expiry."""
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    resign(root, alias, private_key, past)
    return past


def test_list_shows_expiries_and_an_expired_alias_marked_with_what_to_do(store, keys, capsys, caplog, tmp_path):
    root, store_ = store
    store_.promote("titanic", "2.0.0", "staging", expires_in=dt.timedelta(days=30))
    store_.promote("titanic", "1.0.0", "canary")
    staging = expires_at(root, "staging").strftime("%Y-%m-%dT%H:%M:%SZ")
    expired = expire(root, "production", keys["private"])
    canary = root / "titanic" / "aliases" / "canary.json"  # edited after it was signed: not believed at all
    canary.write_text(canary.read_text().replace('"rollback": false', '"rollback": true'))

    code, out, err = run_cli(capsys, "list", root, "titanic", "--json")
    assert code == 0, err
    listed = {r["version"]: r for r in json.loads(out)}
    pointers = {v: {p["alias"]: p for p in r["alias_pointers"]} for v, r in listed.items()}
    assert set(pointers["1.0.0"]) == {"production"} and set(pointers["2.0.0"]) == {"latest", "staging"}
    assert pointers["2.0.0"]["staging"]["expires_at"] == staging and not pointers["2.0.0"]["staging"]["expired"]
    assert pointers["2.0.0"]["latest"]["expires_at"] is None
    assert pointers["1.0.0"]["production"]["expires_at"] == expired and pointers["1.0.0"]["production"]["expired"]
    assert listed["1.0.0"]["aliases"] == [] and listed["2.0.0"]["aliases"] == ["latest", "staging"]  # what readers resolve
    assert "titanic@production" in err and "--expires-in" in err
    assert "Not listing alias titanic@canary" in caplog.text and "edited after it was signed" in caplog.text
    assert "titanic@production" not in caplog.text  # listed, not warned about as unbelievable

    code, out, err = run_cli(capsys, "list", root)
    assert code == 0, err
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("titanic ")}
    assert f"production (EXPIRED {expired})" in rows["1.0.0"]
    assert f"latest,staging (expires {staging})" in rows["2.0.0"] and "canary" not in out
    note = next(line for line in out.splitlines() if "titanic@production" in line)
    resign_with = "--alias production --expires-in DAYS --signing-key KEY"  # what the reader's refusal says too
    assert "readers refuse it" in note and f"blackbox promote {root} titanic 1.0.0 {resign_with}" in note

    with pytest.raises(blackbox.AuthenticityError, match="expired at") as refused:  # readers keep refusing it
        store_.resolve("titanic@production")
    assert f"blackbox promote STORE titanic VERSION {resign_with}" in refused.value.message
    code, _, err = run_cli(capsys, "pull", root, "titanic@production", "-o", tmp_path / "pulled.bbx")
    assert code == 4 and "expired at" in err and not (tmp_path / "pulled.bbx").exists()
    assert [r.aliases for r in store_.list("titanic")] == [(), ("latest", "staging")]


def test_the_resign_hint_quotes_a_store_path_a_shell_would_split(artifact, keys, capsys, tmp_path):
    root = tmp_path / "my models; v2"
    store_ = blackbox.Store.open(root)
    store_.push(artifact)
    store_.promote("titanic", "1.0.0", "production")
    expire(root, "production", keys["private"])
    code, out, err = run_cli(capsys, "list", root)
    assert code == 0, err
    note = next(line for line in out.splitlines() if "titanic@production" in line)
    assert f"blackbox promote {shlex.quote(str(root))} titanic 1.0.0 --alias production" in note, note


ODD_EXPIRIES = [12345, 0, ["2099-01-01T00:00:00Z"], {"at": "2099-01-01T00:00:00Z"}, True, "", "not-a-time",
                "2099-13-01T00:00:00Z", "2099-1-1T00:00:00Z", "2099-01-01T00:00:00+00:00", " 2099-01-01T00:00:00Z"]


@pytest.mark.parametrize("odd", ODD_EXPIRIES, ids=repr)
def test_a_trusted_pointer_with_a_malformed_expiry_is_refused_by_readers_and_left_out_of_list(store, keys, odd, capsys,
                                                                                              caplog, tmp_path):
    """The signer writes a UTC timestamp or nothing: anything else is a malformed pointer, neither expired nor valid.

    Before: a non-string raised a raw TypeError from resolve and crashed ``list``; a bad string was listed as
    EXPIRED; "" and 0 were believed as never expiring.
    """
    root, store_ = store
    store_.promote("titanic", "2.0.0", "staging", expires_in=dt.timedelta(days=30))
    resign(root, "production", keys["private"], odd)

    with pytest.raises(blackbox.AuthenticityError) as refused:
        store_.resolve("titanic@production")
    message = refused.value.message
    assert "titanic@production" in message and "expiry" in message and repr(odd) in message, message
    assert "blackbox promote STORE titanic VERSION --alias production --expires-in DAYS --signing-key KEY" in message
    code, _, err = run_cli(capsys, "pull", root, "titanic@production", "-o", tmp_path / "pulled.bbx")
    assert code == 4 and "expiry" in err and not (tmp_path / "pulled.bbx").exists()

    caplog.clear()
    code, out, err = run_cli(capsys, "list", root, "titanic", "--json")
    assert code == 0, err
    listed = {r["version"]: r for r in json.loads(out)}
    assert listed["1.0.0"]["alias_pointers"] == [] and listed["1.0.0"]["aliases"] == []
    assert listed["2.0.0"]["aliases"] == ["latest", "staging"]  # everything else is listed
    assert f"Not listing alias titanic@production: {message}" in caplog.text  # the reader's own words
    code, out, err = run_cli(capsys, "list", root)
    assert code == 0, err
    assert "production" not in out and "EXPIRED" not in out and "(expires )" not in out and "expired at" not in err
    assert [r.aliases for r in store_.list("titanic")] == [(), ("latest", "staging")]


def test_a_well_formed_expiry_is_still_believed_until_it_passes(store, keys):
    """The stricter check refuses only malformed expiries: a future timestamp is believed, a past one is expired."""
    root, store_ = store
    resign(root, "production", keys["private"], "2099-01-01T00:00:00Z")
    assert store_.resolve("titanic@production").pointer.expires_at == "2099-01-01T00:00:00Z"
    resign(root, "production", keys["private"], None)
    assert store_.resolve("titanic@production").pointer.expires_at is None
    expire(root, "production", keys["private"])
    with pytest.raises(blackbox.AuthenticityError, match="expired at"):
        store_.resolve("titanic@production")
