"""What the serving side will have, and whether this interpreter can load an artifact.

Save side: a module is *provided* (pickled by reference) only if the serving
side can install it by name: the standard library, blackbox itself, and
distributions installed from a package index. Everything else (a package found
through the current directory or PYTHONPATH, or installed from a local path,
editable or not) is the user's code and is embedded by value. What happens to be
importable on the training machine does not count. ``by_reference`` declares
more provided modules (a private package the server installs); ``by_value``
forces embedding.

Load side: :func:`check` compares the manifest's Python and requirements with
this interpreter before anything is unpickled.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import EnvironmentMismatchError, SelfContainmentError, VersionMismatchWarning
from .imports import Global

OWN_MODULES = frozenset({"blackbox", "serving", "_blackbox_compat"})
_ALWAYS_PRESENT = frozenset(sys.stdlib_module_names) | {"__builtin__", "copy_reg"}  # py2 names pickle maps


def top_level(module: str) -> str:
    return module.partition(".")[0]


@dataclass(frozen=True)
class ServingEnvironment:
    """Decides, module by module, what the serving side will have."""

    by_value: frozenset[str] = field(default_factory=frozenset)
    by_reference: frozenset[str] = field(default_factory=frozenset)

    def provides(self, module: str) -> bool:
        top = top_level(module)
        if top in self.by_value:
            return False
        if top in self.by_reference or top in _ALWAYS_PRESENT or top in OWN_MODULES:
            return True
        dists = _distributions().get(top, [])
        return bool(dists) and all(_installed_from_index(d) for d in dists)

    def requirements(self, globals_: Iterable[Global]) -> dict[str, str]:
        """Distributions (name -> version) that the given globals import from."""
        result: dict[str, str] = {}
        for g in globals_:
            top = top_level(g.module)
            if top in _ALWAYS_PRESENT or top in self.by_value:
                continue
            for dist in _distributions().get(top, []):
                result[dist] = importlib.metadata.version(dist)
        return dict(sorted(result.items()))


def embeddable(top: str) -> bool:
    """True when a top-level module is imported, pure Python, and not ``__main__``."""
    module = sys.modules.get(top)
    filename = getattr(module, "__file__", None) or ""
    return top != "__main__" and filename.endswith(".py")


def check(manifest: Mapping[str, Any], *, strict: bool = False) -> list[VersionMismatchWarning]:
    """Refuse (EnvironmentMismatchError) or warn about differences with the artifact's environment.

    Refused: another Python major.minor (by-value code compiled for one runs
    into undefined behaviour on another), another serializer version, and
    another major version of any requirement (EnvironmentMismatchError); a
    module the payload imports that cannot be found here (SelfContainmentError,
    naming the missing requirement too). Other version differences warn, or are
    refused with ``strict=True``.
    """
    refusals: list[str] = []
    missing: list[str] = []
    notices: list[VersionMismatchWarning] = []
    saved_python = str(manifest.get("python", {}).get("version", ""))
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if ".".join(saved_python.split(".")[:2]) != running:
        refusals.append(f"Python {saved_python} saved it, this is Python {sys.version.split()[0]}")
    serializer = manifest.get("serializer", {}).get("name")
    for dist, saved in manifest.get("requirements", {}).items():
        try:
            installed = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{dist}=={saved}")  # reported with the modules that need it, below
            continue
        if installed == saved:
            continue
        if strict or dist == serializer or _major(installed) != _major(saved):
            refusals.append(f"{dist} {saved} saved it, {installed} is installed")
        else:
            notices.append(VersionMismatchWarning(dist, saved, installed))
    if refusals:
        raise EnvironmentMismatchError(
            "This environment cannot safely load the artifact:\n"
            + "\n".join(f"- {r}" for r in refusals)
            + "\nInstall the versions the artifact lists (blackbox inspect shows its requirements) "
            "and load it with the same Python major.minor.",
            refusals,
        )
    unavailable = _unavailable_modules(manifest.get("imports", []))
    if unavailable:
        references = [ref for refs in unavailable.values() for ref in refs]
        raise SelfContainmentError(
            f"The artifact needs module(s) {', '.join(map(repr, unavailable))}, which cannot be imported here "
            f"(it refers to {', '.join(references[:5])}"
            + (f"; requirements not installed: {', '.join(missing)}" if missing else "")
            + "). They were kept by reference at save time: re-save the model so that blackbox embeds them "
            "by value, or install them on the serving side.",
            references,
        )
    for notice in notices:
        warnings.warn(notice, stacklevel=3)
    return notices


def _unavailable_modules(imports: Iterable[str]) -> dict[str, list[str]]:
    """Top-level modules of the manifest's imports that cannot be found, with the imports naming them."""
    missing: dict[str, list[str]] = {}
    for key in imports:
        top = top_level(key.partition(":")[0])
        if top not in _ALWAYS_PRESENT and (top in missing or not _importable(top)):
            missing.setdefault(top, []).append(key)
    return missing


def _importable(top: str) -> bool:
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):  # a blocked or broken module is not importable
        return False


def _major(version: str) -> str:
    match = re.match(r"\d+", version)
    return match.group(0) if match else version


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return {top: sorted(set(dists)) for top, dists in importlib.metadata.packages_distributions().items()}


@functools.cache
def _installed_from_index(dist: str) -> bool:
    """True unless PEP 610 says the distribution came from a local path or file."""
    try:
        text = importlib.metadata.distribution(dist).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return False
    if not text:
        return True
    try:
        origin = json.loads(text)
    except ValueError:
        return False
    return "dir_info" not in origin and not str(origin.get("url", "")).startswith("file:")
