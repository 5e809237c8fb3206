"""The file format: framing, limits, strict manifest JSON."""

from __future__ import annotations

import struct

import pytest

from blackbox import artifact
from blackbox.artifact import MAGIC, dump_manifest, pack, parse_manifest, read_header, unpack
from blackbox.errors import ArtifactError, IntegrityError


def test_pack_unpack_round_trip(tmp_path):
    manifest = dump_manifest({"b": 1, "a": [1.5, None, "é"]})
    data = pack(manifest, b"payload", b"sig")
    parts = unpack(data)
    assert (parts.manifest_bytes, parts.signature, parts.payload) == (manifest, b"sig", b"payload")
    assert parts.to_bytes() == data
    path = tmp_path / "x.bbx"
    path.write_bytes(data)
    assert read_header(path) == (manifest, b"sig")
    assert manifest == b'{"a":[1.5,null,"\xc3\xa9"],"b":1}'  # canonical: sorted keys, UTF-8


def test_payload_must_match_the_manifest():
    import hashlib

    good = {"payload": {"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}}
    parts = unpack(pack(dump_manifest(good), b"abc"))
    parts.check_payload(good)
    with pytest.raises(IntegrityError, match="truncated or padded"):
        unpack(pack(dump_manifest(good), b"abcd")).check_payload(good)
    with pytest.raises(IntegrityError, match="sha256 does not match"):
        unpack(pack(dump_manifest(good), b"abd")).check_payload(good)


def test_unknown_format_version_is_refused():
    data = bytearray(pack(b"{}", b""))
    struct.pack_into(">H", data, len(MAGIC), artifact.FORMAT_VERSION + 1)
    with pytest.raises(ArtifactError, match="Upgrade blackbox"):
        unpack(bytes(data))


def test_oversized_declared_lengths_are_refused():
    data = MAGIC + struct.pack(">HI", artifact.FORMAT_VERSION, artifact.MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ArtifactError, match="limit"):
        unpack(data + b"x" * 100)
    sig = pack(b"{}", b"")[: len(MAGIC) + 6 + 2] + struct.pack(">I", artifact.MAX_SIGNATURE_BYTES + 1)
    with pytest.raises(ArtifactError, match="signature, over"):
        unpack(sig)


@pytest.mark.parametrize(
    "text, problem",
    [
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b'{"a": NaN}', "NaN"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_manifest_json_is_strict(text, problem):
    with pytest.raises(ArtifactError, match=problem):
        parse_manifest(text)


def test_manifest_must_be_strict_json_to_be_written():
    with pytest.raises(ArtifactError, match="strict JSON"):
        dump_manifest({"score": float("nan")})
