"""Follow-ups of #15-#17 on the load path: revocation whatever way keys are given, manifests of the wrong
shape, payloads that are not estimators.

Each test failed before its fix: a revoked key given with trusted_keys= was trusted; inspect of a
``{}`` manifest was a KeyError traceback; a payload unpickling to None loaded.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

import blackbox
from blackbox import signing
from blackbox.artifact import unpack
from blackbox.cli import main as blackbox_cli
from blackbox.errors import ArtifactError

from _helpers import resign


def kid_of(keys) -> str:
    return signing.key_id(signing.load_private_key(keys["private"]).public_key())


# -- 1. BLACKBOX_REVOKED_KEYS applies to every way keys are given ------------------------------------------


def explicit_keys(keys) -> dict[str, object]:
    public = signing.serialization.load_pem_public_key(Path(keys["public"]).read_bytes())
    return {
        "a str path": str(keys["public"]),
        "a list of paths": [str(keys["public"])],
        "a Path": Path(keys["public"]),
        "a directory": Path(keys["public"]).parent,
        "a public key": public,
        "a Keyring built by hand": signing.Keyring({signing.key_id(public): public}),
        "a Keyring from_paths": signing.Keyring.from_paths([keys["public"]]),
    }


def test_revoked_keys_env_applies_to_explicit_trusted_keys(artifact, keys, monkeypatch):
    assert blackbox.load(artifact, trusted_keys=[str(keys["public"])]).version == "1.0.0"
    monkeypatch.setenv(signing.REVOKED_KEYS_ENV, f"0123456789abcdef, {kid_of(keys)}")
    for how, trusted in explicit_keys(keys).items():
        with pytest.raises(blackbox.AuthenticityError, match="revoked") as caught:
            blackbox.load(artifact, trusted_keys=trusted)
        assert kid_of(keys) in caught.value.message, how
    with pytest.raises(blackbox.AuthenticityError, match="revoked"):
        blackbox.load(artifact)  # the environment's keys: revoked as before
    assert not blackbox.inspect(artifact, trusted_keys=[keys["public"]])["signature"]["valid"]


def test_revoked_keys_env_applies_to_a_store_pointer(artifact, keys, tmp_path, monkeypatch):
    store = blackbox.Store.open(tmp_path / "store")
    store.push(artifact)
    store.promote("titanic", "1.0.0", "production")
    assert store.resolve("titanic@production", trusted_keys=[keys["public"]]).version == "1.0.0"
    monkeypatch.setenv(signing.REVOKED_KEYS_ENV, kid_of(keys))
    for how, trusted in explicit_keys(keys).items():
        with pytest.raises(blackbox.AuthenticityError, match="revoked") as caught:
            store.resolve("titanic@production", trusted_keys=trusted)
        assert "production.json" in caught.value.message, how


def test_the_cli_refuses_a_revoked_key_given_with_trusted_keys(artifact, keys, monkeypatch, capsys):
    monkeypatch.setenv(signing.REVOKED_KEYS_ENV, kid_of(keys))
    code = blackbox_cli(["inspect", str(artifact), "--trusted-keys", str(keys["public"]), "--require-valid"])
    assert code == blackbox.AuthenticityError.exit_code
    assert "revoked" in capsys.readouterr().out


# -- 5. a manifest of the wrong shape is a malformed artifact (exit 3) in every command ---------------------


def wrong_shapes(manifest: dict) -> dict[str, dict]:
    return {
        "empty": {},
        "no name": {k: v for k, v in manifest.items() if k != "name"},
        "no schema": {k: v for k, v in manifest.items() if k != "schema"},
        "serializer a string": {**manifest, "serializer": "dill"},
        "payload a list": {**manifest, "payload": []},
        "version a number": {**manifest, "version": 1},
        "python without version": {**manifest, "python": {}},
        "golden without records": {**manifest, "golden": {"predictions": []}},
    }


@pytest.fixture(scope="module")
def malformed(artifact, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("malformed")
    data = artifact.read_bytes()
    out = {}
    for i, (how, manifest) in enumerate(wrong_shapes(unpack(data).manifest()).items()):
        out[how] = root / f"case{i}.bbx"
        out[how].write_bytes(resign(data, manifest))
    return out


def test_a_manifest_of_the_wrong_shape_is_a_malformed_artifact(malformed, capsys):
    for how, path in malformed.items():
        with pytest.raises(ArtifactError, match="manifest") as caught:
            blackbox.load(path)
        assert "damaged" in caught.value.message, (how, caught.value.message)
        with pytest.raises(ArtifactError, match="manifest"):
            blackbox.inspect(path)
        for command in (["inspect"], ["inspect", "--json"], ["verify"], ["requirements"]):
            capsys.readouterr()
            code = blackbox_cli([*command, str(path)])
            captured = capsys.readouterr()
            assert code == ArtifactError.exit_code, (how, command, captured)
            assert "Traceback" not in captured.err and "manifest" in captured.err, (how, command, captured.err)


def test_inspect_prints_a_well_shaped_manifest_with_odd_optional_values(artifact, tmp_path, capsys):
    data = artifact.read_bytes()
    manifest = unpack(data).manifest()
    odd = {**manifest, "metrics": {"search": {"best_score": None, "scoring": "accuracy"}}, "by_value": [1],
           "schema": {**manifest["schema"], "columns": None, "fields": ["age"]}}
    path = tmp_path / "odd.bbx"
    path.write_bytes(resign(data, odd))
    capsys.readouterr()
    assert blackbox_cli(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cv accuracy  None" in out and "by value      1" in out


# -- 7. a payload that is not an estimator is refused ------------------------------------------------------


@pytest.mark.parametrize("payload", [None, {"predict": "not callable"}, [1, 2, 3]], ids=["None", "dict", "list"])
def test_a_payload_that_is_not_an_estimator_is_refused(artifact, payload, tmp_path):
    data = artifact.read_bytes()
    pickled = pickle.dumps(payload, protocol=5)
    manifest = {**unpack(data).manifest(), "payload": {"sha256": hashlib.sha256(pickled).hexdigest(), "size": len(pickled)}}
    path = tmp_path / "not-an-estimator.bbx"
    path.write_bytes(resign(data, manifest, pickled))
    with pytest.raises(ArtifactError) as caught:
        blackbox.load(path)
    message = caught.value.message
    assert type(payload).__name__ in message and "sklearn" in message and "scikit-learn estimator" in message, message
