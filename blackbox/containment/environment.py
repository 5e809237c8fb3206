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
this interpreter before anything is unpickled, refusing what is incompatible
and returning the differences it tolerates; :func:`prove` accepts those only
once the unpickled model reproduces its golden sample, and then warns
(VersionMismatchWarning). The golden sample is the proof that an artifact
behaves; version rules only keep out what is known not to load safely:

- Python: another major.minor or implementation is refused (the by-value code
  is bytecode of one CPython feature release; its format changes between them
  and is frozen within one). Another micro release is tolerated.
- The pickling libraries (dill, cloudpickle; a dill payload calls cloudpickle's
  reconstructors too), whose private reconstructors the payload calls by name
  (changing one broke pickles before: cloudpickle 0.4.1 could not load 0.4.0's,
  cloudpipe/cloudpickle#126; dill 0.3.0 could not load 0.3.1.1's,
  uqfoundation/dill#341). Another major (for a 0.x release, another 0.y: dill
  0.3 -> 0.4) is refused; another patch is tolerated; another minor (for dill,
  the third component) is tolerated only towards a newer release of a library
  that intends newer releases to read older pickles (dill: uqfoundation/dill#270,
  #608 and its ``_shims``). cloudpickle promises nothing across versions (its
  README: the exact same Python, no long-term storage; its maintainers: best
  effort, cloudpipe/cloudpickle#414, #479), so another cloudpickle minor is
  refused. No library promises that an older release reads a newer one's pickles.
- Any other requirement: another major (0.y for 0.x) is refused; the rest is
  tolerated.

``strict=True`` refuses every difference. :func:`requirements_file` is the
remedy the messages point to: the exact versions, as a pip requirements file.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import platform
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    ArtifactError,
    EnvironmentMismatchError,
    SelfContainmentError,
    SelfTestError,
    VersionMismatchWarning,
)
from ..manifest import Manifest
from .imports import Global
from .serializers import SERIALIZERS

OWN_MODULES = frozenset({"blackbox", "serving", "_blackbox_compat"})
_PICKLERS = frozenset(SERIALIZERS)  # distribution names equal their top-level module names
# Pickling libraries that intend a newer minor release to read an older one's pickles (see above).
_READS_OLDER_MINORS = frozenset({"dill"})
_REMEDY = "`blackbox requirements ARTIFACT` prints them as a pip requirements file"
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


def check(manifest: Manifest, *, strict: bool = False) -> list[VersionMismatchWarning]:
    """Refuse what this interpreter cannot safely load; return the differences tolerated.

    Raises EnvironmentMismatchError for another Python major.minor or
    implementation, or a version difference the module docstring's rules refuse
    (any, with ``strict=True``); SelfContainmentError for a module the
    payload imports that cannot be found here (naming the missing requirement
    too). The returned differences are not yet accepted: pass them to
    :func:`prove` once the model is unpickled.
    """
    refusals: list[str] = []
    missing: list[str] = []
    notices: list[VersionMismatchWarning] = []
    saved_python = manifest.python.version
    saved_implementation = manifest.python.implementation or platform.python_implementation()
    running = platform.python_version()
    if _release(saved_python)[:2] != _release(running)[:2] or saved_implementation != platform.python_implementation():
        refusals.append(
            f"{saved_implementation} {saved_python} saved it, this is {platform.python_implementation()} {running}"
        )
    elif saved_python != running:
        if strict:
            refusals.append(f"Python {saved_python} saved it, this is Python {running}")
        else:
            notices.append(VersionMismatchWarning("Python", saved_python, running))
    for dist, saved in (manifest.requirements or {}).items():
        try:
            installed = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{dist}=={saved}")  # reported with the modules that need it, below
            continue
        if installed == saved:
            continue
        if strict or not _tolerated(dist, saved, installed):
            refusals.append(f"{dist} {saved} saved it, {installed} is installed")
        else:
            notices.append(VersionMismatchWarning(dist, saved, installed))
    if refusals:
        raise EnvironmentMismatchError(
            "This environment cannot safely load the artifact:\n"
            + "\n".join(f"- {r}" for r in refusals)
            + f"\nInstall the versions the artifact was saved with ({_REMEDY}) "
            "and load it with the same Python major.minor.",
            refusals,
        )
    unavailable = _unavailable_modules(manifest.imports or [])
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
    return notices


def prove(differences: Sequence[VersionMismatchWarning], self_test: Callable[[], None]) -> None:
    """Accept the differences :func:`check` tolerated only if the golden sample reproduces; then warn.

    A self-test that fails under a difference is an EnvironmentMismatchError: the
    model is fine where it was saved, and this environment is what changed.
    """
    if not differences:
        return
    try:
        self_test()
    except SelfTestError as exc:
        listed = [f"{d.distribution} {d.saved} saved it, {d.installed} is installed" for d in differences]
        raise EnvironmentMismatchError(
            "This environment differs from the artifact's, and with these differences the model no longer "
            "reproduces its golden sample:\n" + "\n".join(f"- {line}" for line in listed)
            + f"\n{exc.message}\nInstall the versions it was saved with ({_REMEDY}).",
            listed,
        ) from exc
    for difference in differences:
        warnings.warn(difference, stacklevel=6)  # the caller of blackbox.load (via persist.loads and trust)


def requirements_file(manifest: Manifest, *, blackbox: str | None = None) -> str:
    """A pip requirements file for a serving venv: the manifest's exact versions, and blackbox.

    ``blackbox`` is the requirement line that installs blackbox; by default,
    where the running blackbox was installed from (:func:`blackbox_requirement`).
    """
    pins: dict[Any, Any] = {**(manifest.requirements or {})}
    pins[manifest.serializer.name] = manifest.serializer.version
    pins.pop("blackbox", None)  # installed by its own line below
    for dist, version in pins.items():
        if not (isinstance(dist, str) and _DIST_NAME.fullmatch(dist) and isinstance(version, str)
                and _VERSION_TEXT.fullmatch(version)):
            raise ArtifactError(
                f"The manifest's requirement {dist!r}: {version!r} is not a distribution name and version; "
                "the manifest is damaged."
            )
    saved_with = manifest.blackbox_version or ""
    if blackbox is None:
        blackbox = blackbox_requirement(saved_with, _own_direct_url())
    python = manifest.python.version
    feature = ".".join(python.split(".")[:2])
    lines = [
        f"# Serving requirements of {manifest.name} {manifest.version} "
        f"(payload sha256 {manifest.payload.sha256[:16]}), from its manifest.",
        f"# It was saved with Python {python} and blackbox {saved_with}; the server needs Python {feature}:",
        f"#   python{feature} -m venv srv && srv/bin/pip install -r THIS_FILE",
        *(f"{dist}=={version}" for dist, version in sorted(pins.items(), key=lambda item: item[0].lower())),
        blackbox,
    ]
    return "\n".join(lines) + "\n"


def blackbox_requirement(version: str, direct_url: str | None) -> str:
    """The requirement line that installs blackbox as the running one was installed (PEP 610).

    From a checkout, a local wheel or an archive URL: that location; from version
    control: that commit; only an index install (no direct_url.json) becomes
    ``blackbox==VERSION``. Never a bare name otherwise: on PyPI, ``blackbox`` is another project.
    """
    if not direct_url:
        return f"blackbox=={version}"
    origin = json.loads(direct_url)
    vcs = origin.get("vcs_info")
    if vcs:
        return f"blackbox @ {vcs['vcs']}+{origin['url']}@{vcs['commit_id']}"
    return f"blackbox @ {origin['url']}"


_DIST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION_TEXT = re.compile(r"[A-Za-z0-9.+!_-]+")


def _own_direct_url() -> str | None:
    try:
        return importlib.metadata.distribution("blackbox").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version (``2.9.0.post0`` -> (2, 9, 0)); () if it has none."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def _tolerated(dist: str, saved: str, installed: str) -> bool:
    """Whether ``installed`` may load what ``saved`` pickled, by the rules in the module docstring."""
    old, new = _release(saved), _release(installed)
    if not old or not new:
        return False
    width = max(len(old), len(new)) + 1
    old, new = old + (0,) * (width - len(old)), new + (0,) * (width - len(new))
    # The major: components up to the first non-zero one (0.4.1 -> 0.4, as for any 0.x release).
    major = next((i for i, part in enumerate(old) if part), width - 1) + 1
    if old[:major] != new[:major]:
        return False
    if dist not in _PICKLERS or old[: major + 1] == new[: major + 1]:
        return True
    return dist in _READS_OLDER_MINORS and new > old


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
