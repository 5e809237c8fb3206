"""The model store: where releases live, and the only ways the store changes.

Layout under the store's root (a directory, or any fsspec URL such as ``s3://bucket/prefix``)::

    NAME/VERSION/artifact.bbx    the artifact, exactly as pushed; never overwritten
    NAME/VERSION/release.json    its release record (sha256, size, created_at, key id, metrics),
                                 so listing never reads whole artifacts
    NAME/aliases/ALIAS.json      a signed pointer: the target's release record, a sequence
                                 number, and the previous targets (``history``) that rollback
                                 returns to (see blackbox.store.pointers)

A version exists once its artifact does: the artifact is published whole
and exclusively (see blackbox.store.backends), read back, and compared with
the digest of what was pushed; the record is written after it and can always
be derived from it again. A release is NAME/VERSION whose record names NAME
and VERSION: anything else in the store (stray files, copies, links) is not
one, and ``list`` ignores it.

Pointers are written only by ``push`` (``latest``), ``promote`` and
``rollback``, signed with the signing key, and change only by compare-and-swap,
so a writer that lost a race is told instead of silently undoing the other's
work; ``promote`` and ``rollback`` may sign one that expires (``expires_in``), which
``list`` still shows, marked expired, while every reader refuses it. Write access to the store is not enough to change what a reader
resolves: pointers are verified with the trusted keys. ``latest`` is moved by
every push to the highest version (:func:`~blackbox.store.releases.version_key`);
``NAME`` alone means ``NAME@latest``.

Nothing is ever unpickled here: pushing, promoting and pulling verify the
signature and the payload's digest (the checks ``blackbox.load`` makes before
unpickling), not the model. A pulled artifact must have the sha256 the
(signed) pointer or record names, and the name and version it was resolved as.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import signing
from ..artifact import read_bytes
from ..atomic import atomic_write
from ..errors import AuthenticityError, IntegrityError, StoreError, UsageError
from ..signing import SIGNING_KEY_ENV, PrivateKey
from ..trust import TrustedKeys
from . import pointers
from .backends import Conflict, Key, open_backend
from .releases import (
    ALIASES,
    LATEST,
    Pointer,
    Release,
    check_alias,
    check_name,
    check_version,
    damaged,
    describe,
    digest,
    is_alias,
    load_object,
    parse_ref,
    valid_name,
    verified,
    version_key,
)

log = logging.getLogger("blackbox")

ARTIFACT = "artifact.bbx"
RECORD = "release.json"
SigningKey = str | os.PathLike[str] | None


class Store:
    """A model store: push verified artifacts, list them, move aliases, pull verified copies."""

    def __init__(self, uri: str | os.PathLike[str], **storage_options: Any) -> None:
        self.uri = _redact(os.fspath(uri))
        self._backend = open_backend(uri, storage_options)

    @classmethod
    def open(cls, uri: str | os.PathLike[str], **storage_options: Any) -> Store:
        """Open the store at ``uri``: a directory, ``file://``, or any fsspec URL (``s3://bucket/prefix``).

        ``storage_options`` go to fsspec (e.g. ``client_kwargs={"endpoint_url": ...}``); the
        standard environment works too (AWS_ENDPOINT_URL, AWS_PROFILE, FSSPEC_S3_*).
        """
        return cls(uri, **storage_options)

    def push(
        self,
        path: str | os.PathLike[str],
        *,
        trusted_keys: TrustedKeys = None,
        allow_unsigned: bool = False,
        signing_key: SigningKey = None,
    ) -> Release:
        """Verify the artifact at ``path``, publish it as NAME/VERSION from its manifest, and move ``latest``.

        Pushing the same bytes again is a no-op (so a retry after a network error is
        safe); different bytes under an existing version are refused: versions are immutable.
        ``signing_key`` (default: BLACKBOX_SIGNING_KEY) signs the ``latest`` pointer; without
        one, only ``allow_unsigned`` lets it be written, unsigned.
        """
        data = read_bytes(path)
        signer = _signer(signing_key, allow_unsigned, f"pushing {path}")
        release = verified(data, str(path), trusted_keys, allow_unsigned)
        with self._io(f"pushing {release.ref}"):
            key = (release.name, release.version, ARTIFACT)
            existing = self._release(release.name, release.version)
            if existing is None:
                with contextlib.suppress(FileExistsError):  # a concurrent push won: compare what is there
                    self._backend.create(key, data)
                stored = self._backend.read(key)  # read back: what was written, and by whom
                stored_sha256 = "nothing" if stored is None else digest(stored)
            else:
                stored_sha256 = existing.sha256
            if stored_sha256 != release.sha256:
                raise StoreError(
                    f"Version {release.version} of {release.name} already exists in {self.uri} with different "
                    f"content (sha256 {stored_sha256[:12]}, yours {release.sha256[:12]}); versions are immutable. "
                    "Save the model with a new version (blackbox-train --version) and push that."
                )
            with contextlib.suppress(FileExistsError):  # written by an earlier or concurrent push of these bytes
                self._backend.create((release.name, release.version, RECORD), _dump(release.record()))
            self._advance_latest(release, signer, trusted_keys, allow_unsigned)
        return self._located(release)

    def list(self, name: str | None = None, *, trusted_keys: TrustedKeys = None, allow_unsigned: bool = False) -> list[Release]:
        """Every release (of ``name``, or of every model) in version order, with the aliases pointing at each.

        What is not a release is left out; so is an alias whose pointer cannot be believed
        (verified with ``trusted_keys``, as :meth:`resolve` does), with a warning naming it.
        An alias whose pointer verifies but has expired is not in ``aliases`` (no reader
        resolves it) but is in ``alias_pointers``, marked ``expired``, beside the others' expiries.
        """
        with self._io("listing"):
            names = [check_name("model name", name)] if name is not None else [
                n for n in self._backend.children(()) if valid_name(n)
            ]
            releases = []
            for model in names:
                found: dict[str, list[Pointer]] = {}
                for alias in self._aliases(model):
                    try:
                        target, _, _ = self._pointer(
                            model, alias, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, expiry=False
                        )
                    except (AuthenticityError, StoreError) as exc:
                        log.warning("Not listing alias %s@%s: %s", model, alias, exc.message)
                        continue
                    if target is not None:
                        assert target.pointer is not None
                        found.setdefault(target.version, []).append(target.pointer)
                for version in self._backend.children((model,)):
                    if not valid_name(version) or version in (ALIASES, LATEST):
                        continue
                    try:
                        release = self._release(model, version)
                    except StoreError as exc:
                        log.warning("Not listing %s: %s", self._where((model, version)), exc.message)
                        continue
                    if release is not None:
                        listed = tuple(found.get(version, ()))
                        located = self._located(release, tuple(p.alias for p in listed if not p.expired))
                        releases.append(dataclasses.replace(located, alias_pointers=listed))
        return sorted(releases, key=lambda r: (r.name, version_key(r.version)))

    def resolve(
        self,
        ref: str,
        *,
        trusted_keys: TrustedKeys = None,
        allow_unsigned: bool = False,
        after: Release | None = None,
        allow_downgrade: bool = False,
    ) -> Release:
        """The release ``NAME@ALIAS``, ``NAME@VERSION`` or ``NAME`` (= ``NAME@latest``) names.

        Reads one small object: the alias pointer (which carries the target's record;
        verified with ``trusted_keys``, default BLACKBOX_TRUSTED_KEYS; an unsigned one only
        with ``allow_unsigned``), or the version's record. An alias wins over a version of
        the same name. ``after`` is the release a follower resolved and serves now: a
        pointer older than its pointer, or naming an older version without being a
        rollback, is refused (AuthenticityError) unless ``allow_downgrade``.
        """
        name, target = parse_ref(ref)
        with self._io(f"resolving {ref}"):
            release = None
            if is_alias(target):
                release, _, _ = self._pointer(name, target, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
            if release is None:
                release = self._release(name, target)
                release = self._located(release) if release is not None else None
        if release is None:
            raise StoreError(
                f"{name}@{target} is neither an alias nor a version in {self.uri}. "
                f"`blackbox list {self.uri} {name}` shows what there is."
            )
        pointers.check_succession(release, after, f"{name}@{target} in {self.uri}", allow_downgrade=allow_downgrade)
        return release

    def fetch(
        self, ref: str | Release, *, trusted_keys: TrustedKeys = None, allow_unsigned: bool = False
    ) -> tuple[Release, bytes]:
        """Download the artifact of ``ref`` (resolved here, or a Release from :meth:`resolve`), verified
        (its sha256 is the one resolved, its signature and payload digest check); nothing is unpickled."""
        release = ref if isinstance(ref, Release) else self.resolve(
            ref, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned
        )
        return release, self._download(release, trusted_keys, allow_unsigned)

    def pull(
        self,
        ref: str | Release,
        dest: str | os.PathLike[str],
        *,
        trusted_keys: TrustedKeys = None,
        allow_unsigned: bool = False,
    ) -> Path:
        """Download ``ref`` (as :meth:`fetch` does), verify it, and place it at ``dest`` atomically.

        A directory (existing, or named with a trailing slash) receives ``NAME-VERSION.bbx``.
        """
        release, data = self.fetch(ref, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)
        target = Path(dest)
        if target.is_dir() or os.fspath(dest).endswith(os.sep):
            target = target / f"{release.name}-{release.version}.bbx"
        try:
            return atomic_write(target, data)
        except OSError as exc:
            raise StoreError(f"Cannot write the pulled {release.ref} to {str(target)!r}: {exc}.") from None

    def promote(
        self,
        name: str,
        version: str,
        alias: str,
        *,
        trusted_keys: TrustedKeys = None,
        allow_unsigned: bool = False,
        signing_key: SigningKey = None,
        allow_downgrade: bool = False,
        expires_in: dt.timedelta | None = None,
    ) -> Release:
        """Point ``NAME@ALIAS`` at ``version``, after verifying its artifact; the old target goes to history.

        The pointer is signed with ``signing_key`` (default: BLACKBOX_SIGNING_KEY). Moving
        the alias to an older version than it names is refused unless ``allow_downgrade``;
        then the pointer says it is a rollback, which followers accept. With ``expires_in``
        the pointer is believed only that long (promoting the same version again re-signs it).
        """
        check_name("model name", name)
        check_version(version)
        check_alias(alias)
        signer = _signer(signing_key, allow_unsigned, f"promoting {name}@{version} to {alias}")
        expires_at = _expiry(expires_in, signer)
        with self._io(f"promoting {name}@{version} to {alias}"):
            current, history, token = self._pointer(
                name, alias, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, for_update=True
            )
            release = self._release(name, version)
            if release is None:
                raise StoreError(f"Version {version} of {name} is not in {self.uri}; push it first.")
            if current is not None and current.version == version and (_signed(current) or signer is None) and (
                expires_at is None and (current.pointer is None or current.pointer.expires_at is None)
            ):
                return current  # already so; an expiring pointer is re-signed (without expires_in: to never expire)
            downgrade = current is not None and version_key(version) < version_key(current.version)
            if downgrade and current is not None and not allow_downgrade:
                raise StoreError(
                    f"{name}@{alias} names version {current.version}; moving it to the older {version} is a "
                    "downgrade, which servers following it refuse unless the pointer says it is a rollback. "
                    "Use `blackbox rollback` to return to its previous target, or pass --allow-downgrade "
                    "(allow_downgrade=True) to promote it as a rollback."
                )
            self._download(release, trusted_keys, allow_unsigned)
            successor = pointers.statement(release, alias, current, _history(current, history, release), rollback=downgrade)
            self._swap(name, alias, pointers.seal(successor, signer, expires_at), token)
        return self._located(release, (alias,))

    def rollback(
        self,
        name: str,
        alias: str,
        *,
        trusted_keys: TrustedKeys = None,
        allow_unsigned: bool = False,
        signing_key: SigningKey = None,
        expires_in: dt.timedelta | None = None,
    ) -> Release:
        """Point ``NAME@ALIAS`` back at its previous target (verified), taking it off the history.

        The new pointer is signed (as for :meth:`promote`, ``expires_in`` too) and says it is a rollback.
        """
        check_name("model name", name)
        check_alias(alias)
        signer = _signer(signing_key, allow_unsigned, f"rolling back {name}@{alias}")
        expires_at = _expiry(expires_in, signer)
        with self._io(f"rolling back {name}@{alias}"):
            current, history, token = self._pointer(
                name, alias, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, for_update=True
            )
            if current is None:
                raise StoreError(
                    f"{name} has no alias {alias!r} in {self.uri}; `blackbox promote` creates one."
                    if token is None else
                    f"{name}@{alias} in {self.uri} has a pointer that cannot be believed (see the warning above), "
                    "so there is no trusted history to roll back through. Promote the version you want instead."
                )
            if not history:
                raise StoreError(
                    f"{name}@{alias} (now version {current.version}) has no previous target left in its history "
                    "to roll back to. Promote the version you want instead."
                )
            previous = history[-1]
            release = self._release(name, previous["version"])
            if release is None:
                raise StoreError(
                    f"{name}@{alias} would roll back to version {previous['version']}, which is missing from "
                    f"{self.uri}; promote an existing version instead."
                )
            if release.sha256 != previous["sha256"]:
                raise IntegrityError(
                    f"Version {release.version} of {name} in {self.uri} is not the artifact {alias} pointed at "
                    f"before (sha256 {release.sha256[:12]}, history says {previous['sha256'][:12]}): the store was "
                    "altered. Refusing to roll back to it."
                )
            self._download(release, trusted_keys, allow_unsigned)
            successor = pointers.statement(release, alias, current, history[:-1], rollback=True)
            self._swap(name, alias, pointers.seal(successor, signer, expires_at), token)
        return self._located(release, (alias,))

    def gc(self, older_than: float = 3600.0) -> builtins.list[str]:
        """Remove what interrupted writers left, if older than ``older_than`` seconds; return what.

        That is temporary files, and on S3 multipart uploads of the store's own keys
        that were never completed (S3 keeps their parts, unseen, until aborted). They
        are never versions or pointers (readers ignore them); the age keeps gc away
        from writes still in flight.
        """
        removed = []
        with self._io("collecting temporary files"):
            for name in self._backend.children(()):
                for sub in self._backend.children((name,)):
                    for leaf in self._backend.children((name, sub)):
                        key: Key = (name, sub, leaf)
                        if _temporary(leaf) and self._backend.age(key) >= older_than:
                            self._backend.delete(key)
                            removed.append(self._where(key))
            for key, upload_id, age in self._backend.uploads():
                if _own_key(key) and age >= older_than:
                    self._backend.abort_upload(key, upload_id)
                    removed.append(f"{self._where(key)} (unfinished upload {upload_id})")
        return removed

    # ------------------------------------------------------------------ internals

    def _release(self, name: str, version: str) -> Release | None:
        """The release record of NAME/VERSION; derived from the artifact if a push died before writing it.

        A record (or artifact) of another name or version there is not this release: a StoreError.
        """
        key = (name, version, RECORD)
        data = self._backend.read(key)
        if data is not None:
            release = Release.from_record(load_object(data, self._where(key)), where=self._where(key))
        else:
            key = (name, version, ARTIFACT)
            artifact = self._backend.read(key)
            if artifact is None:
                return None
            release = describe(artifact, self._where(key))
        if (release.name, release.version) != (name, version):
            raise damaged(self._where(key), f"holds {release.ref}, not {name}@{version}, so it is not a release")
        return release

    def _aliases(self, name: str) -> builtins.list[str]:
        leaves = self._backend.children((name, ALIASES))
        names = (leaf.removesuffix(".json") for leaf in leaves if leaf.endswith(".json"))
        return [alias for alias in names if is_alias(alias)]

    def _pointer(
        self,
        name: str,
        alias: str,
        *,
        trusted_keys: TrustedKeys = None,
        allow_unsigned: bool = False,
        for_update: bool = False,
        expiry: bool = True,
    ) -> tuple[Release | None, builtins.list[dict[str, Any]], Any]:
        """The release NAME@ALIAS's pointer names (None if unset), its history, and the token ``_swap`` compares.

        A pointer that cannot be believed raises (blackbox.store.pointers); ``for_update``
        (a writer about to replace it), it is logged and treated as unset, history and all,
        except an expired one, whose history the writer keeps. Without ``expiry`` (``list``,
        which reports it) an expired pointer is returned as any other.
        """
        key = (name, ALIASES, f"{alias}.json")
        try:
            data, token = self._backend.read_versioned(key) if for_update else (self._backend.read(key), None)
        except Conflict:
            raise self._lost_race(name, alias) from None
        if data is None:
            return None, [], token
        try:
            release, history = pointers.read(
                data, self._where(key), name, alias, trusted_keys, allow_unsigned, expiry=expiry and not for_update
            )
        except (AuthenticityError, StoreError) as exc:
            if not for_update:
                raise
            log.warning("Replacing %s, which cannot be believed (%s); its history is dropped.", self._where(key), exc.message)
            return None, [], token
        return self._located(release, (alias,)), history, token

    def _swap(self, name: str, alias: str, pointer: bytes, token: Any) -> None:
        try:
            self._backend.swap((name, ALIASES, f"{alias}.json"), pointer, token)
        except Conflict:
            raise self._lost_race(name, alias) from None

    def _lost_race(self, name: str, alias: str) -> StoreError:
        return StoreError(
            f"{name}@{alias} in {self.uri} was changed by someone else while this command ran, so it was not "
            f"changed here. Check `blackbox list {self.uri} {name}` and run the command again if still needed."
        )

    def _advance_latest(
        self, release: Release, signer: PrivateKey | None, trusted_keys: TrustedKeys, allow_unsigned: bool
    ) -> None:
        """Move ``latest`` to ``release`` unless it names a higher version (or this one, signed); pushes retry."""
        for _ in range(10):
            current, history, token = self._pointer(
                release.name, LATEST, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, for_update=True
            )
            if current is not None and (
                version_key(current.version) > version_key(release.version)
                or (current.version == release.version and (_signed(current) or signer is None))
            ):
                return
            successor = pointers.statement(release, LATEST, current, _history(current, history), rollback=False)
            try:
                self._backend.swap((release.name, ALIASES, f"{LATEST}.json"), pointers.seal(successor, signer), token)
                return
            except Conflict:
                continue
        raise self._lost_race(release.name, LATEST)

    def _download(self, release: Release, trusted_keys: TrustedKeys, allow_unsigned: bool) -> bytes:
        key = (release.name, release.version, ARTIFACT)
        with self._io(f"downloading {release.ref}"):
            data = self._backend.read(key)
        if data is None:
            raise StoreError(
                f"{release.ref} is in {self.uri}, but its artifact {self._where(key)} is missing. "
                "Restore it from a verified copy, or promote or roll back to another version."
            )
        if digest(data) != release.sha256:
            raise IntegrityError(
                f"{self._where(key)} does not match its release record (sha256 {digest(data)[:12]}, recorded "
                f"{release.sha256[:12]}): it was altered or damaged after it was pushed. Nothing was used; restore "
                "it from a verified copy, or promote or roll back to another version."
            )
        found = verified(data, self._where(key), trusted_keys, allow_unsigned)
        if (found.name, found.version) != (release.name, release.version):
            raise IntegrityError(
                f"{self._where(key)} holds {found.ref}, not {release.ref}: an artifact was copied into the wrong "
                "place. Refusing it."
            )
        return data

    def _located(self, release: Release, aliases: tuple[str, ...] = ()) -> Release:
        """``release`` as found here (its uri, and the aliases it was found through)."""
        return dataclasses.replace(release, aliases=aliases, uri=self._where((release.name, release.version, ARTIFACT)))

    def _where(self, key: Key) -> str:
        return posixpath.join(self.uri, *key)

    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Turn the backend's I/O errors into a StoreError naming the store (never its credentials)."""
        try:
            yield
        except self._backend.errors as exc:
            raise StoreError(
                f"{what} in {self.uri} failed: {exc}. Check that the store is reachable and that you may write to it."
            ) from exc


def _signer(signing_key: SigningKey, allow_unsigned: bool, what: str) -> PrivateKey | None:
    """The key that signs the pointer a command writes; None (unsigned, warned) only with ``allow_unsigned``."""
    path = signing_key or os.environ.get(SIGNING_KEY_ENV) or None
    if path is not None:
        return signing.load_private_key(path)
    if not allow_unsigned:
        raise UsageError(
            f"{what} writes an alias pointer, and pointers are signed so that write access to the store is not "
            f"enough to change what servers run: pass --signing-key KEY or set {SIGNING_KEY_ENV} (`blackbox keygen` "
            "makes a key). Only for readers that accept unsigned pointers: --allow-unsigned."
        )
    log.warning("WRITING AN UNSIGNED ALIAS POINTER while %s (no signing key, allow_unsigned=True)", what)
    return None


def _expiry(expires_in: dt.timedelta | None, signer: PrivateKey | None) -> str | None:
    """When a pointer signed now for ``expires_in`` expires (its signature's ``expires_at``); None: never."""
    if expires_in is None:
        return None
    if expires_in <= dt.timedelta(0):
        raise UsageError(f"expires_in must be a positive duration, not {expires_in}.")
    if signer is None:
        raise UsageError("An unsigned pointer cannot expire (the expiry is a claim of its signature): pass a signing key.")
    try:
        return (dt.datetime.now(dt.UTC) + expires_in).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OverflowError:
        raise UsageError(f"expires_in {expires_in} ends after the year 9999; give a shorter duration.") from None


def _signed(release: Release) -> bool:
    return release.pointer is not None and release.pointer.key_id is not None


def _history(current: Release | None, history: list[dict[str, Any]], target: Release | None = None) -> list[dict[str, Any]]:
    """The history a pointer's successor keeps: the old history plus the old target, unless it is ``target`` (a re-signing)."""
    if current is None:
        return []
    if target is not None and target.sha256 == current.sha256:
        return history
    updated_at = current.pointer.updated_at if current.pointer is not None else None
    return [*history, {"version": current.version, "sha256": current.sha256, "updated_at": updated_at}]


def _temporary(leaf: str) -> bool:
    return leaf.startswith(".") and leaf.endswith(".tmp")


def _own_key(key: Key) -> bool:
    """Whether ``key`` is one this store writes (an artifact, record, pointer, or a temporary file beside one)."""
    if len(key) != 3 or not valid_name(key[0]):
        return False
    if key[1] == ALIASES:
        return key[2].endswith(".json") or _temporary(key[2])
    return valid_name(key[1]) and (key[2] in (ARTIFACT, RECORD) or _temporary(key[2]))


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"


def _redact(uri: str) -> str:
    """The URI without any ``user:password@`` part, fit for messages."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", uri)
