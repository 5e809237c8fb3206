"""Prove an artifact runs where the training code does not exist.

Builds (or reuses) a virtual environment holding only the serving side:
the pinned runtime in requirements.txt plus blackbox and serving installed from
this checkout, never the training package. Then, in that environment:

1. ``import training`` must fail;
2. ``blackbox verify`` must load the artifact and reproduce its golden sample;
3. ``blackbox serve`` must answer raw JSON records on 127.0.0.1 exactly as the
   training process predicted them (``--expected``, written by
   ``blackbox-train --predictions-out``; the golden sample otherwise).

Usage: python isolation_env/run.py ARTIFACT [--trusted-keys PUB] [--expected FILE] [--rebuild]
Exit status: 0 when every step passes; otherwise the failing step's status,
with the reason on stderr. Only the standard library is used here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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


def build(rebuild: bool) -> float:
    """Create the venv if its requirements changed; always reinstall blackbox from this checkout."""
    started = time.perf_counter()
    stamp = hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()
    stamp_file = VENV / ".requirements-sha256"
    python = VENV / "bin" / "python"
    if rebuild or not python.exists() or not stamp_file.exists() or stamp_file.read_text() != stamp:
        print(f"build: creating {VENV.relative_to(ROOT)} from {REQUIREMENTS.relative_to(ROOT)}")
        shutil.rmtree(VENV, ignore_errors=True)
        for cmd in (
            [sys.executable, "-m", "venv", str(VENV)],
            [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
        ):
            done = run(cmd)
            if done.returncode:
                raise StepFailed("build", f"{' '.join(cmd[-3:])} failed:\n{done.stderr[-2000:]}")
        stamp_file.write_text(stamp)
    else:
        print(f"build: reusing {VENV.relative_to(ROOT)} (requirements unchanged)")
    done = run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(ROOT)])
    if done.returncode:
        raise StepFailed("build", f"installing blackbox failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def check_training_absent() -> None:
    done = run([str(VENV / "bin" / "python"), "-I", "-c", "import training"], cwd=tempfile.gettempdir())
    if done.returncode == 0 or "ModuleNotFoundError" not in done.stderr:
        raise StepFailed("isolation", "`import training` works in the serving environment; it must not")
    print("isolation: `import training` fails in the serving environment, as it must")


def check_verify(artifact: Path) -> None:
    done = run([str(VENV / "bin" / "blackbox"), "verify", str(artifact), "--json"], cwd=tempfile.gettempdir())
    try:
        outcome = json.loads(done.stdout)
    except ValueError:
        raise StepFailed("verify", f"blackbox verify crashed (exit {done.returncode}): {done.stderr[-1000:]}") from None
    if not outcome["ok"]:
        raise StepFailed("verify", outcome["message"], outcome["exit_code"])
    print(f"verify: self-contained, golden sample reproduced ({outcome['seconds']:.2f}s in the child)")


def check_server(artifact: Path, expected: dict) -> None:
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="isolation-serve-") as cwd:
        server = subprocess.Popen(
            [str(VENV / "bin" / "blackbox"), "serve", str(artifact), "--host", "127.0.0.1",
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
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise StepFailed("serve", f"POST /predict answered {exc.code}: {exc.read()[:1000]!r}") from None


def golden_expectation(artifact: Path) -> dict:
    """The golden sample recorded in the manifest (what the model predicted at save time)."""
    done = run([str(VENV / "bin" / "blackbox"), "inspect", str(artifact), "--json"])
    if done.returncode:
        raise StepFailed("inspect", done.stderr.strip(), done.returncode)
    return json.loads(done.stdout)["golden"]


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
        seconds = build(args.rebuild)
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
