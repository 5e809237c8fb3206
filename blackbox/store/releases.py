"""What a release is: one immutable, verified version of a model, and the names that address it.

A release is described by its record (sha256 and size of the artifact file,
the manifest's name, version, created_at and metrics, the signer's key id),
which follows from the artifact's bytes alone. Names, versions and aliases
become path parts in a store, so they are validated here, and ``blackbox.save``
validates the names it is given with the same functions: no '/', no '..',
nothing that is not a plain name (a UsageError, exit 2).

Versions are ordered by :func:`version_key`, the one rule ``list`` and
``latest`` use: PEP 440 order for versions that parse as PEP 440 (which covers
semver such as ``1.0.0-rc.1``), after all versions that do not, which order
among themselves by their digit runs as numbers (``build-9`` before ``build-10``).
Never by a timestamp.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, TypeGuard

from .. import signing, trust
from ..artifact import unpack
from ..errors import StoreError, UsageError
from ..trust import TrustedKeys

ALIASES = "aliases"
LATEST = "latest"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_SEARCH_SUMMARY = ("scoring", "best_score", "best_score_std", "best_params")
_RESERVED_VERSIONS = (ALIASES, LATEST)
# PEP 440 (the public version scheme, case-insensitive), as the packaging library spells it; semver's
# "1.0.0-rc.1" fits it. Written out here: serving environments need not have packaging installed.
_PEP440 = re.compile(
    r"v?(?:(?P<epoch>\d+)!)?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre_l>alpha|beta|preview|pre|rc|a|b|c)[-_.]?(?P<pre_n>\d+)?)?"
    r"(?:-(?P<post_n1>\d+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>\d+)?)?"
    r"(?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>\d+)?)?"
    r"(?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?",
    re.IGNORECASE,
)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}
_NOT_RECORD = ("aliases", "uri", "pointer", "alias_pointers")  # where a release was found, not what it is


@dataclasses.dataclass(frozen=True)
class Pointer:
    """What the alias pointer a release was resolved through says about itself (blackbox.store.pointers)."""

    alias: str
    sequence: int
    rollback: bool
    updated_at: str | None
    key_id: str | None  # the pointer's signer; None: unsigned
    expires_at: str | None = None  # believed until then (its signature's claim); None: no expiry
    expired: bool = False  # past expires_at when read: readers refuse it; only Store.list (and a writer replacing it) sees it


@dataclasses.dataclass(frozen=True)
class Release:
    """One immutable version of a model in a store.

    ``aliases`` are the aliases seen pointing at it when it was read, as readers
    resolve them: all of them from :meth:`Store.list`, the one used from
    :meth:`Store.resolve`; ``pointer`` is that alias's pointer, when resolved
    through one. ``alias_pointers`` (from :meth:`Store.list` only) are the verified
    pointers of those aliases and of the ones naming it whose pointer expired
    (``expired``; readers refuse those, so they are not in ``aliases``).
    """

    name: str
    version: str
    sha256: str
    size: int
    created_at: str | None
    key_id: str | None
    metrics: dict[str, Any]
    aliases: tuple[str, ...] = ()
    uri: str = ""
    pointer: Pointer | None = None
    alias_pointers: tuple[Pointer, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def record(self) -> dict[str, Any]:
        """What release.json holds: everything that follows from the artifact's bytes alone."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_RECORD}

    def to_dict(self) -> dict[str, Any]:
        pointer = dataclasses.asdict(self.pointer) if self.pointer is not None else None
        listed = [dataclasses.asdict(p) for p in self.alias_pointers]
        return {**self.record(), "aliases": list(self.aliases), "uri": self.uri, "pointer": pointer, "alias_pointers": listed}

    @classmethod
    def from_record(cls, record: dict[str, Any], *, where: str) -> Release:
        try:
            return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name not in _NOT_RECORD})
        except (KeyError, TypeError) as exc:
            raise damaged(where, f"is not a valid release record ({exc})") from None


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``NAME[@ALIAS|@VERSION]`` into its validated parts (``latest`` when none is given)."""
    name, _, target = ref.partition("@")
    target = target or LATEST
    return check_name("model name", name), target if target == LATEST else check_version(target)


def verified(data: bytes, source: str, trusted_keys: TrustedKeys, allow_unsigned: bool) -> Release:
    """The release an artifact makes, after the checks load makes before unpickling (signature, payload digest)."""
    parts = unpack(data, source)
    trust.authenticate(parts, trusted_keys, allow_unsigned=allow_unsigned)
    parts.check_payload(parts.read_manifest().payload)
    return describe(data, source)


def describe(data: bytes, source: str) -> Release:
    """The release record of artifact bytes (not verified)."""
    parts = unpack(data, source)
    manifest = parts.read_manifest()
    metrics = dict(manifest.metrics or {})
    if isinstance(metrics.get("search"), dict):  # every candidate's score stays in the manifest
        metrics["search"] = {k: metrics["search"].get(k) for k in _SEARCH_SUMMARY}
    return Release(
        name=check_name("model name", manifest.name),
        version=check_version(manifest.version),
        sha256=digest(data),
        size=len(data),
        created_at=manifest.created_at,
        key_id=str(signing.read_block(parts.signature)["key_id"]) if parts.signature else None,
        metrics=metrics,
    )


def valid_name(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(_NAME.fullmatch(value)) and ".." not in value


def check_name(kind: str, value: Any) -> str:
    if not valid_name(value):
        raise UsageError(
            f"{kind} {value!r} cannot be used in a model store: use 1 to 128 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit ('/', '..' and absolute paths are never allowed)."
        )
    return value


def check_version(value: Any) -> str:
    check_name("version", value)
    if value in _RESERVED_VERSIONS:
        raise UsageError(f"version {value!r} is reserved in a model store (it names the aliases); use another version.")
    return str(value)


def check_names(name: str | None, version: str | None) -> None:
    """Validate the name and version ``blackbox.save`` is given (None: its default, always valid)."""
    if name is not None:
        check_name("model name", name)
    if version is not None:
        check_version(version)


def version_key(version: str) -> tuple[Any, ...]:
    """The sort key of a version (see the module docstring); equal PEP 440 versions tie-break by their text."""
    m = _PEP440.fullmatch(version)
    if m is None:
        return (0, _runs(version), version)
    release = tuple(int(n) for n in m["release"].split("."))
    while len(release) > 1 and release[-1] == 0:  # 1.0 == 1.0.0
        release = release[:-1]
    post_n = m["post_n1"] or m["post_n2"] or ("0" if m["post_l"] else None)
    if m["pre_l"]:
        pre: tuple[int, ...] = (1, _PRE_RANK[m["pre_l"].lower()], int(m["pre_n"] or 0))
    else:  # a dev release of the final version sorts before its pre-releases
        pre = (0,) if m["dev_l"] and post_n is None else (2,)
    post = (1, int(post_n)) if post_n is not None else (0,)
    dev = (0, int(m["dev_n"] or 0)) if m["dev_l"] else (1,)
    local = (1, _runs(m["local"].lower())) if m["local"] else (0,)
    return (1, (int(m["epoch"] or 0), release, pre, post, dev, local), version)


def _runs(text: str) -> tuple[tuple[int, int, str], ...]:
    """Natural order: digit runs compare as numbers, after text."""
    return tuple((1, int(r), "") if r.isdigit() else (0, 0, r) for r in re.findall(r"\d+|\D+", text))


def check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not is_alias(alias):
        raise UsageError(
            f"alias {alias!r} is not valid: use 1 to 64 lowercase letters, digits, '_' or '-', starting with a letter."
        )
    if alias == LATEST:
        raise UsageError(f"alias {LATEST!r} is moved by every push to the newest release; promote another alias.")


def is_alias(value: str) -> bool:
    return bool(_ALIAS.fullmatch(value))


def digest(data: bytes) -> str:
    """The hex sha256 of a whole artifact file, as ``sha256sum`` prints it."""
    return hashlib.sha256(data).hexdigest()


def damaged(where: str, problem: str) -> StoreError:
    return StoreError(
        f"{where} {problem}: the store was damaged or edited by hand. Restore it from a backup, "
        "or push and promote the release again."
    )


def load_object(data: bytes, where: str) -> dict[str, Any]:
    """A store object's JSON (a record or a pointer); a StoreError naming it if it is not a JSON object."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply to be a record or pointer
        raise damaged(where, f"is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise damaged(where, "is not a JSON object")
    return value
