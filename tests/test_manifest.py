"""The typed manifest (#18): exact round trips over real artifacts, old and new keys, strict errors (exit 3)."""

from __future__ import annotations

import copy
import json

import pytest

import blackbox
from blackbox.artifact import dump_manifest, pack, read_header, unpack
from blackbox.cli import main
from blackbox.manifest import FastPath, Manifest


def json_of(path) -> dict:
    return json.loads(read_header(path)[0])


@pytest.fixture(scope="module")
def without_fast_path(search, titanic, tmp_path_factory):
    return blackbox.save(search, tmp_path_factory.mktemp("manifest") / "slow.bbx", train_data=titanic[0],
                         fast_path=False, name="titanic", version="2.0.0")


def test_every_artifact_round_trips_exactly(saved, without_fast_path):
    """Both serializers (saved is parametrized), with and without the fast path: to_json(from_json(d)) == d."""
    for path in (saved, without_fast_path):
        data = json_of(path)
        manifest = Manifest.from_json(data)
        assert manifest.to_json() == data
        assert dump_manifest(manifest.to_json()) == read_header(path)[0]  # the signed bytes, exactly
    assert Manifest.from_json(json_of(without_fast_path)).fast_path == FastPath(enabled=False, reason="fast_path=False",
                                                                                absent=frozenset({"steps", "speedup"}))


def test_typed_attributes_read_what_the_json_says(saved):
    data = json_of(saved)
    m = blackbox.load(saved).manifest
    assert (m.name, m.version, m.payload.sha256, m.serializer.name) == (
        "titanic", "1.0.0", data["payload"]["sha256"], data["serializer"]["name"])
    assert m.classes == data["output"]["classes"] and m.has_proba and not m.is_regressor
    assert m.golden.records == data["golden"]["records"] and m.fast_path_enabled
    assert m.metric_group("holdout") == {"accuracy": 0.8} and m.metric_group("nothing") == {}


def test_an_old_manifest_keeps_its_absent_keys_absent(saved):
    """Older artifacts lack fast_path, features, estimator...: they read as None and are written back absent."""
    data = json_of(saved)
    for key in ("fast_path", "features", "estimator", "blackbox_version", "profile", "recipe", "metadata", "created_at"):
        data.pop(key, None)
    del data["golden"]["probabilities"], data["python"]["implementation"]
    manifest = Manifest.from_json(data)
    assert manifest.fast_path is None and manifest.created_at is None and manifest.golden.probabilities is None
    assert manifest.to_json() == data


def test_a_newer_blackbox_s_keys_are_kept_in_extra(saved):
    data = json_of(saved)
    data["attestation"] = {"kind": "slsa", "level": 3}
    data["payload"]["compression"] = "zstd"
    manifest = Manifest.from_json(data)
    assert manifest.extra == {"attestation": {"kind": "slsa", "level": 3}}
    assert manifest.payload.extra == {"compression": "zstd"}
    assert manifest.to_json() == data


@pytest.mark.parametrize(
    "mutate, says",
    [
        (lambda d: d.pop("name"), "name should be a string, is missing"),
        (lambda d: d.update(name=""), "name should be a string, is empty"),
        (lambda d: d.update(format_version="1"), "format_version should be an integer, is a string"),
        (lambda d: d.update(serializer="dill"), "serializer should be an object, is a string"),
        (lambda d: d["payload"].update(size=True), "payload.size should be an integer, is a boolean"),
        (lambda d: d["golden"].pop("predictions"), "golden.predictions should be an array, is missing"),
        (lambda d: d.update(requirements=["numpy"]), "requirements should be an object or null, is an array"),
        (lambda d: d["git"].update(dirty="no"), "git.dirty should be a boolean or null, is a string"),
        (lambda d: d["fast_path"].update(enabled=1), "fast_path.enabled should be a boolean or null, is an integer"),
    ],
)
def test_from_json_is_strict_and_says_where(saved, mutate, says):
    data = copy.deepcopy(json_of(saved))
    mutate(data)
    with pytest.raises(blackbox.ArtifactError, match="malformed") as caught:
        Manifest.from_json(data)
    assert says in caught.value.message and caught.value.exit_code == 3


def test_a_wrong_shaped_manifest_is_exit_3_in_the_cli(saved, tmp_path, capsys):
    data = json_of(saved)
    data["golden"]["records"] = "none"
    bad = tmp_path / "bad.bbx"
    bad.write_bytes(pack(dump_manifest(data), unpack(saved.read_bytes()).payload))
    assert main(["inspect", str(bad)]) == 3
    assert "golden.records should be an array, is a string" in capsys.readouterr().err


def test_load_still_refuses_what_it_cannot_load_while_inspect_reads_it(saved):
    data = json_of(saved)
    data["serializer"]["name"] = "marshal"
    manifest = Manifest.from_json(data)
    with pytest.raises(blackbox.ArtifactError, match="serializer 'marshal'"):
        manifest.check_loadable(1, ("dill", "cloudpickle"))
    with pytest.raises(blackbox.ArtifactError, match="format 2"):
        Manifest.from_json({**data, "format_version": 2}).check_loadable(1, ("marshal",))


def test_the_model_endpoint_is_the_manifest_json_without_golden_and_source(client, served_model):
    body = client.get("/model").get_json()
    body.pop("reload", None)
    expected = {k: v for k, v in served_model.manifest.to_json().items() if k not in ("golden", "source")}
    assert body == expected
