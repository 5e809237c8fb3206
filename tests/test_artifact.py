"""The file format: framing, limits, strict manifest JSON."""

from __future__ import annotations

import struct

import pytest

from blackbox import artifact
from blackbox.artifact import MAGIC, dump_manifest, load_json, pack, parse_manifest, read_header, unpack
from blackbox.errors import ArtifactError, IntegrityError
from blackbox.manifest import Payload


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
    payload = Payload(size=3, sha256=good["payload"]["sha256"])
    parts = unpack(pack(dump_manifest(good), b"abc"))
    parts.check_payload(payload)
    with pytest.raises(IntegrityError, match="truncated or padded"):
        unpack(pack(dump_manifest(good), b"abcd")).check_payload(payload)
    with pytest.raises(IntegrityError, match="sha256 does not match"):
        unpack(pack(dump_manifest(good), b"abd")).check_payload(payload)


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


# -- hostile framing: everything read before the signature is verified is bounded -----------------------------
HOSTILE_MANIFESTS = {
    "nested_arrays": b"[" * 100_000,
    "nested_objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "nested_inside_a_real_object": b'{"name": "x", "metadata": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    "huge_integer": b'{"size": 1' + b"0" * 100_000 + b"}",
    "float_overflowing_to_infinity": b'{"size": 1e999999}',
}


@pytest.mark.parametrize("text", HOSTILE_MANIFESTS.values(), ids=HOSTILE_MANIFESTS.keys())
def test_hostile_manifest_json_is_a_malformed_artifact(text):
    with pytest.raises(ArtifactError, match="manifest"):
        parse_manifest(text)


def test_a_deep_manifest_a_real_one_could_be_still_parses():
    assert load_json('{"a": ' + "[" * 30 + "1" + "]" * 30 + ', "b": "[[[[{{{{\\"", "n": 1e308}')["n"] == 1e308


def test_hostile_signature_block_is_refused_not_a_traceback():
    from blackbox.errors import AuthenticityError
    from blackbox.signing import read_block

    with pytest.raises(AuthenticityError, match="malformed"):
        read_block(b"[" * 60_000)


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory, saved):
    root = tmp_path_factory.mktemp("hostile")
    files = {}
    for name, text in HOSTILE_MANIFESTS.items():
        files[name] = root / f"{name}.bbx"
        files[name].write_bytes(pack(text, b"payload"))
    files["nested_signature_block"] = root / "nested_signature_block.bbx"
    parts = unpack(saved.read_bytes())  # a real manifest: only the signature block is hostile
    files["nested_signature_block"].write_bytes(pack(parts.manifest_bytes, parts.payload, b"[" * 60_000))
    return files


HOSTILE_FILES = [*HOSTILE_MANIFESTS, "nested_signature_block"]


@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_hostile_files_are_refused_by_the_python_api(hostile_files, name):
    """Unsigned and not allowed: refused as unsigned; allowed, or inspected: the manifest is parsed, and malformed."""
    import blackbox

    path = hostile_files[name]
    if name == "nested_signature_block":
        assert blackbox.inspect(path)["signature"]["valid"] is False
        for call in (blackbox.load, lambda p: blackbox.load(p, allow_unsigned=True)):
            with pytest.raises(blackbox.AuthenticityError, match="malformed"):
                call(path)
        return
    with pytest.raises(blackbox.AuthenticityError, match="unsigned"):
        blackbox.load(path)
    for call in (blackbox.inspect, lambda p: blackbox.load(p, allow_unsigned=True)):
        with pytest.raises(ArtifactError, match="manifest"):
            call(path)


@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_hostile_files_end_every_command_with_an_exit_code_and_no_traceback(hostile_files, name, tmp_path, capsys, monkeypatch):
    from blackbox.cli import cli, main
    from serving import gunicorn_app
    from serving.cli import serve

    monkeypatch.setitem(cli.commands, "serve", serve)
    monkeypatch.setattr(gunicorn_app.Server, "run", lambda self: pytest.fail("gunicorn would fork the test process"))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    path = str(hostile_files[name])
    rows = tmp_path / "rows.csv"
    rows.write_text("a\n1\n")
    malformed = 4 if name == "nested_signature_block" else 3  # a malformed signature block is an authenticity refusal
    commands = {
        "inspect": ["inspect", path, "--require-valid"],
        "verify": ["verify", path],
        "push": ["push", path, str(tmp_path / "store")],
        "score": ["score", path, str(rows), "-o", str(tmp_path / "out.csv")],
        "serve": ["serve", path],
    }
    for label, args in commands.items():
        for extra in ([], ["--allow-unsigned"]):
            if label == "inspect" and extra:
                continue
            code = main([*args, *extra])
            err = capsys.readouterr().err
            expected = {malformed} if extra or label == "inspect" or malformed == 4 else {3, 4}  # 4: unsigned, refused first
            assert code in expected, (label, extra, code, err)
            assert "Traceback" not in err and "RecursionError" not in err, label
