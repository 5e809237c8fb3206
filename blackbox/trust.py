"""The checks an artifact passes before a single byte of it is unpickled, in order.

Unpickling runs code, so nothing is unpickled until: the framing parses (with
capped lengths and a bounded manifest); the signature verifies against a trusted
key; the manifest is strict JSON of the expected shape; this interpreter matches
the environment the manifest records; and the payload has exactly the recorded
length and sha256. Only then is the payload unpickled, and what it unpickles to
must be an estimator the manifest's adapter serves (not None, not a dict).

The proof of authenticity is the header signature or, instead, an OpenSSF
model signing bundle over the whole file (``oms_bundle``, blackbox.oms) by a
trusted P-256 key; every later check runs either way, and the expiry of a
header block the bundle covers is still enforced.

The signature is the only trust boundary. An unsigned artifact is loaded only
with an explicit, loudly logged ``allow_unsigned=True``, and loading it RUNS ITS
CODE: user code embedded by value is code, which no static scan can prove
harmless. Its payload is still scanned as a tripwire (:func:`check_unsigned`):
an allowlist, never a proof.
"""

from __future__ import annotations

import importlib
import importlib.util
import keyword
import logging
import os
import reprlib
import sys
import types
from collections.abc import Iterable
from typing import Any

import _blackbox_compat

from .artifact import FORMAT_VERSION, Artifact
from .containment import environment, serializers
from .containment.environment import ServingEnvironment, top_level
from .containment.imports import Global, scan
from .errors import ArtifactError, AuthenticityError, SelfContainmentError
from .manifest import Manifest
from .model import Model
from .signing import Keyring, PublicKey, check_expiry, read_block

log = logging.getLogger("blackbox")

KeySource = str | os.PathLike[str] | PublicKey | Keyring
TrustedKeys = KeySource | Iterable[KeySource] | None
"""What every ``trusted_keys=`` takes (:meth:`Keyring.from_paths`): a ``.pub`` file or a directory of them
(str or Path), an Ed25519 or P-256 public key, a Keyring, or an iterable of those; None: BLACKBOX_TRUSTED_KEYS.
BLACKBOX_REVOKED_KEYS applies to every one."""
OmsBundle = str | os.PathLike[str] | None
UNSIGNED_WARNING = (
    "LOADING AN UNSIGNED ARTIFACT (allow_unsigned=True): its code was not authenticated, and loading it RUNS "
    "that code; the static scan is a tripwire, not a proof. Sign artifacts and load only signed ones."
)
# The standard-library modules a model's payload needs (their names still pass every other check).
_STDLIB_ALLOWED = frozenset({
    "builtins", "copyreg", "collections", "functools", "_codecs", "datetime", "decimal", "fractions",
    "numbers", "array", "re", "enum", "_collections_abc",
})
# No model needs these at load time; named in the refusal even when another rule would refuse them too.
_FORBIDDEN_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "pty", "shutil", "socket", "importlib", "runpy", "code", "codeop",
    "ctypes", "multiprocessing", "pickle", "_pickle", "marshal", "sys", "webbrowser", "pdb", "signal",
    "threading", "_thread", "asyncio", "tempfile", "io", "_io", "sysconfig", "site", "urllib", "http",
    "operator", "_operator", "types", "inspect",
})
# Parts of allowed packages that no model needs: test harnesses, compilers, session and clipboard tools.
_FORBIDDEN_SUBMODULES = ("numpy.f2py", "numpy.testing", "numpy.distutils", "numpy._pytesttester", "numpy.ctypeslib",
                         "pandas._testing", "pandas.util._tester", "pandas.io.clipboard", "dill.session",
                         "sklearn.utils._testing")
# Callables that run code, read pickles, touch processes or fetch attributes by name, whichever module holds them.
_FORBIDDEN_NAMES = frozenset({
    "eval", "exec", "compile", "__import__", "import_module", "open", "breakpoint", "input", "exit", "quit",
    "globals", "locals", "vars", "help", "__build_class__", "system", "popen", "Popen", "spawn", "fork", "execv",
    "execve", "execvp", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput", "load", "loads",
    "load_module", "load_session", "read_pickle", "attrgetter", "methodcaller", "_get_attr", "_getattr",
    "_getattribute", "run_module", "run_path", "kill", "remove", "unlink", "rmtree",
})
# blackbox's own modules that a payload may name: the fast-path plan saved beside the estimator (blackbox.fastpath).
_BLACKBOX_IN_PAYLOADS = ("blackbox.fastpath",)
# builtins offers classes; of its functions, only those the scan follows call by call (see blackbox.containment.imports).
_VETTED_BUILTINS = frozenset({"getattr", "setattr", "delattr"})


def unpickle(
    artifact: Artifact,
    *,
    strict: bool = False,
    trusted_keys: TrustedKeys = None,
    allow_unsigned: bool = False,
    oms_bundle: OmsBundle = None,
) -> tuple[Any, Manifest]:
    """Verify ``artifact`` and return its estimator and manifest.

    :param trusted_keys: whom to trust (:data:`TrustedKeys`); default: BLACKBOX_TRUSTED_KEYS.
    :param allow_unsigned: load an unsigned artifact (never one with a bad signature).
    :param strict: refuse any package version that differs from the manifest's.
    :param oms_bundle: an OpenSSF model signing bundle over the artifact's bytes, the proof instead of the header signature.
    """
    signed = authenticate(artifact, trusted_keys, allow_unsigned=allow_unsigned, oms_bundle=oms_bundle)
    return _unpickle(artifact, strict=strict, scan_payload=not signed)


def unpickle_own(artifact: Artifact) -> tuple[Any, Manifest]:
    """Unpickle bytes this process has just produced (save's round trip), with every other check."""
    return _unpickle(artifact, strict=True, scan_payload=False)


def authenticate(
    artifact: Artifact, trusted_keys: TrustedKeys, *, allow_unsigned: bool, oms_bundle: OmsBundle = None
) -> bool:
    """True when the signature (or the OMS bundle) verifies; False for a tolerated unsigned artifact; raise otherwise.

    With ``oms_bundle``, ``artifact`` must be the whole artifact (payload included): the bundle signs the file.
    """
    keyring = Keyring.resolve(trusted_keys)
    if oms_bundle is not None:
        from . import oms  # model_signing is an optional extra, imported only for a bundle

        oms.verify(artifact.to_bytes(), oms_bundle, keyring)
        if artifact.signature:  # covered by the bundle, so its claims are the signer's: honour its expiry
            check_expiry(read_block(artifact.signature))
        return True
    if not artifact.signature:
        if not allow_unsigned:
            raise AuthenticityError(
                "The artifact is unsigned, and unsigned artifacts are refused: sign it with "
                "`blackbox sign PATH --key KEY`, or, for a model you trust, load it with allow_unsigned=True "
                "(--allow-unsigned)."
            )
        log.warning(UNSIGNED_WARNING)
        return False
    keyring.verify(artifact.manifest_bytes, artifact.signature)
    return True


def _unpickle(artifact: Artifact, *, strict: bool, scan_payload: bool) -> tuple[Any, Manifest]:
    manifest = artifact.read_manifest()  # its shape checked (Manifest.from_json)
    manifest.check_loadable(FORMAT_VERSION, serializers.SERIALIZERS)
    differences = environment.check(manifest, strict=strict)
    artifact.check_payload(manifest.payload)
    if scan_payload:
        check_unsigned(artifact.payload, manifest)
    _blackbox_compat.install()
    try:
        estimator = serializers.loads(artifact.payload, manifest.serializer.name)
    except ModuleNotFoundError as exc:
        raise SelfContainmentError(
            f"The payload needs module {exc.name!r}, which is not available here; it was kept by reference "
            f"at save time. Re-save the model so that blackbox embeds it by value, or install {exc.name!r}.",
            [str(exc.name)],
        ) from exc
    except Exception as exc:  # a verified payload that still fails to load is a broken artifact
        raise ArtifactError(f"The payload passed verification but could not be unpickled: {exc!r}.") from exc
    _check_estimator(estimator, manifest)
    environment.prove(differences, lambda: _model(estimator, manifest, artifact).self_test())
    return estimator, manifest


def _model(estimator: Any, manifest: Manifest, artifact: Artifact) -> Model:
    return Model.named(manifest.adapter)(estimator, manifest, artifact)


def _check_estimator(estimator: Any, manifest: Manifest) -> None:
    """Refuse a payload the manifest's adapter cannot serve (None, a dict...): a broken artifact, not a model."""
    adapter = Model.named(manifest.adapter)
    if not adapter.accepts(estimator):
        found = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
        raise ArtifactError(
            f"The payload unpickled to {found} ({reprlib.repr(estimator)}), which the {adapter.adapter!r} adapter the "
            f"manifest names does not serve: it expects {adapter.expects}. The artifact was not written by "
            "blackbox.save from a fitted model; re-save the model."
        )


def check_unsigned(payload: bytes, manifest: Manifest) -> None:
    """Refuse (AuthenticityError) an unsigned payload whose globals are not what a model needs.

    Allowlist: every global must come from a module the manifest declares (a
    requirement installed here from a package index, or one of the few
    standard-library modules models need), be a plain attribute of the module it
    names (a dotted name may walk through submodules of that module only), and
    not be a module object other than that submodule, nor another module's
    callable (pickle itself names a class or function by the module it was
    defined in); the callables in the denylists above are refused whatever
    module holds them. What is decided statically, from names alone: the
    declaration, the denylists, and every getattr/importer call (blackbox.containment.imports).
    What needs the module: whether a name is a submodule, a re-export or a module
    object; so those modules, declared requirements installed here, are imported
    (as unpickling would import them), never a by-value or unknown one.
    None of this makes the payload safe: by-value code runs when unpickled.
    """
    found = scan(payload)
    declared = _declared(manifest)
    problems = [f"{use} (cannot be followed statically)" for use in found.dynamic]
    named = {**found.attributes, **dict.fromkeys(found.globals, False)}  # global -> may be absent
    problems += [f"{g} ({why})" for g in named if (why := _static_problem(g, declared))]
    if not problems:  # every module named is a declared requirement or an allowed stdlib module
        problems = [f"{g} ({why})" for g, optional in named.items() if (why := _resolved_problem(g, optional))]
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise AuthenticityError(
            f"Refusing the unsigned payload: it would import {'; '.join(problems[:5])}{more}. Loading an unsigned "
            "artifact runs its code, so sign it (`blackbox sign PATH --key KEY`) and load it signed, from a signer "
            "you trust."
        )


def _declared(manifest: Manifest) -> tuple[frozenset[str], frozenset[str]]:
    """The distributions the manifest requires and the top-level modules it embeds by value."""
    return (
        frozenset(manifest.requirements or ()),
        frozenset(m for m in manifest.by_value or () if isinstance(m, str)),
    )


def _static_problem(g: Global, declared: tuple[frozenset[str], frozenset[str]]) -> str | None:
    """Why ``g`` is refused from its names alone, or None."""
    requirements, by_value = declared
    parts = [*g.module.split("."), *(g.name.split(".") if g.name else [])]
    if not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
        return "not a module and attribute name"
    top = top_level(g.module)
    path = ".".join(parts)
    if top in _FORBIDDEN_MODULES or any(p in _FORBIDDEN_NAMES for p in parts[1:]) or any(
        path == prefix or path.startswith(prefix + ".") for prefix in _FORBIDDEN_SUBMODULES
    ):
        return "a global no model needs"
    if any(p.startswith("__") and p.endswith("__") for p in parts):
        return "a dunder name, which no model needs"
    if top in by_value:
        return "a by-value module named by reference: that code cannot be checked without running it"
    if top in _STDLIB_ALLOWED or any(g.module == m or g.module.startswith(m + ".") for m in _BLACKBOX_IN_PAYLOADS):
        return None
    if top in sys.stdlib_module_names:
        return "its module is not declared: not among the standard-library modules a model needs"
    environment = ServingEnvironment()
    provided_by = environment.requirements([Global(top, "")])
    if not provided_by or not set(provided_by) <= requirements or not environment.provides(top):
        return "its module is not declared: no requirement of the manifest installed here from a package index provides it"
    return None


def _resolved_problem(g: Global, optional: bool) -> str | None:
    """Why ``g`` is refused once its (declared, installed) modules are imported, or None.

    Walks ``module.name`` from the top-level module: every step but the last must be
    a submodule of the step before (a module object of exactly that dotted name);
    the last may be that too, or a value of the module's own namespace that, if
    callable, was defined in that module.
    """
    parts = [*g.module.split("."), *(g.name.split(".") if g.name else [])]
    try:
        obj: Any = importlib.import_module(parts[0])
    except Exception as exc:  # noqa: BLE001  a declared requirement that cannot be imported here
        return f"module {parts[0]!r} cannot be imported here: {exc!r}"
    where = parts[0]
    for index, part in enumerate(parts[1:], 2):
        path = ".".join(parts[:index])
        namespace = vars(obj)
        if part not in namespace and _is_submodule(path):
            try:
                importlib.import_module(path)
            except Exception as exc:  # noqa: BLE001  as above: whatever its import raises
                return f"module {path!r} cannot be imported here: {exc!r}"
        if part not in namespace:
            return None if optional and index == len(parts) else f"{where} has no attribute {part!r}"
        value = namespace[part]
        if isinstance(value, types.ModuleType):
            if value.__name__ != path:
                return f"{path} is the module {value.__name__}: a name may not lead through another module"
            obj, where = value, path
            continue
        if index != len(parts):
            return f"{path} is not a submodule: a dotted name may walk through submodules only"
        if callable(value) and getattr(value, "__module__", None) != where:
            return f"{path} is {getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', part)}, another module's callable"
        if where == "builtins" and not isinstance(value, type) and part not in _VETTED_BUILTINS:
            return "a builtin function no model needs"
    return None


def _is_submodule(path: str) -> bool:
    try:
        return importlib.util.find_spec(path) is not None
    except (ImportError, ValueError):
        return False
