"""Trust: every refusal happens before unpickling; a marker a malicious payload would create stays absent."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
from pathlib import Path

import pytest

import blackbox
from blackbox import signing
from blackbox.artifact import dump_manifest, pack, unpack
from blackbox.cli import main as blackbox_cli

from _helpers import PYTHON, child_env, marker_payload, resign


class SystemCall:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious(marker: Path) -> bytes:
    return pickle.dumps(SystemCall(marker), protocol=5)


def with_payload(manifest: dict, payload: bytes) -> dict:
    return {**manifest, "payload": {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}}


@pytest.fixture(scope="module")
def cases(saved, keys, tmp_path_factory) -> tuple[Path, Path, dict[str, tuple[Path, dict, int]]]:
    """Bad artifacts, each with the load policy to try and the exit code its refusal must carry."""
    root = tmp_path_factory.mktemp("attacks")
    marker = root / "MARKER"
    good = saved.read_bytes()
    parts = unpack(good)
    manifest = parts.manifest()
    evil = malicious(marker)
    other_private, _ = signing.keygen(root / "other", "other")
    revoked_private, revoked_public = signing.keygen(root / "revoked", "revoked")

    def write(name: str, data: bytes) -> Path:
        (root / name).write_bytes(data)
        return root / name

    flipped = bytearray(good)
    flipped[-50] ^= 0x01
    edited = dict(manifest, version="9.9.9")
    other_key = signing.load_private_key(other_private)
    evil_manifest = with_payload(manifest, evil)
    other = resign(good, dict(manifest, name="other-model"))
    py310 = dict(with_payload(manifest, evil), python={"version": "3.10.14", "implementation": "CPython"})
    default: dict = {}
    unsigned_ok = {"allow_unsigned": True}
    table = {
        "flipped_payload_byte": (write("flipped.bbx", bytes(flipped)), default, 5),
        "manifest_edited_not_resigned": (write("edited.bbx", pack(dump_manifest(edited), parts.payload, parts.signature)), default, 4),
        "truncated": (write("truncated.bbx", good[: len(good) // 2]), default, 5),
        "zero_bytes": (write("empty.bbx", b""), default, 3),
        "directory": (root / "other", default, 3),
        "plain_pickle": (write("plain.bbx", evil), default, 3),
        "unknown_key": (write("unknown.bbx", pack(dump_manifest(evil_manifest), evil, signing.sign(dump_manifest(evil_manifest), other_key))), default, 4),
        "signature_transplant": (write("transplant.bbx", pack(unpack(other).manifest_bytes, parts.payload, parts.signature)), default, 4),
        "payload_swapped_under_valid_signature": (write("swapped.bbx", pack(parts.manifest_bytes, evil, parts.signature)), default, 5),
        "malicious_unsigned_default_policy": (write("evil-unsigned.bbx", pack(dump_manifest(evil_manifest), evil)), default, 4),
        "malicious_unsigned_allowed_but_scanned": (write("evil-allowed.bbx", pack(dump_manifest(dict(evil_manifest, imports=["posix:system"])), evil)), unsigned_ok, 4),
        "undeclared_global_unsigned": (write("undeclared.bbx", pack(dump_manifest(with_payload(manifest, pickle.dumps(Path("x")))), pickle.dumps(Path("x")))), unsigned_ok, 4),
        "python_version_mismatch": (write("py310.bbx", resign(good, py310, evil)), default, 6),
        "revoked_key": (write("revoked.bbx", pack(parts.manifest_bytes, parts.payload, signing.sign(parts.manifest_bytes, signing.load_private_key(revoked_private)))), {"trusted_keys": [str(keys["public"]), str(revoked_public)], "revoked": True}, 4),
        "expired_signature": (write("expired.bbx", pack(parts.manifest_bytes, parts.payload, signing.sign(parts.manifest_bytes, signing.load_private_key(keys["private"]), expires_at="2020-01-01T00:00:00Z"))), default, 4),
    }
    return root, marker, table


CHILD = r"""
import json, os, sys
cases = json.loads(sys.argv[1])
import blackbox
from blackbox.signing import Keyring, key_id
results = {}
for name, (path, policy, _) in cases.items():
    if policy.pop("revoked", False):
        keyring = Keyring.from_paths(policy.pop("trusted_keys"))
        policy["trusted_keys"] = Keyring(keyring.keys, frozenset(k for k in keyring.keys if k not in os.environ["TRUSTED_IDS"].split()))
    try:
        blackbox.load(path, **policy)
        results[name] = {"exit_code": 0}
    except blackbox.BlackboxError as exc:
        results[name] = {"exit_code": exc.exit_code, "message": exc.message}
    results[name]["imported"] = sorted({m.split(".")[0] for m in sys.modules} & {"sklearn", "training", "sklearn_pandas"})
print(json.dumps(results))
"""


def test_every_attack_is_refused_before_unpickling(cases, keys):
    root, marker, table = cases
    trusted_id = signing.key_id(signing.load_private_key(keys["private"]).public_key())
    env = dict(child_env(), TRUSTED_IDS=trusted_id)
    payload = json.dumps({name: (str(path), policy, code) for name, (path, policy, code) in table.items()})
    done = subprocess.run([PYTHON, "-I", "-c", CHILD, payload], cwd=root, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for name, (_, _, expected) in table.items():
        assert results[name]["exit_code"] == expected, (name, results[name])
        assert results[name]["imported"] == [], (name, results[name])  # refused before any model code ran
    assert not marker.exists()
    assert "revoked" in results["revoked_key"]["message"] and "expired" in results["expired_signature"]["message"]
    assert "unsigned" in results["malicious_unsigned_default_policy"]["message"]
    assert "no model needs" in results["malicious_unsigned_allowed_but_scanned"]["message"]
    assert "not declared" in results["undeclared_global_unsigned"]["message"]
    assert "invalid" in results["signature_transplant"]["message"]
    assert "3.10.14" in results["python_version_mismatch"]["message"]


def test_the_untouched_original_still_loads(saved):
    assert blackbox.load(saved).signer is not None


def test_unsigned_loads_only_when_allowed_and_loudly(saved, tmp_path, caplog):
    parts = unpack(saved.read_bytes())
    unsigned = tmp_path / "unsigned.bbx"
    unsigned.write_bytes(pack(parts.manifest_bytes, parts.payload))
    with pytest.raises(blackbox.AuthenticityError, match="unsigned"):
        blackbox.load(unsigned)
    with caplog.at_level(logging.WARNING, logger="blackbox"):
        model = blackbox.load(unsigned, allow_unsigned=True)
    assert model.signer is None and "UNSIGNED" in caplog.text and "RUNS that code" in caplog.text
    model.self_test()
    # a signature that does not verify is refused even with allow_unsigned
    bad = tmp_path / "bad-sig.bbx"
    bad.write_bytes(pack(parts.manifest_bytes, parts.payload, parts.signature.replace(b'"alg"', b'"alg" ', 1)[:-8] + b'AAAAAA"}'))
    with pytest.raises(blackbox.AuthenticityError):
        blackbox.load(bad, allow_unsigned=True)


def test_key_rotation_trusts_a_directory_of_keys(saved, keys, tmp_path):
    ring = tmp_path / "ring"
    new_private, _ = signing.keygen(ring, "new")
    (ring / "old.pub").write_bytes(keys["public"].read_bytes())
    rotated = tmp_path / "rotated.bbx"
    rotated.write_bytes(saved.read_bytes())
    assert blackbox.load(rotated, trusted_keys=[ring]).signer  # old key still trusted
    claims = blackbox.sign(rotated, new_private)
    assert blackbox.load(rotated, trusted_keys=[ring]).signer == claims["key_id"]
    with pytest.raises(blackbox.AuthenticityError, match="not among the trusted keys"):
        blackbox.load(rotated, trusted_keys=[keys["public"]])


def test_a_keyring_travels_by_pickle_with_its_trust_and_revocations(saved, keys):
    """Dask workers get the driver's keyring by pickle: same keys trusted, same ids revoked."""
    ring = signing.Keyring.from_paths([keys["public"]])
    travelled = pickle.loads(pickle.dumps(ring))
    assert blackbox.load(saved, trusted_keys=travelled).signer in travelled.keys
    revoked = pickle.loads(pickle.dumps(signing.Keyring(ring.keys, frozenset(ring.keys))))
    with pytest.raises(blackbox.AuthenticityError, match="revoked"):
        blackbox.load(saved, trusted_keys=revoked)


def test_a_pickled_keyring_with_a_key_blackbox_does_not_verify_with_is_refused(keys):
    """The pickle carries PEMs: one that is not Ed25519 or ECDSA P-256 must not become a trusted key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    ring = signing.Keyring.from_paths([keys["public"]])
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    reducer, (pems, revoked) = ring.__reduce__()
    with pytest.raises(blackbox.AuthenticityError, match="neither Ed25519 nor ECDSA P-256"):
        reducer((*pems, rsa_pem), revoked)


def test_sign_refuses_a_damaged_artifact(saved, keys, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-10] ^= 0xFF
    damaged = tmp_path / "damaged.bbx"
    damaged.write_bytes(bytes(data))
    with pytest.raises(blackbox.IntegrityError):
        blackbox.sign(damaged, keys["private"])
    assert damaged.read_bytes() == bytes(data)


def test_keygen_and_sign_commands(saved, tmp_path, capsys):
    assert blackbox_cli(["keygen", "--out", str(tmp_path / "k"), "--name", "ops"]) == 0
    assert (tmp_path / "k" / "ops.key").stat().st_mode & 0o077 == 0  # private key readable by its owner only
    assert blackbox_cli(["keygen", "--out", str(tmp_path / "k"), "--name", "ops"]) == 2  # never overwritten
    copy = tmp_path / "copy.bbx"
    copy.write_bytes(saved.read_bytes())
    assert blackbox_cli(["sign", str(copy), "--key", str(tmp_path / "k" / "ops.key"), "--expires-in", "7"]) == 0
    capsys.readouterr()
    assert blackbox_cli(["inspect", str(copy), "--require-valid"]) == 4  # ops key not trusted
    assert "NOT verified" in capsys.readouterr().out
    assert blackbox_cli(["inspect", str(copy), "--require-valid", "--trusted-keys", str(tmp_path / "k" / "ops.pub")]) == 0
    assert blackbox_cli(["verify", str(copy)]) == 4


INSPECT_CHILD = r"""
import json, sys
from blackbox.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "imported": sorted({m.split(".")[0] for m in sys.modules} & {"sklearn", "training", "sklearn_pandas"})}))
"""


def test_inspect_never_unpickles_or_imports_model_code(cases, saved, tmp_path):
    root, marker, table = cases
    evil = table["malicious_unsigned_default_policy"][0]
    for args, code in (([str(evil)], 0), ([str(evil), "--require-valid"], 4), ([str(evil), "--imports", "--json"], 0)):
        done = subprocess.run([PYTHON, "-I", "-c", INSPECT_CHILD, "inspect", *args], cwd=root,
                              capture_output=True, text=True, env=child_env(), timeout=60)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result == {"code": code, "imported": []}, done.stdout + done.stderr
    assert "posix.system" in done.stdout or "os.system" in done.stdout  # --imports shows the attack statically
    assert not marker.exists()


def test_inspect_imports_lists_cloudpickle_reconstructors(search, titanic, tmp_path, capsys):
    path = blackbox.save(search, tmp_path / "cp.bbx", train_data=titanic[0], serializer="cloudpickle")
    assert blackbox_cli(["inspect", str(path), "--imports", "--json"]) == 0
    imports = json.loads(capsys.readouterr().out)["payload_imports"]
    assert "cloudpickle.cloudpickle._make_function" in imports and "sklearn.pipeline.Pipeline" in imports


def test_a_by_reference_module_is_found_missing_before_unpickling(search, titanic, tmp_path):
    """EM-04: the manifest's imports name a module this environment lacks: refused up front."""
    path = blackbox.save(search, tmp_path / "byref.bbx", train_data=titanic[0], by_reference=["training"])
    manifest = unpack(path.read_bytes()).manifest()
    manifest["imports"] = [i.replace("training", "training_gone") for i in manifest["imports"]]
    marker = tmp_path / "MARKER"
    evil = malicious(marker)
    path.write_bytes(resign(path.read_bytes(), with_payload(manifest, evil), evil))
    with pytest.raises(blackbox.SelfContainmentError, match="training_gone"):
        blackbox.load(path)
    assert not marker.exists()


# -- unsigned payloads that reach a dangerous callable through a module the scan allows -----------------------
def _text(value: str) -> bytes:
    data = value.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def _global(module: str, name: str) -> bytes:
    return _text(module) + _text(name) + b"\x93"  # STACK_GLOBAL: module and (possibly dotted) name from the stack


def _call(func: bytes, *args: bytes) -> bytes:
    return func + b"".join(args) + {0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(args)] + b"R"  # TUPLEn, REDUCE


def _pickle(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."  # PROTO 4 ... STOP


def forged_payloads(marker: Path, scratch: Path) -> dict[str, bytes]:
    """Hand-made payloads that create ``marker`` (os.mkdir) without naming os, subprocess or eval themselves."""
    target = _text(str(marker))
    getattr_ = _global("builtins", "getattr")
    inner = scratch / "inner.pkl"
    inner.write_bytes(marker_payload(marker))
    return {
        # sklearn/__init__.py does `import os`: a dotted name walks through it
        "dotted_global_through_another_module": _pickle(_call(_global("sklearn", "os.mkdir"), target)),
        # an attribute of an allowed module that is another module, then getattr on it
        "attribute_that_is_a_module": _pickle(_call(_call(getattr_, _global("dill._dill", "os"), _text("mkdir")), target)),
        # dill's module importer given a path through another module
        "module_path_through_another_module": _pickle(
            _call(_call(getattr_, _call(_global("dill._dill", "_import_module"), _text("sklearn.os")), _text("mkdir")), target)
        ),
        # sklearn.datasets._base does `from os import makedirs`: a plain name, but os's function
        "another_modules_callable": _pickle(_call(_global("sklearn.datasets._base", "makedirs"), target)),
        # a declared requirement's own function that unpickles a file
        "dangerous_callable_of_an_allowed_module": _pickle(_call(_global("pandas", "read_pickle"), _text(str(inner)))),
        # getattr handed to another callable: the attribute names are computed at load time
        "getattr_passed_as_a_value": _pickle(
            _call(
                _call(
                    _global("functools", "reduce"),
                    getattr_,
                    _text("os") + _text("mkdir") + b"\x86",
                    _call(_global("cloudpickle.cloudpickle", "subimport"), _text("sklearn")),
                ),
                target,
            )
        ),
    }


FORGED = [
    "dotted_global_through_another_module", "attribute_that_is_a_module", "module_path_through_another_module",
    "another_modules_callable", "dangerous_callable_of_an_allowed_module", "getattr_passed_as_a_value",
]


@pytest.mark.parametrize("case", FORGED)
def test_unsigned_payload_cannot_reach_a_dangerous_callable_through_an_allowed_module(case, saved, tmp_path):
    """The attacker writes the unsigned manifest too: it declares every global its payload imports."""
    from blackbox.containment.imports import pickle_globals

    marker = tmp_path / "MARKER"
    evil = forged_payloads(marker, tmp_path)[case]
    manifest = with_payload(unpack(saved.read_bytes()).manifest(), evil)
    manifest["imports"] = [g.key for g in pickle_globals(evil)]
    forged = tmp_path / "forged.bbx"
    forged.write_bytes(pack(dump_manifest(manifest), evil))
    with pytest.raises(blackbox.AuthenticityError, match="Refusing the unsigned payload"):
        blackbox.load(forged, allow_unsigned=True)
    assert not marker.exists()


# --- ECDSA P-256 header signatures: one key type an HSM and OpenSSF model signing share ---


def test_ec_p256_keygen_sign_and_verify_round_trip(tmp_path):
    private, public = signing.keygen(tmp_path, "ec", key_type="ec-p256")
    key = signing.load_private_key(private)
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and private.stat().st_mode & 0o077 == 0
    manifest = b'{"name": "m"}'
    block = signing.sign(manifest, key, expires_at="2999-01-01T00:00:00Z")
    claims = signing.Keyring.from_paths([public]).verify(manifest, block)
    assert claims["alg"] == "ecdsa-p256-sha256" and claims["key_id"] == signing.key_id(key.public_key())
    with pytest.raises(blackbox.AuthenticityError, match="invalid"):
        signing.Keyring.from_paths([public]).verify(manifest + b" ", block)
    # key ids are derived the same way for both types: sha256 of the raw public key, 16 hex digits
    from cryptography.hazmat.primitives import serialization

    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert claims["key_id"] == hashlib.sha256(point).hexdigest()[:16]
    ed = signing.load_private_key(signing.keygen(tmp_path, "ed")[0]).public_key()
    raw = ed.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signing.key_id(ed) == hashlib.sha256(raw).hexdigest()[:16]


def test_a_p256_key_does_not_verify_an_ed25519_signatures_bytes(tmp_path):
    """Neither key type accepts the other's signature, even under the other's key id and algorithm name."""
    ed_private, _ = signing.keygen(tmp_path, "ed")
    ec_private, ec_public = signing.keygen(tmp_path, "ec", key_type="ec-p256")
    ec_key = signing.load_private_key(ec_private)
    manifest = b'{"name": "m"}'
    ed_block = json.loads(signing.sign(manifest, signing.load_private_key(ed_private)))
    forged = dict(ed_block, key_id=signing.key_id(ec_key.public_key()))  # the P-256 key must check the Ed25519 bytes
    ring = signing.Keyring.from_paths([ec_public])
    with pytest.raises(blackbox.AuthenticityError):
        ring.verify(manifest, json.dumps(forged).encode())
    forged["alg"] = "ecdsa-p256-sha256"
    with pytest.raises(blackbox.AuthenticityError, match="invalid"):
        ring.verify(manifest, json.dumps(forged).encode())


def test_a_keyring_mixes_both_key_types_and_travels_by_pickle(tmp_path):
    ed_private, ed_public = signing.keygen(tmp_path / "ring", "ed")
    ec_private, ec_public = signing.keygen(tmp_path / "ring", "ec", key_type="ec-p256")
    ring = pickle.loads(pickle.dumps(signing.Keyring.from_paths(tmp_path / "ring")))
    manifest = b'{"name": "m"}'
    for private, alg in ((ed_private, "ed25519"), (ec_private, "ecdsa-p256-sha256")):
        assert ring.verify(manifest, signing.sign(manifest, signing.load_private_key(private)))["alg"] == alg
    assert len(ring.keys) == 2
    # a non-P-256 curve is refused where it is read, saying which curves are accepted
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = tmp_path / "p384.pub"
    p384.write_bytes(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(blackbox.UsageError, match="P-256"):
        signing.Keyring.from_paths([p384])


def test_load_an_artifact_signed_with_a_p256_key(saved, keys, tmp_path, capsys):
    assert blackbox_cli(["keygen", "--out", str(tmp_path / "k"), "--name", "hsm", "--type", "ec-p256"]) == 0
    assert "ec-p256" in capsys.readouterr().out
    copy = tmp_path / "ec.bbx"
    copy.write_bytes(saved.read_bytes())
    assert blackbox_cli(["sign", str(copy), "--key", str(tmp_path / "k" / "hsm.key")]) == 0
    model = blackbox.load(copy, trusted_keys=[tmp_path / "k" / "hsm.pub", keys["public"]])
    model.self_test()
    assert model.signer == signing.key_id(signing.load_private_key(tmp_path / "k" / "hsm.key").public_key())
    with pytest.raises(blackbox.AuthenticityError, match="not among the trusted keys"):
        blackbox.load(copy, trusted_keys=[keys["public"]])
    assert blackbox.verify(copy, trusted_keys=tmp_path / "k" / "hsm.pub").ok  # the isolated child trusts it too


@pytest.mark.parametrize("expires_at", ["", 0, 4102444800, "not-a-time", "2099-13-01T00:00:00Z", "2099-1-1T00:00:00Z",
                                        "2099-01-01T00:00:00+00:00", ["2099-01-01T00:00:00Z"]])
def test_a_trusted_signature_with_a_malformed_expiry_is_refused(saved, keys, tmp_path, expires_at):
    """The signer writes a UTC timestamp or none: anything else is refused, neither believed forever ("", 0: before)
    nor a raw TypeError (a number, a list: before)."""
    parts = unpack(saved.read_bytes())
    odd = tmp_path / "odd.bbx"
    odd.write_bytes(pack(parts.manifest_bytes, parts.payload,
                         signing.sign(parts.manifest_bytes, signing.load_private_key(keys["private"]), expires_at=expires_at)))
    with pytest.raises(blackbox.AuthenticityError, match="malformed expiry"):
        blackbox.load(odd)
    fine = tmp_path / "fine.bbx"
    fine.write_bytes(pack(parts.manifest_bytes, parts.payload, signing.sign(
        parts.manifest_bytes, signing.load_private_key(keys["private"]), expires_at="2999-01-01T00:00:00Z")))
    assert blackbox.load(fine).name == blackbox.load(saved).name
