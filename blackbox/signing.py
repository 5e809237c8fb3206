"""Ed25519 keys and artifact signatures: who made this artifact, checked before unpickling.

A signature covers the manifest's exact bytes, which bind the payload's sha256
and length, the model's name and version; it also covers its own claims (key
id, signing time, optional expiry). The signed message starts with a domain
tag, so a blackbox signature means nothing anywhere else. Servers hold only
public keys, so a compromised server cannot forge an artifact. Keys rotate by
trusting several at once; a key id is the first 16 hex digits of the sha256 of
the raw public key.

The signature block stored in the artifact is JSON:
``{"alg": "ed25519", "key_id", "signed_at", "expires_at", "signature"}``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .artifact import load_json
from .errors import AuthenticityError, UsageError

TRUSTED_KEYS_ENV = "BLACKBOX_TRUSTED_KEYS"
REVOKED_KEYS_ENV = "BLACKBOX_REVOKED_KEYS"
SIGNING_KEY_ENV = "BLACKBOX_SIGNING_KEY"
_DOMAIN = b"blackbox-artifact-signature-v1\n"
_CLAIMS = ("alg", "key_id", "signed_at", "expires_at")


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(directory: str | os.PathLike[str], name: str = "blackbox") -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, mode 0600) and ``NAME.pub`` into ``directory``; refuse to overwrite."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(f"{str(path)!r} already exists; choose another --name or directory (keys are never overwritten).")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(public_pem(private.public_key()))
    return private_path, public_path


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"Cannot read the signing key {str(path)!r}: {exc}. Create one with `blackbox keygen`.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{str(path)!r} is not an Ed25519 private key; create one with `blackbox keygen`.")
    return key


def sign(manifest_bytes: bytes, private_key: Ed25519PrivateKey, *, expires_at: str | None = None) -> bytes:
    """The signature block for ``manifest_bytes``."""
    claims = {
        "alg": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "signed_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_at": expires_at,
    }
    signature = private_key.sign(_message(claims, manifest_bytes))
    return json.dumps({**claims, "signature": base64.b64encode(signature).decode()}, sort_keys=True).encode()


def read_block(block: bytes) -> dict[str, Any]:
    """Parse a signature block (not verified) and check its shape."""
    try:
        parsed = load_json(block.decode("utf-8"))  # bounded: read before anything is verified
        if not isinstance(parsed, dict) or parsed.get("alg") != "ed25519":
            raise ValueError("not an ed25519 signature block")
        base64.b64decode(parsed["signature"], validate=True)
        str(parsed["key_id"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise AuthenticityError(f"The artifact's signature block is malformed ({exc}); refusing it.") from None
    return parsed


@dataclass(frozen=True)
class Keyring:
    """Trusted public keys by key id, and key ids that are no longer trusted."""

    keys: dict[str, Ed25519PublicKey]
    revoked: frozenset[str] = frozenset()

    @classmethod
    def from_paths(cls, paths: Any = (), revoked: Iterable[str] = ()) -> Keyring:
        """The one place a ``trusted_keys`` argument becomes a Keyring.

        ``paths`` is one source or an iterable of them: a ``.pub`` file or a directory of
        them (str or Path, relative to the working directory), an ``Ed25519PublicKey``, or
        a Keyring (its revocations kept). A lone str is one path, never iterated.
        """
        if isinstance(paths, (str, os.PathLike, Ed25519PublicKey, Keyring)):
            paths = [paths]
        try:
            sources = list(paths)
        except TypeError:
            sources = [paths]  # not iterable: refused below, by type
        keys: dict[str, Ed25519PublicKey] = {}
        revoked = set(revoked)
        for source in sources:
            if isinstance(source, Keyring):
                keys.update(source.keys)
                revoked |= source.revoked
            elif isinstance(source, Ed25519PublicKey):
                keys[key_id(source)] = source
            elif isinstance(source, (str, os.PathLike)):
                path = Path(source)
                for file in sorted(path.glob("*.pub")) if path.is_dir() else [path]:
                    key = _load_public_key(file)
                    keys[key_id(key)] = key
            else:
                raise UsageError(
                    "trusted_keys takes a .pub file or directory of them (str or Path), an Ed25519 public key, "
                    f"a Keyring, or a list of those; got {type(source).__name__} {source!r}."
                )
        return cls(keys, frozenset(revoked))

    @classmethod
    def from_environment(cls) -> Keyring:
        """Keys named by BLACKBOX_TRUSTED_KEYS (paths separated by os.pathsep), revocations by BLACKBOX_REVOKED_KEYS."""
        paths = [p for p in os.environ.get(TRUSTED_KEYS_ENV, "").split(os.pathsep) if p]
        revoked = [k for k in os.environ.get(REVOKED_KEYS_ENV, "").replace(",", " ").split() if k]
        return cls.from_paths(paths, revoked)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as raw public key bytes (key objects do not pickle), so a Dask worker trusts what the driver trusts."""
        raw = tuple(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) for key in self.keys.values())
        return _keyring_from_raw, (raw, self.revoked)

    def verify(self, manifest_bytes: bytes, block: bytes, *, now: dt.datetime | None = None) -> dict[str, Any]:
        """Return the verified claims, or raise AuthenticityError saying why not."""
        parsed = read_block(block)
        kid = str(parsed["key_id"])
        if kid in self.revoked:
            raise AuthenticityError(f"The artifact is signed by key {kid}, which is revoked; refusing it.")
        public_key = self.keys.get(kid)
        if public_key is None:
            raise AuthenticityError(
                f"The artifact is signed by key {kid}, which is not among the trusted keys "
                f"({', '.join(sorted(self.keys)) or 'none configured'}). Pass its public key with "
                f"--trusted-keys or {TRUSTED_KEYS_ENV} if you trust its signer."
            )
        try:
            public_key.verify(base64.b64decode(parsed["signature"]), _message(parsed, manifest_bytes))
        except InvalidSignature:
            raise AuthenticityError(
                f"The artifact's signature (key {kid}) is invalid: its manifest or signature was altered "
                "after signing. Refusing it; fetch the artifact again from its source."
            ) from None
        expires = parsed.get("expires_at")
        if expires and (now or dt.datetime.now(dt.timezone.utc)) >= _parse_time(expires):
            raise AuthenticityError(f"The artifact's signature expired at {expires}; re-sign it or ship a newer one.")
        return {k: parsed.get(k) for k in _CLAIMS}


def _message(claims: dict[str, Any], manifest_bytes: bytes) -> bytes:
    signed_claims = json.dumps({k: claims.get(k) for k in _CLAIMS}, sort_keys=True).encode()
    return _DOMAIN + signed_claims + b"\n" + manifest_bytes


def _keyring_from_raw(raw: tuple[bytes, ...], revoked: frozenset[str]) -> Keyring:
    keys = [Ed25519PublicKey.from_public_bytes(item) for item in raw]
    return Keyring({key_id(key): key for key in keys}, revoked)


def _load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read the trusted key {str(path)!r}: {exc}.") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{str(path)!r} is not an Ed25519 public key (expected a .pub from `blackbox keygen`).")
    return key


def _parse_time(text: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise AuthenticityError(f"The signature's expiry {text!r} is not a UTC timestamp; refusing it.") from None
