"""Prove an artifact runs where the training code does not exist.

Builds (or reuses) a virtual environment holding only the serving side, from
the artifact's own requirements (``blackbox requirements ARTIFACT``, run with
this interpreter: the exact versions it was saved with, and blackbox and serving
from this checkout), with the lock in requirements.txt constraining everything
else; never the training package. A requirement that this interpreter has from
a local path rather than a package index (code the artifact keeps by
reference) is not installed and is named: the check then fails as not
self-contained, as a server would. Then, in that environment:

1. ``import training`` must fail;
2. ``blackbox verify`` must load the artifact and reproduce its golden sample;
3. ``blackbox serve`` must answer raw JSON records on 127.0.0.1 exactly as the
   training process predicted them (``--expected``, written by
   ``blackbox-train --predictions-out``; the golden sample otherwise).

Usage: .venv/bin/python isolation_env/run.py ARTIFACT [--trusted-keys PUB] [--expected FILE] [--rebuild]
Exit status: 0 when every step passes; otherwise the failing step's status,
with the reason on stderr. Only the standard library is used here; the
functions take the venv, so tests build and check other venvs with them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv"
REQUIREMENTS = HERE / "requirements.txt"
PROBA_TOLERANCE = 1e-9
BATCH = 100


class StepFailed(Exception):
    def __init__(self, step: str, reason: str, status: int = 1) -> None:
        super().__init__(f"{step}: {reason}")
        self.status = status


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)


def build_venv(
    venv: Path, pip_args: list[str], *, stamp: str, rebuild: bool = False, pins: dict[str, str] | None = None
) -> bool:
    """Create ``venv`` and ``pip install pip_args`` into it, unless a reusable one exists; True when built.

    Reusable: built with the same ``stamp`` (what it was built from; the
    interpreter's version is added) by this interpreter, and holding exactly
    ``pins`` (name -> version), if given.
    """
    stamp = hashlib.sha256(stamp.encode() + sys.version.encode()).hexdigest()
    stamp_file = venv / ".build-sha256"
    python = venv / "bin" / "python"
    if (not rebuild and python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp
            and _holds(venv, pins or {})):
        return False
    shutil.rmtree(venv, ignore_errors=True)
    for cmd in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "--quiet", *pip_args],
    ):
        done = run(cmd)
        if done.returncode:
            raise StepFailed("build", f"{' '.join(cmd[2:])} failed:\n{done.stderr[-2000:]}")
    stamp_file.write_text(stamp)
    return True


def serving_requirements(artifact: Path) -> tuple[str, list[str]]:
    """The artifact's requirements file for this checkout, and the lines left out (see the module docstring)."""
    done = run([sys.executable, "-m", "blackbox", "requirements", str(artifact), "--blackbox", f"blackbox @ {ROOT.as_uri()}"])
    if done.returncode:
        raise StepFailed(
            "requirements",
            f"`blackbox requirements` failed (exit {done.returncode}; run this with the development venv's "
            f"python, which has blackbox): {done.stderr.strip()[-1000:]}",
            done.returncode,
        )
    kept, left_out = [], []
    for line in done.stdout.splitlines():
        name, pinned, _ = line.partition("==")
        (left_out if pinned and not _from_index_here(name) else kept).append(line)
    return "\n".join(kept) + "\n", left_out


def _holds(venv: Path, pins: dict[str, str]) -> bool:
    """Whether ``venv`` has exactly these versions installed."""
    probe = "import importlib.metadata as m, json, sys\n" \
        "def v(d):\n    try: return m.version(d)\n    except m.PackageNotFoundError: return None\n" \
        "print(json.dumps({d: v(d) for d in json.loads(sys.argv[1])}))"
    done = run([str(venv / "bin" / "python"), "-I", "-c", probe, json.dumps(sorted(pins))])
    return done.returncode == 0 and json.loads(done.stdout) == pins


def _from_index_here(dist: str) -> bool:
    """False when this interpreter has ``dist`` from a local path or file (PEP 610); True otherwise."""
    try:
        origin = json.loads(importlib.metadata.distribution(dist).read_text("direct_url.json") or "{}")
    except importlib.metadata.PackageNotFoundError:
        return True  # not here: the package index is the only place it can come from
    return "dir_info" not in origin and not str(origin.get("url", "")).startswith("file:")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build(artifact: Path, rebuild: bool) -> float:
    """Build the venv from the artifact's requirements and the lock; always reinstall blackbox from this checkout."""
    started = time.perf_counter()
    requirements, left_out = serving_requirements(artifact)
    pins = dict(line.split("==", 1) for line in requirements.splitlines() if "==" in line and not line.startswith("#"))
    pinned = {_normalized(name) for name in pins}
    lock = REQUIREMENTS.read_text()
    constraints = "".join(
        line + "\n" for line in lock.splitlines()
        if line and not line.startswith("#") and _normalized(line.partition("==")[0]) not in pinned
    )
    for line in left_out:
        print(f"build: not installing {line}: this interpreter has it from a local path, not a package index")
    with tempfile.TemporaryDirectory(prefix="isolation-build-") as inputs:
        (Path(inputs) / "requirements.txt").write_text(requirements)
        (Path(inputs) / "constraints.txt").write_text(constraints)
        pip_args = ["-r", f"{inputs}/requirements.txt", "-c", f"{inputs}/constraints.txt"]
        # Artifacts pinning what the lock has (dill or cloudpickle, saved in the dev venv) share one venv.
        built = build_venv(VENV, pip_args, stamp=lock, rebuild=rebuild, pins=pins)
    if built:
        print(f"build: created {VENV.relative_to(ROOT)} from the artifact's requirements, "
              f"{REQUIREMENTS.relative_to(ROOT)} constraining the rest")
    else:
        print(f"build: reusing {VENV.relative_to(ROOT)} (same lock; it has every version the artifact pins)")
    done = run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(ROOT)])
    if done.returncode:
        raise StepFailed("build", f"installing blackbox failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def check_training_absent(venv: Path = VENV) -> None:
    done = run([str(venv / "bin" / "python"), "-I", "-c", "import training"], cwd=tempfile.gettempdir())
    if done.returncode == 0 or "ModuleNotFoundError" not in done.stderr:
        raise StepFailed("isolation", "`import training` works in the serving environment; it must not")
    print("isolation: `import training` fails in the serving environment, as it must")


def check_verify(artifact: Path, venv: Path = VENV) -> None:
    done = run([str(venv / "bin" / "blackbox"), "verify", str(artifact), "--block", "training", "--json"],
               cwd=tempfile.gettempdir())
    try:
        outcome = json.loads(done.stdout)
    except ValueError:
        raise StepFailed("verify", f"blackbox verify crashed (exit {done.returncode}): {done.stderr[-1000:]}") from None
    if not outcome["ok"]:
        raise StepFailed("verify", outcome["message"], outcome["exit_code"])
    print(f"verify: self-contained, golden sample reproduced ({outcome['seconds']:.2f}s in the child)")


def check_server(artifact: Path, expected: dict, venv: Path = VENV) -> None:
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="isolation-serve-") as cwd:
        server = subprocess.Popen(
            [str(venv / "bin" / "blackbox"), "serve", str(artifact), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        )
        try:
            _wait_ready(port, server)
            got_pred, got_proba = [], []
            records = expected["records"]
            for start in range(0, len(records), BATCH):
                answer = _post(port, {"records": records[start : start + BATCH]})
                got_pred += answer["predictions"]
                got_proba += answer.get("probabilities") or []
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    differ = [i for i, (e, g) in enumerate(zip(expected["predictions"], got_pred)) if e != g]
    if len(got_pred) != len(expected["predictions"]) or differ:
        raise StepFailed("serve", f"{len(differ)} prediction(s) differ from training's, first rows {differ[:10]}", 7)
    if expected.get("probabilities"):
        worst = max(abs(e - g) for er, gr in zip(expected["probabilities"], got_proba) for e, g in zip(er, gr))
        if worst > PROBA_TOLERANCE:
            raise StepFailed("serve", f"probabilities differ from training's by up to {worst:.3g}", 7)
    print(f"serve: {len(records)} records over HTTP equal what training predicted")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise StepFailed("serve", f"the server exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise StepFailed("serve", f"the server was not ready within {timeout:.0f}s")


def _post(port: int, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:  # noqa: S310 (the local server)
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise StepFailed("serve", f"POST /predict answered {exc.code}: {exc.read()[:1000]!r}") from None


def golden_expectation(artifact: Path, venv: Path = VENV) -> dict:
    """The golden sample recorded in the manifest (what the model predicted at save time)."""
    done = run([str(venv / "bin" / "blackbox"), "inspect", str(artifact), "--json"])
    if done.returncode:
        raise StepFailed("inspect", done.stderr.strip(), done.returncode)
    return json.loads(done.stdout)["golden"]


@contextlib.contextmanager
def _venv_lock():
    """Concurrent runs share VENV: building (or reinstalling blackbox) holds it alone, checking shares it.

    Yields the call that turns the exclusive lock into a shared one.
    """
    fd = os.open(HERE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield lambda: fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--expected", type=Path, help="JSON from blackbox-train --predictions-out")
    parser.add_argument("--rebuild", action="store_true", help="build the environment from scratch")
    parser.add_argument("--no-serve", action="store_true", help="skip the server step")
    parser.add_argument("--trusted-keys", help="public key(s) the artifact is signed with (default: $BLACKBOX_TRUSTED_KEYS)")
    args = parser.parse_args(argv)
    artifact = args.artifact.resolve()
    if args.trusted_keys:  # every child below (verify, serve) reads the trust policy from here
        os.environ["BLACKBOX_TRUSTED_KEYS"] = str(Path(args.trusted_keys).resolve())
    try:
        with _venv_lock() as share:
            seconds = build(artifact, args.rebuild)
            share()
            print(f"build: ready in {seconds:.1f}s")
            check_training_absent()
            check_verify(artifact)
            if not args.no_serve:
                expected = json.loads(args.expected.read_text()) if args.expected else golden_expectation(artifact)
                check_server(artifact, expected)
    except StepFailed as exc:
        print(f"isolation_env: FAILED at {exc}", file=sys.stderr)
        return exc.status
    print(f"isolation_env: {artifact.name} is self-contained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
