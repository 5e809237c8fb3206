"""OpenSSF Model Signing (OMS) interop: model_signing signs, Blackbox verifies, and the reverse; key mode, offline.

A verified bundle replaces the header signature as the authenticity proof, and
Blackbox's own checks still run: expiry (of a header block the bundle covers),
environment, payload integrity and the golden sample.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import blackbox
from blackbox import signing
from blackbox.artifact import dump_manifest, pack, unpack
from blackbox.cli import main as blackbox_cli

model_signing = pytest.importorskip("model_signing")


@pytest.fixture()
def ec(tmp_path) -> dict[str, Path]:
    private, public = signing.keygen(tmp_path / "ec", "oms", key_type="ec-p256")
    return {"private": private, "public": public}


def oms_sign(path: Path, private: Path) -> Path:
    """Sign ``path`` the way an OMS user does, with the model_signing API itself."""
    bundle = path.with_name(path.name + ".sig")
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).sign(path, bundle)
    return bundle


def unsigned_copy(saved: Path, tmp_path: Path, name: str = "oms.bbx", **changes) -> Path:
    parts = unpack(saved.read_bytes())
    manifest_bytes = dump_manifest({**parts.manifest(), **changes}) if changes else parts.manifest_bytes
    path = tmp_path / name
    path.write_bytes(pack(manifest_bytes, parts.payload))
    return path


def test_model_signing_signs_and_blackbox_verifies(saved, ec, tmp_path):
    path = unsigned_copy(saved, tmp_path)
    bundle = oms_sign(path, ec["private"])
    with pytest.raises(blackbox.AuthenticityError, match="unsigned"):
        blackbox.load(path, trusted_keys=[ec["public"]])  # no header signature, no bundle: refused
    model = blackbox.load(path, trusted_keys=[ec["public"]], oms_bundle=bundle)
    model.self_test()
    assert model.name == "titanic" and model.version == "1.0.0"
    # a renamed copy verifies (OMS names the single file "."); the manifest, not the file name, says which model it is
    renamed = tmp_path / "renamed.bbx"
    renamed.write_bytes(path.read_bytes())
    assert blackbox.load(renamed, trusted_keys=[ec["public"]], oms_bundle=bundle).version == "1.0.0"
    # the CLI: blackbox verify in its isolated child, with the bundle as the proof
    assert blackbox_cli(["verify", str(path), "--oms-bundle", str(bundle), "--trusted-keys", str(ec["public"])]) == 0


def test_the_bundle_covers_every_byte_including_the_manifest(saved, ec, tmp_path, keys):
    path = unsigned_copy(saved, tmp_path)
    bundle = oms_sign(path, ec["private"])
    parts = unpack(path.read_bytes())
    renamed_version = tmp_path / "edited.bbx"  # same payload, the manifest's version edited after OMS signing
    renamed_version.write_bytes(pack(dump_manifest({**parts.manifest(), "version": "9.9.9"}), parts.payload))
    with pytest.raises(blackbox.AuthenticityError, match="OpenSSF"):
        blackbox.load(renamed_version, trusted_keys=[ec["public"]], oms_bundle=bundle)
    # a header signature added after OMS signing changes the file too
    header_signed = tmp_path / "header.bbx"
    header_signed.write_bytes(path.read_bytes())
    blackbox.sign(header_signed, keys["private"])
    with pytest.raises(blackbox.AuthenticityError, match="OpenSSF"):
        blackbox.load(header_signed, trusted_keys=[ec["public"]], oms_bundle=bundle)


def test_the_bundles_key_must_be_trusted_and_not_revoked(saved, ec, keys, tmp_path):
    path = unsigned_copy(saved, tmp_path)
    bundle = oms_sign(path, ec["private"])
    with pytest.raises(blackbox.AuthenticityError, match="not among the trusted keys"):
        blackbox.load(path, trusted_keys=[keys["public"]], oms_bundle=bundle)
    other_private, other_public = signing.keygen(tmp_path / "other", "other", key_type="ec-p256")
    with pytest.raises(blackbox.AuthenticityError, match="not among the trusted keys"):
        blackbox.load(path, trusted_keys=[other_public], oms_bundle=bundle)
    kid = signing.key_id(signing.load_private_key(ec["private"]).public_key())
    revoked = signing.Keyring.from_paths([ec["public"]], revoked=[kid])
    with pytest.raises(blackbox.AuthenticityError, match="revoked"):
        blackbox.load(path, trusted_keys=revoked, oms_bundle=bundle)
    # a bundle by an untrusted key that claims the trusted key's hint does not verify
    forged = tmp_path / "forged.sig"
    mine = json.loads(bundle.read_text())
    theirs = json.loads(oms_sign(path, other_private).read_text())
    theirs["verificationMaterial"] = mine["verificationMaterial"]
    forged.write_text(json.dumps(theirs))
    with pytest.raises(blackbox.AuthenticityError, match="OpenSSF"):
        blackbox.load(path, trusted_keys=[ec["public"]], oms_bundle=forged)
    garbage = tmp_path / "garbage.sig"
    garbage.write_text("{not json")
    with pytest.raises(blackbox.AuthenticityError, match="OpenSSF"):
        blackbox.load(path, trusted_keys=[ec["public"]], oms_bundle=garbage)


def test_blackbox_checks_still_apply_under_an_oms_proof(saved, ec, keys, tmp_path):
    """OMS vouches for bytes; expiry, environment, integrity and the golden sample are Blackbox's to check."""
    trusted = [ec["public"]]
    # expiry: the header block the bundle covers says the artifact expired
    parts = unpack(saved.read_bytes())
    expired = tmp_path / "expired.bbx"
    expired_block = signing.sign(parts.manifest_bytes, signing.load_private_key(keys["private"]), expires_at="2020-01-01T00:00:00Z")
    expired.write_bytes(pack(parts.manifest_bytes, parts.payload, expired_block))
    with pytest.raises(blackbox.AuthenticityError, match="expired"):
        blackbox.load(expired, trusted_keys=trusted, oms_bundle=oms_sign(expired, ec["private"]))
    # environment: the manifest records another Python
    python = {**parts.manifest()["python"], "version": "3.10.14"}
    other_python = unsigned_copy(saved, tmp_path, "python.bbx", python=python)
    with pytest.raises(blackbox.EnvironmentMismatchError, match="3.10.14"):
        blackbox.load(other_python, trusted_keys=trusted, oms_bundle=oms_sign(other_python, ec["private"]))
    # integrity: the signer signed a damaged file; nothing is unpickled
    damaged = tmp_path / "damaged.bbx"
    damaged.write_bytes(pack(parts.manifest_bytes, parts.payload[:-1] + bytes([parts.payload[-1] ^ 1])))
    with pytest.raises(blackbox.IntegrityError):
        blackbox.load(damaged, trusted_keys=trusted, oms_bundle=oms_sign(damaged, ec["private"]))
    # the golden sample: recorded predictions the model does not give
    golden = parts.manifest()["golden"]
    wrong = unsigned_copy(saved, tmp_path, "golden.bbx", golden={**golden, "predictions": [1 - p for p in golden["predictions"]]})
    outcome = blackbox.verify(wrong, trusted_keys=trusted, oms_bundle=oms_sign(wrong, ec["private"]))
    assert not outcome.ok and outcome.exit_code == blackbox.SelfTestError.exit_code, outcome


def test_blackbox_signs_and_model_signing_verifies(saved, ec, tmp_path, capsys):
    path = tmp_path / "both.bbx"
    path.write_bytes(saved.read_bytes())
    # one P-256 key signs the header, then the OMS bundle over the final file
    assert blackbox_cli(["sign", str(path), "--key", str(ec["private"])]) == 0
    before = path.read_bytes()
    assert blackbox_cli(["sign", str(path), "--oms", "--key", str(ec["private"])]) == 0
    assert path.read_bytes() == before  # the bundle is detached: the artifact is not touched
    bundle = Path(str(path) + ".sig")
    assert str(bundle) in capsys.readouterr().out
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=ec["public"]).verify(path, bundle)
    # the same bytes pass either proof in Blackbox
    assert blackbox.load(path, trusted_keys=[ec["public"]]).signer
    assert blackbox.load(path, trusted_keys=[ec["public"]], oms_bundle=bundle).version == "1.0.0"
    # and model_signing refuses a changed file
    path.write_bytes(before[:-1] + bytes([before[-1] ^ 1]))
    with pytest.raises(ValueError, match="mismatch"):
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=ec["public"]).verify(path, bundle)


def test_oms_signing_needs_a_p256_key_and_refuses_a_damaged_artifact(saved, keys, ec, tmp_path):
    path = tmp_path / "a.bbx"
    path.write_bytes(saved.read_bytes())
    assert blackbox_cli(["sign", str(path), "--oms", "--key", str(keys["private"])]) == 2  # Ed25519: OMS takes EC keys
    assert not Path(str(path) + ".sig").exists()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert blackbox_cli(["sign", str(path), "--oms", "--key", str(ec["private"])]) == blackbox.IntegrityError.exit_code
    assert not Path(str(path) + ".sig").exists()


def test_without_model_signing_installed_the_option_says_what_to_install(saved, ec, tmp_path, monkeypatch):
    path = unsigned_copy(saved, tmp_path)
    bundle = oms_sign(path, ec["private"])
    monkeypatch.setitem(sys.modules, "model_signing", None)  # as if not installed
    with pytest.raises(blackbox.UsageError, match=r"blackbox\[oms\]"):
        blackbox.load(path, trusted_keys=[ec["public"]], oms_bundle=bundle)
