"""Signing keys and artifact signatures: who made this artifact, checked before unpickling.

A signature covers the manifest's exact bytes, which bind the payload's sha256
and length, the model's name and version; it also covers its own claims (key
id, signing time, optional expiry). The signed message starts with a domain
tag, so a blackbox signature means nothing anywhere else. Servers hold only
public keys, so a compromised server cannot forge an artifact. Keys rotate by
trusting several at once; a key id is the first 16 hex digits of the sha256 of
the raw public key (Ed25519: its 32 bytes; P-256: its uncompressed X9.62 point).

Two key types sign: Ed25519 (the default) and ECDSA P-256 with SHA-256 (the one
OpenSSF model signing and most HSMs also take, so one key can sign both). A
keyring may mix them; a signature verifies only with a key of the type its
``alg`` names, which is itself signed.

The signature block stored in the artifact is JSON:
``{"alg": "ed25519" | "ecdsa-p256-sha256", "key_id", "signed_at", "expires_at", "signature"}``
(an ECDSA signature is DER-encoded).
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
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .artifact import load_json
from .errors import AuthenticityError, UsageError

TRUSTED_KEYS_ENV = "BLACKBOX_TRUSTED_KEYS"
REVOKED_KEYS_ENV = "BLACKBOX_REVOKED_KEYS"
SIGNING_KEY_ENV = "BLACKBOX_SIGNING_KEY"
_DOMAIN = b"blackbox-artifact-signature-v1\n"
_CLAIMS = ("alg", "key_id", "signed_at", "expires_at")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""How a signature writes ``signed_at`` and ``expires_at`` (UTC), and the only form of ``expires_at`` it believes."""
KEY_TYPES = ("ed25519", "ec-p256")  # what keygen makes
ED25519, ECDSA_P256 = "ed25519", "ecdsa-p256-sha256"  # the block's alg for each
PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


def key_id(public_key: PublicKey) -> str:
    """The first 16 hex digits of the sha256 of the raw public key, whichever its type."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        raw = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    else:
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def algorithm(key: PrivateKey | PublicKey) -> str:
    """The block's ``alg`` for signatures by ``key`` (or by its private half)."""
    return ECDSA_P256 if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) else ED25519


def keygen(directory: str | os.PathLike[str], name: str = "blackbox", key_type: str = "ed25519") -> tuple[Path, Path]:
    """Write ``NAME.key`` (private PKCS#8 PEM, mode 0600) and ``NAME.pub`` into ``directory``; refuse to overwrite.

    :param key_type: ``ed25519`` (default) or ``ec-p256`` (ECDSA P-256, also usable for OpenSSF model signing).
    """
    if key_type not in KEY_TYPES:
        raise UsageError(f"Unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(f"{str(path)!r} already exists; choose another --name or directory (keys are never overwritten).")
    private = Ed25519PrivateKey.generate() if key_type == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(public_pem(private.public_key()))
    return private_path, public_path


def public_pem(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"Cannot read the signing key {str(path)!r}: {exc}. Create one with `blackbox keygen`.") from None
    if not _supported(key.public_key()):
        raise UsageError(
            f"{str(path)!r} is not an Ed25519 or ECDSA P-256 private key; create one with `blackbox keygen` "
            "(--type ec-p256 for P-256)."
        )
    return key  # type: ignore[return-value]


def sign(manifest_bytes: bytes, private_key: PrivateKey, *, expires_at: str | None = None) -> bytes:
    """The signature block for ``manifest_bytes``."""
    claims = {
        "alg": algorithm(private_key),
        "key_id": key_id(private_key.public_key()),
        "signed_at": dt.datetime.now(dt.UTC).strftime(TIME_FORMAT),
        "expires_at": expires_at,
    }
    message = _message(claims, manifest_bytes)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        signature = private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    else:
        signature = private_key.sign(message)
    return json.dumps({**claims, "signature": base64.b64encode(signature).decode()}, sort_keys=True).encode()


def read_block(block: bytes) -> dict[str, Any]:
    """Parse a signature block (not verified) and check its shape."""
    try:
        parsed = load_json(block.decode("utf-8"))  # bounded: read before anything is verified
        if not isinstance(parsed, dict) or parsed.get("alg") not in (ED25519, ECDSA_P256):
            raise ValueError(f"not an {ED25519} or {ECDSA_P256} signature block")
        base64.b64decode(parsed["signature"], validate=True)
        str(parsed["key_id"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise AuthenticityError(f"The artifact's signature block is malformed ({exc}); refusing it.") from None
    return parsed


def revoked_from_environment() -> frozenset[str]:
    """The key ids BLACKBOX_REVOKED_KEYS names (separated by commas or whitespace)."""
    return frozenset(k for k in os.environ.get(REVOKED_KEYS_ENV, "").replace(",", " ").split() if k)


@dataclass(frozen=True)
class Keyring:
    """Trusted public keys by key id, and key ids that are no longer trusted.

    ``revoked`` always includes the ids BLACKBOX_REVOKED_KEYS names when the keyring
    is made, however its keys were given (paths, key objects, by hand, unpickled): a
    revocation is never lifted by passing the key explicitly.
    """

    keys: dict[str, PublicKey]
    revoked: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "revoked", frozenset(self.revoked) | revoked_from_environment())

    @classmethod
    def from_paths(cls, paths: Any = (), revoked: Iterable[str] = ()) -> Keyring:
        """The one place a ``trusted_keys`` argument becomes a Keyring.

        ``paths`` is one source or an iterable of them: a ``.pub`` file or a directory of
        them (str or Path, relative to the working directory), an Ed25519 or P-256 public
        key, or a Keyring (its revocations kept). A lone str is one path, never iterated.
        Both key types may be mixed. ``revoked`` adds key ids to those BLACKBOX_REVOKED_KEYS
        names, which are revoked whatever the sources.
        """
        if isinstance(paths, (str, os.PathLike, Ed25519PublicKey, ec.EllipticCurvePublicKey, Keyring)):
            paths = [paths]
        try:
            sources = list(paths)
        except TypeError:
            sources = [paths]  # not iterable: refused below, by type
        keys: dict[str, PublicKey] = {}
        revoked = set(revoked)
        for source in sources:
            if isinstance(source, Keyring):
                keys.update(source.keys)
                revoked |= source.revoked
            elif isinstance(source, (Ed25519PublicKey, ec.EllipticCurvePublicKey)) and _supported(source):
                keys[key_id(source)] = source
            elif isinstance(source, (str, os.PathLike)):
                path = Path(source)
                for file in sorted(path.glob("*.pub")) if path.is_dir() else [path]:
                    key = _load_public_key(file)
                    keys[key_id(key)] = key
            else:
                raise UsageError(
                    "trusted_keys takes a .pub file or directory of them (str or Path), an Ed25519 or P-256 public key, "
                    f"a Keyring, or a list of those; got {type(source).__name__} {source!r}."
                )
        return cls(keys, frozenset(revoked))

    @classmethod
    def resolve(cls, trusted_keys: Any) -> Keyring:
        """A loader's ``trusted_keys``: a Keyring as it is, None for the environment's, else :meth:`from_paths`."""
        if isinstance(trusted_keys, Keyring):
            return trusted_keys
        return cls.from_environment() if trusted_keys is None else cls.from_paths(trusted_keys)

    @classmethod
    def from_environment(cls) -> Keyring:
        """Keys named by BLACKBOX_TRUSTED_KEYS (paths separated by os.pathsep), revocations by BLACKBOX_REVOKED_KEYS."""
        paths = [p for p in os.environ.get(TRUSTED_KEYS_ENV, "").split(os.pathsep) if p]
        return cls.from_paths(paths)  # BLACKBOX_REVOKED_KEYS: as every keyring

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as PEM public keys (key objects do not pickle), so a Dask worker trusts what the driver trusts."""
        return _keyring_from_pem, (tuple(public_pem(key) for key in self.keys.values()), self.revoked)

    def trusted(self, kid: str, what: str = "The artifact", remedy: str = "") -> PublicKey:
        """The trusted, unrevoked key ``kid``; else AuthenticityError saying ``what`` is signed by which key, and ``remedy``.

        The one check of a signer (artifacts and store pointers alike).
        """
        if kid in self.revoked:
            raise AuthenticityError(
                f"{what} is signed by key {kid}, which is revoked ({REVOKED_KEYS_ENV} or the keyring); refusing "
                f"it.{remedy or ' Ship it signed by a trusted key.'}"
            )
        public_key = self.keys.get(kid)
        if public_key is None:
            raise AuthenticityError(
                f"{what} is signed by key {kid}, which is not among the trusted keys "
                f"({', '.join(sorted(self.keys)) or 'none configured'}). Pass its public key with "
                f"--trusted-keys or {TRUSTED_KEYS_ENV} if you trust its signer.{remedy}"
            )
        return public_key

    def verify(
        self, manifest_bytes: bytes, block: bytes, *, now: dt.datetime | None = None, expiry: bool = True
    ) -> dict[str, Any]:
        """Return the verified claims, or raise AuthenticityError saying why not (``expiry``: also when expired)."""
        parsed = read_block(block)
        kid = str(parsed["key_id"])
        public_key = self.trusted(kid)
        if parsed["alg"] != algorithm(public_key):
            raise AuthenticityError(
                f"The artifact's signature says {parsed['alg']}, but key {kid} is an {algorithm(public_key)} key: "
                "its signature block was altered. Refusing it; fetch the artifact again from its source."
            )
        signature, message = base64.b64decode(parsed["signature"]), _message(parsed, manifest_bytes)
        try:
            if isinstance(public_key, ec.EllipticCurvePublicKey):
                public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            else:
                public_key.verify(signature, message)
        except InvalidSignature:
            raise AuthenticityError(
                f"The artifact's signature (key {kid}) is invalid: its manifest or signature was altered "
                "after signing. Refusing it; fetch the artifact again from its source."
            ) from None
        if expiry:
            check_expiry(parsed, now=now)
        return {k: parsed.get(k) for k in _CLAIMS}


def check_expiry(
    claims: dict[str, Any], *, now: dt.datetime | None = None, what: str = "The artifact's signature",
    remedy: str = "re-sign it or ship a newer one.",
) -> None:
    """Raise AuthenticityError (``what`` expired at ..., ``remedy``) if the claims' ``expires_at`` has passed or is
    not the signer's own timestamp (a number, "", an impossible date: neither never-expiring nor merely expired)."""
    expires = claims.get("expires_at")
    try:
        when = expiry_time(expires)
    except ValueError:
        raise AuthenticityError(
            f"{what} is signed with a malformed expiry {expires!r} (a signer writes a UTC timestamp "
            f"YYYY-MM-DDTHH:MM:SSZ, or none); refusing it: {remedy}"
        ) from None
    if when is not None and (now or dt.datetime.now(dt.UTC)) >= when:
        raise AuthenticityError(f"{what} expired at {expires}; {remedy}")


def expiry_time(expires_at: Any) -> dt.datetime | None:
    """A signed ``expires_at`` as a time (None: no expiry); ValueError unless exactly as the signer writes it."""
    if expires_at is None:
        return None
    if not isinstance(expires_at, str):
        raise ValueError(f"not a timestamp: {expires_at!r}")
    when = dt.datetime.strptime(expires_at, TIME_FORMAT).replace(tzinfo=dt.UTC)
    if when.strftime(TIME_FORMAT) != expires_at:  # strptime also takes "2099-1-1T0:0:0Z"
        raise ValueError(f"not in the signer's format: {expires_at!r}")
    return when


def _message(claims: dict[str, Any], manifest_bytes: bytes) -> bytes:
    signed_claims = json.dumps({k: claims.get(k) for k in _CLAIMS}, sort_keys=True).encode()
    return _DOMAIN + signed_claims + b"\n" + manifest_bytes


def _keyring_from_pem(pems: tuple[bytes, ...], revoked: frozenset[str]) -> Keyring:
    keys = [serialization.load_pem_public_key(pem) for pem in pems]
    supported = [key for key in keys if _supported(key)]
    if len(supported) != len(keys):
        raise AuthenticityError(
            "A pickled keyring holds a public key that is neither Ed25519 nor ECDSA P-256; refusing it. "
            "Build the keyring again from the trusted public key files."
        )
    return Keyring({key_id(key): key for key in supported}, revoked)


def _supported(public_key: Any) -> TypeGuard[PublicKey]:
    """Ed25519, or ECDSA on P-256 (secp256r1) only."""
    return isinstance(public_key, Ed25519PublicKey) or (
        isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1)
    )


def _load_public_key(path: Path) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read the trusted key {str(path)!r}: {exc}.") from None
    if not _supported(key):
        raise UsageError(
            f"{str(path)!r} is not an Ed25519 or ECDSA P-256 public key (expected a .pub from `blackbox keygen`)."
        )
    return key
