"""Alias pointers: signed statements of which release NAME@ALIAS names, and when a reader believes one.

Anyone who can write to a store can write a pointer file, so a pointer is only
believed if the holder of a signing key stated it (after The Update Framework's
signed, versioned metadata). A pointer file is JSON
``{"signed": STATEMENT, "signature": BLOCK}``. STATEMENT is the target's release
record (name, version, sha256 and size of the artifact file, created_at, the
artifact's key id, metrics) and:

* ``type``: ``blackbox-release-pointer/v1``; ``alias``: the alias it is for;
* ``sequence``: greater than the sequence of the pointer it replaced, and never
  below the writer's clock in milliseconds, so that a writer replacing a pointer
  it cannot believe (edited, unsigned) still continues the series readers saw;
* ``updated_at``; ``rollback``: true when written by ``rollback`` (or a promote
  allowed to go back to an older version); ``history``: the previous targets.

BLOCK is a blackbox signature block (Ed25519 or ECDSA P-256 blackbox.signing) over a pointer
tag and the canonical JSON of STATEMENT as parsed, so what is verified is what
is used, and no artifact signature (over a JSON manifest) can pass for one. Its
signed ``expires_at`` (set by ``promote``/``rollback`` with ``expires_in``; none
by default, and never on ``latest``) bounds how long the pointer is believed, as
The Update Framework's ``expires`` does: someone who can write to the store but
holds no key can replay the current pointer forever (a freeze: no newer release
ever reaches the readers), but not past its expiry; the publisher re-signs it
before then by promoting the same version again with ``expires_in``.

A reader believes a pointer if its signature verifies against the trusted keys
(an unsigned one, as older blackbox versions wrote, only with
``allow_unsigned``, loudly), has not expired (a writer about to replace it reads
it with ``expiry=False``, keeping its history; ``list`` too, reporting it as expired
rather than believed) and names the requested model and alias. The signer writes
either no expiry or a UTC timestamp (``YYYY-MM-DDTHH:MM:SSZ``); any other signed
``expires_at`` (a number, "", a list, an impossible date) is refused as malformed,
by every reader and by ``list``: it is neither never-expiring nor merely expired. Given
the release it accepted before (``after``), it also refuses a pointer with a
lower sequence (an old pointer replayed) and one naming an older version that
is not a rollback; ``allow_downgrade`` lifts both, for an operator. Whether the
artifact is the one named (its sha256, its manifest's name and version) is
checked where it is downloaded (blackbox.store.store).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shlex
import time
from typing import Any

from .. import signing
from ..errors import AuthenticityError
from ..manifest import utc_now
from ..signing import Keyring, PrivateKey
from ..trust import TrustedKeys
from .releases import Pointer, Release, damaged, load_object, version_key

log = logging.getLogger("blackbox")

TYPE = "blackbox-release-pointer/v1"
_TAG = b"blackbox-release-pointer-v1\n"  # signed ahead of the statement: no artifact manifest (JSON) starts so
HISTORY_LIMIT = 50


def statement(
    release: Release, alias: str, replaced: Release | None, history: list[dict[str, Any]], *, rollback: bool
) -> dict[str, Any]:
    """The statement that points ``alias`` at ``release``, succeeding the believed pointer of ``replaced``."""
    previous = replaced.pointer.sequence if replaced is not None and replaced.pointer is not None else 0
    return {
        **release.record(),
        "type": TYPE,
        "alias": alias,
        "sequence": max(previous + 1, int(time.time() * 1000)),
        "updated_at": utc_now(),
        "rollback": rollback,
        "history": history[-HISTORY_LIMIT:],
    }


def seal(statement: dict[str, Any], private_key: PrivateKey | None, expires_at: str | None = None) -> bytes:
    """The pointer file for ``statement``, signed with ``private_key`` (unsigned if None), believed until ``expires_at``."""
    document: dict[str, Any] = {"signed": statement}
    if private_key is not None:
        document["signature"] = json.loads(signing.sign(_message(statement), private_key, expires_at=expires_at))
    return json.dumps(document, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"


def read(
    data: bytes, where: str, name: str, alias: str, trusted_keys: TrustedKeys, allow_unsigned: bool, *, expiry: bool = True
) -> tuple[Release, list[dict[str, Any]]]:
    """The release a pointer file names (with its :class:`Pointer`) and its history; raise unless believed."""
    document = load_object(data, where)
    statement, block = (document.get("signed"), document.get("signature")) if "signed" in document else (document, None)
    if not isinstance(statement, dict) or not isinstance(statement.get("history"), list):
        raise damaged(where, "is not a valid alias pointer")
    if block is None:
        if not allow_unsigned:
            raise AuthenticityError(
                f"{where} is an unsigned alias pointer (written by an older blackbox, or without a signing key): "
                "anyone who can write to the store could have written it, so it is refused. Sign it by promoting "
                f"again with a key: `blackbox promote STORE {name} VERSION --alias {alias} --signing-key KEY` "
                "(for latest: push the newest version again with --signing-key); or accept unsigned pointers "
                "with --allow-unsigned."
            )
        log.warning("USING AN UNSIGNED ALIAS POINTER %s (allow_unsigned=True): what it names was not authenticated", where)
        key_id = expires_at = None
    else:
        claims = _verify(statement, block, where, trusted_keys)
        key_id, expires_at = str(claims["key_id"]), claims.get("expires_at")
        if statement.get("type") != TYPE:
            raise AuthenticityError(f"{where} is signed, but is not a release pointer (type {statement.get('type')!r}); refusing it.")
    if (statement.get("name"), statement.get("alias")) != (name, alias):
        raise AuthenticityError(
            f"{where} is the pointer of {statement.get('name')}@{statement.get('alias')}, not of {name}@{alias}: "
            f"it was copied there by someone who can write to the store. Refusing it; promote {name}@{alias} again."
        )
    what = f"{where}, the alias pointer of {name}@{alias},"
    expires = _expiry(expires_at, what, name, alias)
    sequence, rollback = statement.get("sequence", 0), statement.get("rollback", False)
    if type(sequence) is not int or not isinstance(rollback, bool):
        raise damaged(where, "is not a valid alias pointer (sequence, rollback)")
    release = Release.from_record(statement, where=where)
    expired = expires is not None and dt.datetime.now(dt.UTC) >= expires
    if expiry and expired:
        raise AuthenticityError(
            f"{what} expired at {expires_at}; past its expiry it is refused, since a store frozen on an old pointer "
            f"would otherwise serve it forever. What already serves stays. Its publisher re-signs it: "
            f"`{resign_command(name, alias)}`."
        )
    pointer = Pointer(alias=alias, sequence=sequence, rollback=rollback, updated_at=statement.get("updated_at"), key_id=key_id,
                      expires_at=expires_at, expired=expired)
    return dataclasses.replace(release, pointer=pointer), statement["history"]


def resign_command(name: str, alias: str, *, store: str = "STORE", version: str = "VERSION") -> str:
    """The command that re-signs NAME@ALIAS's pointer with a fresh expiry: every message saying how uses this one.

    Each value is quoted for a POSIX shell (a store path with a space stays one argument).
    """
    store, name, version, alias = map(shlex.quote, (store, name, version, alias))
    return f"blackbox promote {store} {name} {version} --alias {alias} --expires-in DAYS --signing-key KEY"


def _expiry(expires_at: Any, what: str, name: str, alias: str) -> dt.datetime | None:
    """A pointer's signed expiry as a time (None: it has none); raise unless the signer's own format, exactly."""
    if expires_at is None:
        return None
    try:
        return signing.expiry_time(expires_at)
    except ValueError:
        raise AuthenticityError(
            f"{what} is signed with a malformed expiry {expires_at!r} (a signer writes a UTC timestamp "
            f"YYYY-MM-DDTHH:MM:SSZ, or none); refusing it, neither as never expiring nor as expired. Its publisher "
            f"re-signs it: `{resign_command(name, alias)}` (or without --expires-in, for none)."
        ) from None


def check_succession(release: Release, after: Release | None, ref: str, *, allow_downgrade: bool) -> None:
    """Refuse ``release`` (resolved through a pointer) as the successor of ``after``, the release accepted before."""
    new, old = release.pointer, after.pointer if after is not None else None
    if new is None or old is None or allow_downgrade:
        return
    assert after is not None
    if new.sequence < old.sequence or (new.sequence == old.sequence and release.sha256 != after.sha256):
        raise AuthenticityError(
            f"{ref}: the store holds an older pointer (sequence {new.sequence}, version {release.version}) than the "
            f"one already accepted (sequence {old.sequence}, version {after.version}): an old pointer replayed by "
            "someone who can write to the store. Refusing it; what already serves stays. An operator who means "
            "to go back passes --allow-downgrade."
        )
    if version_key(release.version) < version_key(after.version) and not new.rollback:
        raise AuthenticityError(
            f"{ref} now names version {release.version}, older than version {after.version} already served, and "
            "its pointer is not a rollback: refusing a downgrade. Go back with `blackbox rollback` (or `blackbox "
            "promote --allow-downgrade`), or pass --allow-downgrade to accept it."
        )


def _verify(statement: dict[str, Any], block: Any, where: str, trusted_keys: TrustedKeys) -> dict[str, Any]:
    """The verified claims of ``statement``'s signature (its expiry not checked); raise AuthenticityError saying why not."""
    keyring = Keyring.resolve(trusted_keys)
    try:
        block_bytes = json.dumps(block).encode()
        kid = str(signing.read_block(block_bytes)["key_id"])
        message = _message(statement)
    except (AuthenticityError, TypeError, ValueError):
        raise AuthenticityError(f"{where} has a malformed signature; refusing it. Promote the alias again.") from None
    keyring.trusted(kid, where, " Promote the alias again with a trusted key.")
    try:
        return keyring.verify(message, block_bytes, expiry=False)
    except AuthenticityError:
        raise AuthenticityError(
            f"{where} does not match its signature (key {kid}): it was edited after it was signed, by someone "
            "without the key. Refusing it; promote the alias again (or roll it back) with the key."
        ) from None


def _message(statement: dict[str, Any]) -> bytes:
    return _TAG + json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

