"""Prove self-containment: load an artifact in a separate, isolated interpreter.

:func:`verify` starts ``python -I`` (no current directory, no PYTHONPATH on
``sys.path``) in an empty temporary directory, blocks the artifact's by-value
modules and the ones the caller names (the training code kept by reference:
the training command blocks its own package) so that nothing from the
training machine can satisfy a stray reference, loads the artifact with every
pre-unpickling check, and compares its golden-sample predictions exactly and
its probabilities to ``blackbox.model.PROBA_TOLERANCE``. Never in-process:
swapping ``sys.path`` or ``sys.modules`` in place would prove nothing.

A module the model's code imports only when it runs (an ``import`` inside a
feature function, which no scan of the pickle can see) and that cannot be found
there, as on a server without it, is refused as not self-contained (exit 11)
naming the module and what to do (:func:`missing_module_advice`), never a bare
traceback.

The child is also where untrusted model code meets its first run: a load or
golden sample that kills the interpreter (a segfault in user code) or does not
finish within ``timeout`` seconds is a failed self-test (exit code 7) naming
the signal or the time, never a crash of the caller (``blackbox serve`` vets
every new artifact this way before its workers take it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifact import read_header, read_manifest
from ..errors import ArtifactError, SelfContainmentError, SelfTestError, error_class
from ..signing import Keyring, public_pem
from ..trust import TrustedKeys

_MISSING_MODULE = re.compile(r"^ModuleNotFoundError: No module named '([^']+)'", re.MULTILINE)


def missing_module_advice(module: str, blocked: Iterable[str] = ()) -> str:
    """What to do about ``module``, imported by the model's code while it runs and not importable where it is served."""
    top = module.partition(".")[0]
    where = ("it is user code from the training machine (blocked here, as a server would not have it)"
             if top in set(blocked) else "it is not importable here, as on a server without it")
    return (
        f"The model's code imports {module!r} only when it runs (an import statement inside a function, which "
        f"blackbox cannot see in the pickle), and {where}. Move `import {top}` to the module level of the file "
        f"that defines the function, so that blackbox embeds {top!r} by value (or records it as a requirement if "
        f"it is an installed package); or, if the server installs {top!r} itself, declare it with "
        f"save(by_reference=[{top!r}]) and install it there."
    )


@dataclass(frozen=True)
class Verification:
    """The outcome of an isolated load: ``ok``, or which check failed and why."""

    ok: bool
    status: str
    message: str
    exit_code: int
    blocked: list[str]
    seconds: float
    details: list[Any] = field(default_factory=list)
    predictions: list[Any] | None = None

    def raise_for_status(self) -> None:
        """Raise the error class matching a failed verification."""
        if self.ok:
            return
        cls = error_class(self.status)
        if cls in (SelfContainmentError, SelfTestError):
            raise cls(self.message, self.details)
        raise cls(self.message)


def _write_trusted(trusted_keys: TrustedKeys, directory: Path) -> list[str]:
    """The trusted keys, read here (relative paths mean this process's directory), as .pub files for the child."""
    keyring = Keyring.from_environment() if trusted_keys is None else Keyring.from_paths(trusted_keys)
    directory.mkdir()
    for kid, key in keyring.keys.items():
        if kid not in keyring.revoked:
            (directory / f"{kid}.pub").write_bytes(public_pem(key))
    return [str(directory)]


def verify(
    path: str | os.PathLike[str],
    *,
    block: Iterable[str] = (),
    python: str | os.PathLike[str] | None = None,
    trusted_keys: TrustedKeys = None,
    allow_unsigned: bool = False,
    strict: bool = False,
    records: list[dict[str, Any]] | None = None,
    timeout: float = 300,
    oms_bundle: str | os.PathLike[str] | None = None,
) -> Verification:
    """Load ``path`` in an isolated interpreter where its user code cannot be imported.

    :param block: top-level modules made unimportable, on top of the artifact's by-value modules
        (which always are): the caller's training code, which a server will not have.
    :param python: the interpreter to use (default: this one); it must have blackbox installed.
    :param trusted_keys, allow_unsigned, strict, oms_bundle: the load policy, as for :func:`blackbox.load`.
    :param records: also predict these records there (``Verification.predictions``).
    :param timeout: seconds the child may take; past that it is killed and the outcome is a failed self-test.
    """
    path = Path(path).resolve()
    manifest_bytes, signature = read_header(path)
    manifest = read_manifest(manifest_bytes)
    blocked = sorted({*block, *(manifest.by_value or [])} - {"blackbox", "serving"})
    with tempfile.TemporaryDirectory(prefix="blackbox-verify-") as scratch:
        empty = Path(scratch, "cwd")
        empty.mkdir()
        options = json.dumps({
            "block": blocked,
            "strict": strict,
            "allow_unsigned": allow_unsigned,
            "trusted_keys": _write_trusted(trusted_keys, Path(scratch, "keys")) if signature or oms_bundle else None,
            "records": records,
            "oms_bundle": None if oms_bundle is None else str(Path(oms_bundle).resolve()),
        })
        try:
            done = subprocess.run(
                [str(python or sys.executable), "-I", "-m", "blackbox.containment._probe", str(path)],
                input=options,
                cwd=empty,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
            )
        except subprocess.TimeoutExpired:
            return Verification(
                False, SelfTestError.code,
                f"Loading {path.name} and running its golden sample did not finish within {timeout:g} s (its code "
                "may hang, or it is slower than the limit); the isolated interpreter was killed. Fix the model, "
                "or raise the limit if it is only slow.",
                SelfTestError.exit_code, blocked, timeout,
            )
    try:
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        if done.returncode < 0:  # killed by a signal: the model's own code crashed the interpreter
            return Verification(
                False, SelfTestError.code,
                f"Loading {path.name} and running its golden sample killed the isolated interpreter "
                f"(killed by {_signal_name(-done.returncode)}): its code crashes. Do not serve it; fix the model "
                "or the native library it calls.",
                SelfTestError.exit_code, blocked, 0.0,
            )
        missing = _MISSING_MODULE.search(done.stderr)
        if missing:  # the model's code died importing a module the child does not have
            return Verification(
                False, SelfContainmentError.code, missing_module_advice(missing.group(1), blocked),
                SelfContainmentError.exit_code, blocked, 0.0, [missing.group(1)],
            )
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        return Verification(
            False, ArtifactError.code, f"The isolated interpreter failed (exit {done.returncode}):\n{tail}",
            ArtifactError.exit_code, blocked, 0.0,
        )
    ok = outcome["status"] == "ok" and not outcome.get("leaked")
    message = outcome.get("message") or (
        f"Loaded with {', '.join(blocked) or 'nothing'} blocked; golden sample reproduced."
        if ok
        else f"Blocked modules were imported anyway: {outcome.get('leaked')}"
    )
    return Verification(
        ok, outcome["status"], message, int(outcome.get("exit_code", 0)), blocked, float(outcome["seconds"]),
        outcome.get("details") or [], outcome.get("predictions"),
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
