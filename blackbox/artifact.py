"""The artifact file format, and nothing else: framing, strict manifest JSON.

One file, read front to back (the manifest's keys and their JSON types are
:class:`blackbox.manifest.Manifest`)::

    MAGIC             8 bytes  b"\\x89BBX\\r\\n\\x1a\\n" (PNG-style: catches text-mode mangling)
    format version    2 bytes  unsigned, big-endian
    manifest length   4 bytes  unsigned, big-endian, at most MAX_MANIFEST_BYTES
    manifest          UTF-8 JSON object, readable without unpickling anything
    signature length  4 bytes  unsigned, big-endian, at most MAX_SIGNATURE_BYTES (0: unsigned)
    signature         opaque bytes, defined by blackbox.signing
    payload           the pickled estimator: everything up to the end of the file

The manifest records the payload's sha256 and length, so a truncated, padded or
edited payload is caught before it is unpickled; a signature over the manifest
bytes therefore covers the payload too.

Everything here is read before any signature is verified, so every read is
bounded: declared lengths are capped, and JSON (:func:`load_json`, the manifest
and the signature block) is parsed only up to MAX_JSON_DEPTH levels of nesting
and with numbers of at most MAX_NUMBER_CHARS characters that fit a float. A
hostile file is an ArtifactError (exit 3), never a RecursionError.

Bumping FORMAT_VERSION: change the framing or the meaning of a manifest key,
add the old version to READABLE_VERSIONS only if this module still reads it,
and keep a header fixture of every version under tests/data/.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, IntegrityError
from .manifest import Manifest, Payload

MAGIC = b"\x89BBX\r\n\x1a\n"
FORMAT_VERSION = 1
READABLE_VERSIONS = frozenset({1})
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_SIGNATURE_BYTES = 64 * 1024
MAX_JSON_DEPTH = 64
MAX_NUMBER_CHARS = 100

_PREFIX = struct.Struct(">8sHI")  # magic, format version, manifest length
_LENGTH = struct.Struct(">I")
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # a whole string, or a bracket outside one


@dataclass(frozen=True)
class Artifact:
    """The parts of an artifact file, as bytes; nothing here is trusted yet."""

    manifest_bytes: bytes
    signature: bytes
    payload: bytes

    def manifest(self) -> dict[str, Any]:
        """The manifest as JSON (shape-checked): what a signature covers, for tools that rewrite it."""
        return parse_manifest(self.manifest_bytes)

    def read_manifest(self) -> Manifest:
        """The typed manifest: what every reader reads."""
        return read_manifest(self.manifest_bytes)

    def check_payload(self, expected: Payload) -> None:
        """Raise IntegrityError unless the payload has the recorded length and sha256 (``manifest.payload``)."""
        if len(self.payload) != expected.size:
            raise IntegrityError(
                f"Payload is {len(self.payload)} bytes but the manifest records "
                f"{expected.size}: the file was truncated or padded. Nothing was unpickled; "
                "fetch the artifact again from its source."
            )
        digest = hashlib.sha256(self.payload).hexdigest()
        if not hmac.compare_digest(digest, expected.sha256):
            raise IntegrityError(
                "Payload sha256 does not match the manifest: the file was corrupted or altered. "
                "Nothing was unpickled; fetch the artifact again from its source."
            )

    def to_bytes(self) -> bytes:
        return pack(self.manifest_bytes, self.payload, self.signature)


def pack(manifest_bytes: bytes, payload: bytes, signature: bytes = b"") -> bytes:
    """Frame a manifest, a signature and a payload as one artifact file's bytes."""
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise ArtifactError(
            f"Manifest is {len(manifest_bytes)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit; "
            "pass fewer metadata or a smaller sample."
        )
    return b"".join(
        (
            _PREFIX.pack(MAGIC, FORMAT_VERSION, len(manifest_bytes)),
            manifest_bytes,
            _LENGTH.pack(len(signature)),
            signature,
            payload,
        )
    )


def unpack(data: bytes, source: str = "artifact") -> Artifact:
    """Split artifact bytes into their parts, checking the framing only."""
    offset, manifest_bytes, signature = _parse_header(data, len(data), source)
    return Artifact(manifest_bytes, signature, data[offset:])


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an artifact file, with a clear error for a missing path or a directory."""
    path = Path(path)
    _check_is_file(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"Cannot read {str(path)!r}: {exc.strerror}.") from None


def read_header(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """Read only the manifest bytes and the signature, never the payload."""
    path = Path(path)
    _check_is_file(path)
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_PREFIX.size + MAX_MANIFEST_BYTES + _LENGTH.size + MAX_SIGNATURE_BYTES)
    _, manifest_bytes, signature = _parse_header(head, size, str(path))
    return manifest_bytes, signature


def parse_manifest(manifest_bytes: bytes) -> dict[str, Any]:
    """Parse manifest JSON strictly (UTF-8, one object, no duplicate keys, no NaN, bounded: see load_json)
    and check its shape (:meth:`Manifest.from_json`); the JSON, for tools that rewrite a manifest."""
    value = _manifest_json(manifest_bytes)
    Manifest.from_json(value)
    return value


def read_manifest(manifest_bytes: bytes) -> Manifest:
    """The typed manifest of these bytes (parsed as :func:`parse_manifest` does): what every reader reads."""
    return Manifest.from_json(_manifest_json(manifest_bytes))


def _manifest_json(manifest_bytes: bytes) -> dict[str, Any]:
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise ArtifactError(
            f"Artifact manifest is {len(manifest_bytes)} bytes, over the {MAX_MANIFEST_BYTES}-byte limit; "
            "the file is damaged or not an artifact."
        )
    try:
        value = load_json(manifest_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"Artifact manifest is not valid JSON ({exc}); the file is damaged.") from None
    if not isinstance(value, dict):
        raise ArtifactError("Artifact manifest is not a JSON object; the file is damaged.")
    return value


def load_json(text: str) -> Any:
    """Strict, bounded JSON: ValueError for nesting deeper than MAX_JSON_DEPTH, a duplicate key, NaN,
    or a number longer than MAX_NUMBER_CHARS or beyond a float's range."""
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels at character {token.start()}")
        elif bracket in "]}":
            depth -= 1
    return json.loads(
        text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants, parse_int=_integer, parse_float=_float
    )


def dump_manifest(manifest: dict[str, Any]) -> bytes:
    """Encode a manifest canonically (sorted keys), so its bytes can be signed."""
    try:
        text = json.dumps(manifest, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"Manifest cannot be written as strict JSON: {exc}") from None
    return text.encode("utf-8")


def _parse_header(data: bytes, total_size: int, source: str) -> tuple[int, bytes, bytes]:
    if len(data) < _PREFIX.size or not data.startswith(MAGIC):
        raise ArtifactError(
            f"{source!r} is not a blackbox artifact (it does not start with the artifact signature bytes). "
            "Pass a file written by blackbox.save; plain pickles are never loaded."
        )
    _, version, manifest_len = _PREFIX.unpack_from(data)
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{source!r} uses artifact format {version}; this blackbox reads format(s) "
            f"{sorted(READABLE_VERSIONS)}. Upgrade blackbox, or re-save the model with this version."
        )
    if manifest_len > MAX_MANIFEST_BYTES:
        raise ArtifactError(
            f"{source!r} declares a {manifest_len}-byte manifest, over the {MAX_MANIFEST_BYTES}-byte limit; "
            "the file is damaged or not an artifact."
        )
    offset = _PREFIX.size + manifest_len
    if total_size < offset + _LENGTH.size or len(data) < offset + _LENGTH.size:
        raise ArtifactError(f"{source!r} ends inside its manifest: the file is truncated.")
    manifest_bytes = bytes(data[_PREFIX.size : offset])
    (signature_len,) = _LENGTH.unpack_from(data, offset)
    offset += _LENGTH.size
    if signature_len > MAX_SIGNATURE_BYTES:
        raise ArtifactError(
            f"{source!r} declares a {signature_len}-byte signature, over the {MAX_SIGNATURE_BYTES}-byte limit; "
            "the file is damaged or not an artifact."
        )
    if total_size < offset + signature_len or len(data) < offset + signature_len:
        raise ArtifactError(f"{source!r} ends inside its signature: the file is truncated.")
    signature = bytes(data[offset : offset + signature_len])
    return offset + signature_len, manifest_bytes, signature


def _check_is_file(path: Path) -> None:
    if path.is_dir():
        raise ArtifactError(f"{str(path)!r} is a directory, not an artifact file. Pass the path of a .bbx file.")
    if not path.exists():
        raise ArtifactError(f"{str(path)!r} does not exist. Check the path, or train and save a model first.")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard constant {name}")


def _integer(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a {len(text)}-character number, over the {MAX_NUMBER_CHARS}-character limit")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a {len(text)}-character number, over the {MAX_NUMBER_CHARS}-character limit")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is beyond a float's range")
    return value
