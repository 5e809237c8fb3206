"""What a release is: one immutable, verified version of a model, and the names that address it.

A release is described by its record (sha256 and size of the artifact file,
the manifest's name, version, created_at and metrics, the signer's key id),
which follows from the artifact's bytes alone. Names, versions and aliases
become path parts in a store, so they are validated here: no '/', no '..',
nothing that is not a plain name (a UsageError, exit 2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

from .. import signing, trust
from ..artifact import unpack
from ..errors import StoreError, UsageError
from ..trust import TrustedKeys

ALIASES = "aliases"
LATEST = "latest"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_SEARCH_SUMMARY = ("scoring", "best_score", "best_score_std", "best_params")


@dataclasses.dataclass(frozen=True)
class Release:
    """One immutable version of a model in a store.

    ``aliases`` are the aliases seen pointing at it when it was read: all of them
    from :meth:`Store.list`, the one used from :meth:`Store.resolve`.
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

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def record(self) -> dict[str, Any]:
        """What release.json holds: everything that follows from the artifact's bytes alone."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("aliases", "uri")}

    def to_dict(self) -> dict[str, Any]:
        return {**self.record(), "aliases": list(self.aliases), "uri": self.uri}

    @classmethod
    def from_record(cls, record: dict[str, Any], *, where: str) -> Release:
        try:
            return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name not in ("aliases", "uri")})
        except (KeyError, TypeError) as exc:
            raise damaged(where, f"is not a valid release record ({exc})") from None


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``NAME[@ALIAS|@VERSION]`` into its validated parts (``latest`` when none is given)."""
    name, _, target = ref.partition("@")
    return check_name("model name", name), check_version(target or LATEST)


def verified(data: bytes, source: str, trusted_keys: TrustedKeys, allow_unsigned: bool) -> Release:
    """The release an artifact makes, after the checks load makes before unpickling (signature, payload digest)."""
    parts = unpack(data, source)
    trust.authenticate(parts, trusted_keys, allow_unsigned=allow_unsigned)
    parts.check_payload(parts.manifest())
    return describe(data, source)


def describe(data: bytes, source: str) -> Release:
    """The release record of artifact bytes (not verified)."""
    parts = unpack(data, source)
    manifest = parts.manifest()
    metrics = dict(manifest.get("metrics") or {})
    if isinstance(metrics.get("search"), dict):  # every candidate's score stays in the manifest
        metrics["search"] = {k: metrics["search"].get(k) for k in _SEARCH_SUMMARY}
    return Release(
        name=check_name("model name", manifest.get("name")),
        version=check_version(manifest.get("version")),
        sha256=digest(data),
        size=len(data),
        created_at=manifest.get("created_at"),
        key_id=str(signing.read_block(parts.signature)["key_id"]) if parts.signature else None,
        metrics=metrics,
    )


def valid_name(value: Any) -> bool:
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
    if value == ALIASES:
        raise UsageError(f"version {value!r} is reserved in a model store (it holds the aliases); use another version.")
    return str(value)


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
