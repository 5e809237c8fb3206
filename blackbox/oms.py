"""OpenSSF Model Signing (OMS) bundles: a detached, standard proof of an artifact's bytes, for interop.

``model_signing`` (the OMS reference implementation; the ``blackbox[oms]`` extra)
hashes the file at a model path and signs the digest in an in-toto statement
inside a Sigstore bundle written beside it (``ARTIFACT.sig``). For a ``.bbx``
that file is the whole artifact: framing, manifest (name, version, schema,
golden sample, payload digest), header signature block and payload. A bundle
that verifies therefore authenticates everything the header signature does,
and the header block too.

What a bundle does not say, so Blackbox still checks it after the bundle
verifies (see blackbox.trust): freshness (OMS has no expiry; the ``expires_at``
of a header block, which the bundle covers, is enforced), the environment, the
payload against the manifest, the golden sample. It does not bind the file name
either (a renamed copy verifies; the manifest says which model it is).

Rules callers rely on:

* :func:`verify` checks the exact bytes that will be unpickled: they and the
  bundle are copied into a private directory and verified there with
  model_signing's public API, so nothing changes between the check and the use.
* The bundle's key must be a trusted, unrevoked P-256 key of the keyring (found
  by the bundle's key hint). Only key-mode bundles are verified here.
* The verified statement must be about one file hashed whole: exactly one
  resource ``"."``, sha256, equal to the bytes' sha256 (no directory, no
  shards, nothing ignored).
* :func:`sign` writes the bundle (atomically) only for an intact artifact and
  never touches the artifact; re-signing its header afterwards breaks the
  bundle, so sign the header first.
* model_signing is imported here only, and only when used; without it the
  error names the extra to install.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import signing
from .artifact import load_json, read_bytes, unpack
from .atomic import atomic_write
from .errors import AuthenticityError, UsageError
from .signing import TRUSTED_KEYS_ENV, Keyring

SUFFIX = ".sig"
MAX_BUNDLE_BYTES = 16 * 1024 * 1024


def bundle_path(artifact: str | os.PathLike[str]) -> Path:
    """Where a bundle for ``artifact`` goes by default: beside it, ``ARTIFACT.sig`` (model_signing's convention)."""
    return Path(str(artifact) + SUFFIX)


def sign(
    path: str | os.PathLike[str],
    *,
    key: str | os.PathLike[str] | None = None,
    sigstore: bool = False,
    bundle: str | os.PathLike[str] | None = None,
) -> Path:
    """Write an OMS bundle for the artifact at ``path``; return the bundle's path.

    :param key: an ECDSA P-256 private key (``blackbox keygen --type ec-p256``): key mode.
    :param sigstore: sign keyless with Sigstore instead, with the CI's ambient OIDC credentials
        (needs those credentials and the network; nothing here tests it).
    :param bundle: where to write it (default: ``ARTIFACT.sig``).
    """
    if sigstore == (key is not None):
        raise UsageError("Sign an OpenSSF model signing bundle with either --key (a P-256 key) or --sigstore, not both or neither.")
    model_signing = _model_signing()
    path = Path(path)
    data = read_bytes(path)
    parts = unpack(data, str(path))
    parts.check_payload(parts.read_manifest().payload)  # a signature never vouches for damaged bytes
    config = model_signing.signing.Config()
    if sigstore:
        config.use_sigstore_signer(use_ambient_credentials=True)
    else:
        private = signing.load_private_key(key)  # type: ignore[arg-type]
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise UsageError(
                f"{str(key)!r} is an Ed25519 key; OpenSSF model signing takes EC keys. Create a P-256 key with "
                "`blackbox keygen --type ec-p256` (it signs the header too)."
            )
        config.use_elliptic_key_signer(private_key=Path(key).resolve())  # type: ignore[arg-type]
    out = Path(bundle) if bundle is not None else bundle_path(path)
    with tempfile.TemporaryDirectory(prefix="blackbox-oms-") as scratch:
        copy = Path(scratch, path.name)  # the bytes just checked, under the artifact's own name (the subject)
        copy.write_bytes(data)
        try:
            config.sign(copy, Path(scratch, "bundle.sig"))
        except Exception as exc:  # key mode does not fail here; sigstore fails without credentials or network
            raise UsageError(
                f"OpenSSF model signing of {str(path)!r} failed: {exc}. Keyless signing needs a CI's ambient OIDC "
                "credentials and network access to Sigstore; otherwise sign with --key (a P-256 key)."
            ) from exc
        atomic_write(out, Path(scratch, "bundle.sig").read_bytes())
    return out


def verify(data: bytes, bundle: str | os.PathLike[str], keyring: Keyring) -> str:
    """Verify the OMS ``bundle`` over exactly ``data`` (an artifact's bytes); return the signing key's id.

    Raise AuthenticityError saying why not.
    """
    model_signing = _model_signing()
    where = f"The OpenSSF model signing bundle {str(bundle)!r}"
    try:
        with open(bundle, "rb") as f:
            bundle_bytes = f.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"Cannot read {where[4:]}: {exc.strerror}. Pass the .sig written beside the artifact.") from None
    document = _document(bundle_bytes, where)
    kid, public_key = _key(document, keyring, where)
    with tempfile.TemporaryDirectory(prefix="blackbox-oms-") as scratch:
        model, sig, pub = Path(scratch, "artifact.bbx"), Path(scratch, "artifact.bbx.sig"), Path(scratch, "key.pub")
        model.write_bytes(data)
        sig.write_bytes(bundle_bytes)
        pub.write_bytes(signing.public_pem(public_key))
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(model, sig)
        except Exception as exc:  # noqa: BLE001  any failure of a hostile or foreign bundle is a refusal, whatever its type
            raise AuthenticityError(
                f"{where} does not verify for this artifact with key {kid}: {exc}. The artifact or the bundle was "
                "altered, or the bundle is for another file; refusing it. Fetch both again from their source."
            ) from None
    _check_statement(document, data, where)
    return kid


def _model_signing() -> Any:
    try:
        import model_signing
    except ImportError:
        raise UsageError(
            "OpenSSF model signing needs the model-signing package, which is not installed here: "
            "pip install 'blackbox[oms]'."
        ) from None
    return model_signing


def _document(bundle_bytes: bytes, where: str) -> dict[str, Any]:
    """The bundle as JSON, shape-checked (bounded: read before anything is verified)."""
    try:
        if len(bundle_bytes) > MAX_BUNDLE_BYTES:
            raise ValueError(f"over {MAX_BUNDLE_BYTES} bytes")
        document = load_json(bundle_bytes.decode("utf-8"))
        if not isinstance(document, dict) or not isinstance(document.get("dsseEnvelope"), dict):
            raise ValueError("not a Sigstore bundle with a DSSE envelope")
    except (UnicodeDecodeError, ValueError) as exc:
        raise AuthenticityError(f"{where} is malformed ({exc}); refusing it.") from None
    return document


def _key(document: dict[str, Any], keyring: Keyring, where: str) -> tuple[str, ec.EllipticCurvePublicKey]:
    """The trusted P-256 key the bundle names by its hint (the sha256 of the key's PEM)."""
    material = document.get("verificationMaterial")
    hint = material.get("publicKey", {}).get("hint") if isinstance(material, dict) else None
    if not isinstance(hint, str):
        raise AuthenticityError(
            f"{where} names no public key (it is keyless, signed with a certificate, or from a model_signing "
            "older than 1.0); blackbox verifies key-mode bundles only. Sign with a P-256 key."
        )
    for kid, key in keyring.keys.items():
        if isinstance(key, ec.EllipticCurvePublicKey) and _hint(key) == hint:
            keyring.trusted(kid, where)  # the one signer check: refuses a revoked key
            return kid, key
    raise AuthenticityError(
        f"{where} is signed by a key (hint {hint[:16]}...) that is not among the trusted keys "
        f"({', '.join(sorted(keyring.keys)) or 'none configured'}). Pass its P-256 public key with "
        f"--trusted-keys or {TRUSTED_KEYS_ENV} if you trust its signer."
    )


def _hint(key: ec.EllipticCurvePublicKey) -> str:
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _check_statement(document: dict[str, Any], data: bytes, where: str) -> None:
    """The verified statement is about these bytes hashed whole, as one file: nothing skipped or split."""
    try:
        statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"], validate=True))
        predicate = statement["predicate"]
        method, resources = predicate["serialization"]["method"], predicate["resources"]
    except (KeyError, TypeError, ValueError) as exc:
        raise AuthenticityError(f"{where} holds no model signing statement ({exc!r}); refusing it.") from None
    expected = [{"name": ".", "algorithm": "sha256", "digest": hashlib.sha256(data).hexdigest()}]
    if method != "files" or resources != expected:
        raise AuthenticityError(
            f"{where} does not sign this artifact as one file hashed whole with sha256 (method {method!r}, "
            f"{len(resources) if isinstance(resources, list) else '?'} resource(s)); refusing it. Sign the .bbx "
            "file itself: `blackbox sign ARTIFACT --oms --key KEY` or `model_signing sign key ARTIFACT`."
        )
