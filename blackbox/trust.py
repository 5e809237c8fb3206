"""The checks an artifact passes before a single byte of it is unpickled, in order.

Unpickling runs code, so nothing is unpickled until: the framing parses (with
capped lengths); the signature verifies against a trusted key (unsigned
artifacts only with an explicit, loudly logged ``allow_unsigned=True``); the
manifest is strict JSON of the expected shape; this interpreter matches the
environment the manifest records; and the payload has exactly the recorded
length and sha256. An unsigned payload is also scanned statically: it may
import only globals its manifest declares, and none that no model needs
(process execution, eval/exec, dynamic imports). That scan is defence in depth,
never a substitute for the signature. Only then is the payload unpickled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import _blackbox_compat

from . import environment, serializers
from .artifact import FORMAT_VERSION, Artifact
from .errors import ArtifactError, AuthenticityError, SelfContainmentError
from .imports import Global, pickle_globals
from .signing import Keyring

log = logging.getLogger("blackbox")

TrustedKeys = Keyring | Iterable[str | os.PathLike[str]] | None
_REQUIRED = ("format_version", "name", "version", "adapter", "serializer", "python", "payload", "schema")
# Globals no model needs at load time; refused in unsigned payloads.
_FORBIDDEN_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "pty", "shutil", "socket", "importlib", "runpy", "code", "codeop",
    "ctypes", "multiprocessing", "pickle", "_pickle", "marshal", "sys", "webbrowser", "pdb", "signal",
    "threading", "_thread", "asyncio", "tempfile", "io", "_io", "sysconfig", "site", "urllib", "http",
})
_FORBIDDEN_BUILTINS = frozenset({
    "eval", "exec", "compile", "__import__", "open", "breakpoint", "input", "exit", "quit", "globals", "locals",
    "vars", "setattr", "help",
})


def unpickle(
    artifact: Artifact,
    *,
    strict: bool = False,
    trusted_keys: TrustedKeys = None,
    allow_unsigned: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Verify ``artifact`` and return its estimator and manifest.

    :param trusted_keys: a Keyring, or ``.pub`` files and directories; default: BLACKBOX_TRUSTED_KEYS.
    :param allow_unsigned: load an unsigned artifact (never one with a bad signature).
    :param strict: refuse any package version that differs from the manifest's.
    """
    signed = authenticate(artifact, trusted_keys, allow_unsigned=allow_unsigned)
    return _unpickle(artifact, strict=strict, scan=not signed)


def unpickle_own(artifact: Artifact) -> tuple[Any, dict[str, Any]]:
    """Unpickle bytes this process has just produced (save's round trip), with every other check."""
    return _unpickle(artifact, strict=True, scan=False)


def authenticate(artifact: Artifact, trusted_keys: TrustedKeys, *, allow_unsigned: bool) -> bool:
    """True when the signature verifies; False for a tolerated unsigned artifact; raise otherwise."""
    if not artifact.signature:
        if not allow_unsigned:
            raise AuthenticityError(
                "The artifact is unsigned, and unsigned artifacts are refused: sign it with "
                "`blackbox sign PATH --key KEY`, or, for a model you trust, load it with allow_unsigned=True "
                "(--allow-unsigned)."
            )
        log.warning("LOADING AN UNSIGNED ARTIFACT (allow_unsigned=True): its code was not authenticated")
        return False
    keyring = trusted_keys if isinstance(trusted_keys, Keyring) else (
        Keyring.from_environment() if trusted_keys is None else Keyring.from_paths(trusted_keys)
    )
    keyring.verify(artifact.manifest_bytes, artifact.signature)
    return True


def _unpickle(artifact: Artifact, *, strict: bool, scan: bool) -> tuple[Any, dict[str, Any]]:
    manifest = artifact.manifest()
    _check_shape(manifest)
    environment.check(manifest, strict=strict)
    artifact.check_payload(manifest)
    if scan:
        _check_imports(artifact.payload, manifest)
    _blackbox_compat.install()
    try:
        estimator = serializers.loads(artifact.payload, manifest["serializer"]["name"])
    except ModuleNotFoundError as exc:
        raise SelfContainmentError(
            f"The payload needs module {exc.name!r}, which is not available here; it was kept by reference "
            f"at save time. Re-save the model so that blackbox embeds it by value, or install {exc.name!r}.",
            [str(exc.name)],
        ) from exc
    except Exception as exc:  # a verified payload that still fails to load is a broken artifact
        raise ArtifactError(f"The payload passed verification but could not be unpickled: {exc!r}.") from exc
    return estimator, manifest


def _check_shape(manifest: dict[str, Any]) -> None:
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ArtifactError(f"The artifact manifest lacks {', '.join(missing)}; the file is damaged or not an artifact.")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"The manifest says format {manifest['format_version']!r} but the framing says {FORMAT_VERSION}; "
            "the file is damaged."
        )
    serializer = manifest["serializer"].get("name") if isinstance(manifest["serializer"], dict) else None
    if serializer not in serializers.SERIALIZERS:
        raise ArtifactError(f"The artifact names serializer {serializer!r}, which blackbox does not know.")


def _check_imports(payload: bytes, manifest: dict[str, Any]) -> None:
    declared = set(manifest.get("imports") or [])
    found = pickle_globals(payload)
    undeclared = [g for g in found if g.key not in declared]
    forbidden = [g for g in found if _forbidden(g)]
    if undeclared or forbidden:
        names = ", ".join(str(g) for g in (forbidden or undeclared)[:5])
        raise AuthenticityError(
            f"Refusing the unsigned payload: it would import {names}"
            + (" (globals no model needs)" if forbidden else " (not declared in its manifest)")
            + ". Only load artifacts from signers you trust."
        )


def _forbidden(g: Global) -> bool:
    top = g.module.partition(".")[0]
    if top in ("builtins", "__builtin__"):
        return g.name in _FORBIDDEN_BUILTINS
    return top in _FORBIDDEN_MODULES
