"""The model store: where releases live, and the only ways the store changes.

Layout under the store's root (a directory, or any fsspec URL such as ``s3://bucket/prefix``)::

    NAME/VERSION/artifact.bbx    the artifact, exactly as pushed; never overwritten
    NAME/VERSION/release.json    its release record (sha256, size, created_at, key id, metrics),
                                 so listing never reads whole artifacts
    NAME/aliases/ALIAS.json      a pointer: the target's release record, when it was set,
                                 and the previous targets (``history``) that rollback returns to

A version exists once its artifact does: the artifact is published whole
and exclusively (see blackbox.store.backends), read back, and compared with
the digest of what was pushed; the record is written after it and can always
be derived from it again. Pointers change only by compare-and-swap, so a
writer that lost a race is told instead of silently undoing the other's work.
``latest`` is an alias that every push moves to the newest release (by
``created_at``); ``NAME`` alone means ``NAME@latest``.

Nothing is ever unpickled here: pushing, promoting and pulling verify the
signature and the payload's digest (the checks ``blackbox.load`` makes before
unpickling), not the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..artifact import read_bytes
from ..atomic import atomic_write
from ..errors import IntegrityError
from ..manifest import utc_now
from ..trust import TrustedKeys
from .backends import Conflict, Key, open_backend
from .releases import (
    ALIASES,
    LATEST,
    Release,
    StoreError,
    check_alias,
    check_name,
    check_version,
    damaged,
    describe,
    digest,
    is_alias,
    parse_ref,
    valid_name,
    verified,
)

ARTIFACT = "artifact.bbx"
RECORD = "release.json"
HISTORY_LIMIT = 50


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
        self, path: str | os.PathLike[str], *, trusted_keys: TrustedKeys = None, allow_unsigned: bool = False
    ) -> Release:
        """Verify the artifact at ``path`` and publish it as NAME/VERSION from its manifest.

        Pushing the same bytes again is a no-op (so a retry after a network error is
        safe); different bytes under an existing version are refused: versions are immutable.
        """
        data = read_bytes(path)
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
            self._advance_latest(release)
        return self._located(release)

    def list(self, name: str | None = None) -> list[Release]:
        """Every release (of ``name``, or of every model), oldest first, with the aliases pointing at each."""
        with self._io("listing"):
            names = [check_name("model name", name)] if name is not None else [
                n for n in self._backend.children(()) if valid_name(n)
            ]
            releases = []
            for model in names:
                aliases: dict[str, list[str]] = {}
                for alias in self._aliases(model):
                    pointer, _ = self._pointer(model, alias)
                    if pointer is not None:
                        aliases.setdefault(pointer["version"], []).append(alias)
                for version in self._backend.children((model,)):
                    release = self._release(model, version) if valid_name(version) and version != ALIASES else None
                    if release is not None:
                        releases.append(self._located(release, tuple(aliases.get(version, ()))))
        return sorted(releases, key=lambda r: (r.name, r.created_at or "", r.version))

    def resolve(self, ref: str) -> Release:
        """The release ``NAME@ALIAS``, ``NAME@VERSION`` or ``NAME`` (= ``NAME@latest``) names.

        Reads one small object: the alias pointer (which carries the target's
        record), or the version's record. An alias wins over a version of the same name.
        """
        name, target = parse_ref(ref)
        with self._io(f"resolving {ref}"):
            pointer, _ = self._pointer(name, target) if is_alias(target) else (None, None)
            if pointer is not None:
                release = Release.from_record(pointer, where=self._where((name, ALIASES, f"{target}.json")))
                return self._located(release, (target,))
            release = self._release(name, target)
        if release is None:
            raise StoreError(
                f"{name}@{target} is neither an alias nor a version in {self.uri}. "
                f"`blackbox list {self.uri} {name}` shows what there is."
            )
        return self._located(release)

    def fetch(
        self, ref: str, *, trusted_keys: TrustedKeys = None, allow_unsigned: bool = False
    ) -> tuple[Release, bytes]:
        """Resolve ``ref`` and download its artifact, verified (digest, signature, payload); nothing is unpickled."""
        release = self.resolve(ref)
        return release, self._download(release, trusted_keys, allow_unsigned)

    def pull(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        trusted_keys: TrustedKeys = None,
        allow_unsigned: bool = False,
    ) -> Path:
        """Download ``ref``, verify it, and place it at ``dest`` atomically.

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
    ) -> Release:
        """Point ``NAME@ALIAS`` at ``version``, after verifying its artifact; the old target goes to history."""
        check_name("model name", name)
        check_version(version)
        check_alias(alias)
        with self._io(f"promoting {name}@{version} to {alias}"):
            pointer, token = self._pointer(name, alias, for_update=True)
            release = self._release(name, version)
            if release is None:
                raise StoreError(f"Version {version} of {name} is not in {self.uri}; push it first.")
            if pointer is None or pointer["version"] != version:
                self._download(release, trusted_keys, allow_unsigned)
                self._swap(name, alias, _pointer_to(release, alias, _history(pointer)), token)
        return self._located(release, (alias,))

    def rollback(
        self, name: str, alias: str, *, trusted_keys: TrustedKeys = None, allow_unsigned: bool = False
    ) -> Release:
        """Point ``NAME@ALIAS`` back at its previous target (verified), taking it off the history."""
        check_name("model name", name)
        check_alias(alias)
        with self._io(f"rolling back {name}@{alias}"):
            pointer, token = self._pointer(name, alias, for_update=True)
            if pointer is None:
                raise StoreError(f"{name} has no alias {alias!r} in {self.uri}; `blackbox promote` creates one.")
            if not pointer["history"]:
                raise StoreError(
                    f"{name}@{alias} (now version {pointer['version']}) has no previous target left in its history "
                    "to roll back to. Promote the version you want instead."
                )
            previous = pointer["history"][-1]
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
            self._swap(name, alias, _pointer_to(release, alias, pointer["history"][:-1]), token)
        return self._located(release, (alias,))

    def gc(self, older_than: float = 3600.0) -> list[str]:
        """Remove temporary files interrupted writers left, if older than ``older_than`` seconds; return them.

        They are never versions or pointers (readers ignore them); the age keeps
        gc away from writes still in flight.
        """
        removed = []
        with self._io("collecting temporary files"):
            for name in self._backend.children(()):
                for sub in self._backend.children((name,)):
                    for leaf in self._backend.children((name, sub)):
                        key = (name, sub, leaf)
                        if leaf.startswith(".") and leaf.endswith(".tmp") and self._backend.age(key) >= older_than:
                            self._backend.delete(key)
                            removed.append(self._where(key))
        return removed

    # ------------------------------------------------------------------ internals

    def _release(self, name: str, version: str) -> Release | None:
        """The release record of NAME/VERSION; derived from the artifact if a push died before writing it."""
        key = (name, version, RECORD)
        data = self._backend.read(key)
        if data is not None:
            return Release.from_record(_load(data, self._where(key)), where=self._where(key))
        artifact = self._backend.read((name, version, ARTIFACT))
        return None if artifact is None else describe(artifact, self._where((name, version, ARTIFACT)))

    def _aliases(self, name: str) -> list[str]:
        leaves = self._backend.children((name, ALIASES))
        names = (leaf.removesuffix(".json") for leaf in leaves if leaf.endswith(".json"))
        return [alias for alias in names if is_alias(alias)]

    def _pointer(self, name: str, alias: str, *, for_update: bool = False) -> tuple[dict[str, Any] | None, Any]:
        """The alias's pointer (None if unset) and, ``for_update``, the token a later ``_swap`` compares."""
        key = (name, ALIASES, f"{alias}.json")
        try:
            data, token = self._backend.read_versioned(key) if for_update else (self._backend.read(key), None)
        except Conflict:
            raise self._lost_race(name, alias) from None
        if data is None:
            return None, None
        pointer = _load(data, self._where(key))
        if not isinstance(pointer.get("version"), str) or not isinstance(pointer.get("history"), list):
            raise damaged(self._where(key), "is not a valid alias pointer")
        return pointer, token

    def _swap(self, name: str, alias: str, pointer: dict[str, Any], token: Any) -> None:
        try:
            self._backend.swap((name, ALIASES, f"{alias}.json"), _dump(pointer), token)
        except Conflict:
            raise self._lost_race(name, alias) from None

    def _lost_race(self, name: str, alias: str) -> StoreError:
        return StoreError(
            f"{name}@{alias} in {self.uri} was changed by someone else while this command ran, so it was not "
            f"changed here. Check `blackbox list {self.uri} {name}` and run the command again if still needed."
        )

    def _advance_latest(self, release: Release) -> None:
        """Move ``latest`` to ``release`` unless it already names a newer one; concurrent pushes retry."""
        for _ in range(10):
            pointer, token = self._pointer(release.name, LATEST, for_update=True)
            if pointer is not None and (pointer.get("created_at") or "", pointer["version"]) >= (
                release.created_at or "", release.version
            ):
                return
            successor = _pointer_to(release, LATEST, _history(pointer))
            try:
                self._backend.swap((release.name, ALIASES, f"{LATEST}.json"), _dump(successor), token)
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


def _pointer_to(release: Release, alias: str, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {**release.record(), "alias": alias, "updated_at": utc_now(), "history": history[-HISTORY_LIMIT:]}


def _history(pointer: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The history a pointer's successor keeps: the old history plus the old target."""
    if pointer is None:
        return []
    return [*pointer["history"], {k: pointer.get(k) for k in ("version", "sha256", "updated_at")}]


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"


def _load(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise damaged(where, f"is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise damaged(where, "is not a JSON object")
    return value


def _redact(uri: str) -> str:
    """The URI without any ``user:password@`` part, fit for messages."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", uri)
