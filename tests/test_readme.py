"""The README is a contract: its Python example runs as written, its commands exist with the options it shows.

The fenced blocks are found by content, not by position, so text added around them
does not break this test; renaming an option or breaking the example does. The
main job's script (``scripts/main.sh``) is run against stubs, so what it installs,
trains and serves is observed without installing, training or serving anything.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import click
import pytest

import blackbox
from blackbox import signing
from blackbox.cli import cli as blackbox_group
from blackbox.cli import main as blackbox_cli

from _helpers import free_port, taken_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```", re.M | re.S)
PROGRAMS = {"blackbox", ".venv/bin/blackbox", "blackbox-train", ".venv/bin/blackbox-train"}
# Commands cheap enough to run for real against a small artifact, placeholders filled in.
RUN_FOR_REAL = {"inspect", "verify", "keygen", "sign", "requirements"}
PLACEHOLDERS = {"PATH": "artifacts/titanic.bbx", "ARTIFACT": "artifacts/titanic.bbx", "KEY": "keys/blackbox.key",
                "DIR": "newkeys", "MODULE": "training", "DAYS": "30"}


def readme() -> str:
    return README.read_text(encoding="utf-8")


def fenced(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(readme()) if lang == language]


def python_example() -> str:
    """The API example: the python block that saves and loads."""
    blocks = [b for b in fenced("python") if "blackbox.save(" in b and "blackbox.load(" in b]
    assert len(blocks) == 1, "the README should have one Python block that saves and loads a model"
    return blocks[0]


def _logical_lines(body: str) -> list[str]:
    """Shell lines with comments dropped, backslash and indented continuations joined."""
    lines: list[str] = []
    joining = False
    for raw in body.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip():
            joining = False
            continue
        if lines and (joining or raw[:1].isspace()):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.strip())
        joining = lines[-1].endswith("\\")
        lines[-1] = lines[-1].rstrip("\\").rstrip()
    return lines


def readme_commands() -> list[str]:
    """Every ``blackbox`` / ``blackbox-train`` command line in a shell block or an inline code span."""
    text = readme()
    commands = []
    for lang, body in FENCE.findall(text):
        if lang in ("bash", "sh", "shell", "console"):
            commands += [line for line in _logical_lines(body) if line.split()[0] in PROGRAMS]
    prose = FENCE.sub("", text)
    commands += re.findall(r"`((?:\.venv/bin/)?blackbox(?:-train)? [^`]+)`", prose)
    return [c.rstrip(" &") for c in commands]


def _command(line: str) -> tuple[str, click.Command]:
    """The click command a README line runs, and its name as written."""
    words = line.replace("[", " ").replace("]", " ").split()
    if words[0].endswith("blackbox-train"):
        from training.__main__ import cli as train

        return "blackbox-train", train
    name = next((w for w in words[1:] if not w.startswith("-")), None)
    command = blackbox_group.get_command(click.Context(blackbox_group), name)  # serve is loaded lazily
    assert command is not None, f"README shows `{line}`, but there is no `blackbox {name}` command"
    return f"blackbox {name}", command


def test_the_readme_shows_commands_and_the_example():
    """Guards the extraction itself: if it found nothing, every other test here would pass vacuously."""
    commands = readme_commands()
    assert any(c.startswith("blackbox rebuild") for c in commands)
    assert any("blackbox-train" in c for c in commands) and any(c.startswith("blackbox serve") for c in commands)
    assert "blackbox.save(" in python_example()


@pytest.mark.parametrize("line", readme_commands())
def test_every_readme_command_exists_with_the_options_it_shows(line):
    shown, command = _command(line)
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
    used = set(re.findall(r"(?<![\w/.-])(--?[A-Za-z][\w-]*)", line))
    assert used <= known, f"README: `{line}` uses {sorted(used - known)}, which `{shown}` does not take"


@pytest.fixture()
def workspace(tmp_path, search, titanic, monkeypatch) -> Path:
    """A user's directory: keys from `blackbox keygen --out keys`, a small signed artifact, nothing in the environment."""
    X_train, _, _, _ = titanic
    monkeypatch.delenv(signing.SIGNING_KEY_ENV)
    monkeypatch.delenv(signing.TRUSTED_KEYS_ENV)
    monkeypatch.chdir(tmp_path)
    signing.keygen("keys", "blackbox")
    blackbox.save(search, "artifacts/titanic.bbx", train_data=X_train, name="titanic", version="1.0.0",
                  signing_key="keys/blackbox.key")
    return tmp_path


def test_the_python_example_runs_as_written(workspace):
    """In a fresh directory with no BLACKBOX_* variables, as a new user runs it: nothing is defined for it."""
    names: dict[str, object] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(python_example(), "README.md", "exec"), names)
    assert names["model"].predict_batch(names["X_test"])  # the example's own data and model
    assert not [w for w in caught if "UNSIGNED" in str(w.message)]  # the example signs what it saves
    assert blackbox.inspect("titanic.bbx", trusted_keys="keys/blackbox.pub")["signature"]["valid"]


def test_save_without_a_key_says_what_loading_will_need(workspace, search, titanic):
    X_train, _, _, _ = titanic
    with pytest.warns(UserWarning, match="unsigned") as caught:
        blackbox.save(search, "unsigned.bbx", train_data=X_train)
    message = str(caught[0].message)
    assert "allow_unsigned" in message and "trusted_keys" in message and "signing_key" in message
    assert "blackbox sign" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blackbox.save(search, "signed.bbx", train_data=X_train, signing_key="keys/blackbox.key")
    assert not [w for w in caught if "UNSIGNED" in str(w.message)]


def _for_real(line: str) -> list[str] | None:
    """The argv of a cheap README command with its placeholders filled in (optional parts included), or None."""
    words = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " | "))
    if words[0] != "blackbox" or len(words) < 3 or words[1] not in RUN_FOR_REAL or "..." in words:
        return None
    argv: list[str] = []
    for word in words[1:]:
        if argv and argv[-1] == "|":  # a choice: the first alternative is enough
            argv.pop()
            continue
        argv.append(PLACEHOLDERS.get(word, word))
    return argv


@pytest.mark.parametrize("line", [c for c in readme_commands() if _for_real(c)])
def test_the_cheap_readme_commands_run(workspace, line, monkeypatch, capsys):
    monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, "keys/blackbox.pub")
    argv = _for_real(line)
    if argv[0] == "keygen":  # the step that creates keys/: run it where there are none yet
        fresh = workspace / "fresh"
        fresh.mkdir()
        monkeypatch.chdir(fresh)
    assert blackbox_cli(argv) == 0, f"README: `{line}` ran as {argv} and failed:\n{capsys.readouterr()}"


# -- the main job: scripts/main.sh ------------------------------------------------------------------------------

def _stub_project(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of scripts/ whose setup, python and blackbox are stubs that log how they were called."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "scripts", project / "scripts")
    log = tmp_path / "calls.log"
    stub = f'#!/usr/bin/env bash\necho "$(basename "$0") $*" >> {log}\n'
    (project / "scripts" / "setup.sh").write_text(stub)
    (project / ".venv" / "bin").mkdir(parents=True)
    for name in ("python", "blackbox"):
        (project / ".venv" / "bin" / name).write_text(stub)
        (project / ".venv" / "bin" / name).chmod(0o755)
    (project / "keys").mkdir()
    (project / "keys" / "blackbox.key").write_text("stub")
    return project, log


def _main_job(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("BLACKBOX_", "PYTHON"))} | env
    return subprocess.run(["bash", str(project / "scripts" / "main.sh")], capture_output=True, text=True,
                          env=environ, timeout=60)


def test_main_job_says_the_port_is_taken_before_it_trains(tmp_path):
    project, log = _stub_project(tmp_path)
    with taken_port() as port:
        done = _main_job(project, BLACKBOX_PORT=str(port))
    assert done.returncode == 2, done
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr and "BLACKBOX_PORT" in done.stderr
    assert not log.exists() or "training" not in log.read_text()  # refused before training


def test_main_job_serves_on_the_host_and_port_from_the_environment(tmp_path):
    project, log = _stub_project(tmp_path)
    port = free_port()
    done = _main_job(project, BLACKBOX_HOST="127.0.0.1", BLACKBOX_PORT=str(port))
    assert done.returncode == 0, done
    serve = [line for line in log.read_text().splitlines() if line.startswith("blackbox serve")]
    assert serve and f"--host 127.0.0.1 --port {port}" in serve[0]
    assert f"http://127.0.0.1:{port}" in done.stdout


def test_only_the_test_command_installs_system_packages():
    """The main job needs no Debian packages; the tests' packages are test.sh's business."""
    setup, main, test = ((ROOT / "scripts" / name).read_text() for name in ("setup.sh", "main.sh", "test.sh"))
    for script in (setup, main):
        assert "apt-get" not in script and "system_package" not in script
    assert "system_package postgresql" in test and "system_package chromium" in test


# -- keys: a newcomer's shell has no BLACKBOX_* variables -------------------------------------------------------

# Commands that check an artifact's or a pointer's signature (refused, exit 4, or aliases hidden, without a trusted
# key), and those that sign (refused, exit 2, without a signing key). blackbox-train signs what it saves: unsigned,
# no loader in this README accepts it.
NEEDS_TRUST = {"verify", "requirements", "export", "score", "serve", "push", "list", "pull", "promote", "rollback",
               "rebuild", "drift"}
NEEDS_SIGNING = {"push", "promote", "rollback", "rebuild", "blackbox-train"}
SHELLS = ("bash", "sh", "shell", "console")


def _as_written(line: str) -> str:
    """A synopsis line without its optional ``[...]`` parts (innermost first): what a user runs when copying it."""
    while (shorter := re.sub(r"\[[^\[\]]*\]", " ", line)) != line:
        line = shorter
    return line


def shell_steps() -> list[tuple[str, frozenset[str]]]:
    """Every README shell command line with the BLACKBOX_ variables set for it: exported earlier in its block or
    prefixed to it. Lines that elide arguments (``...``) are left out: they are not meant to be run as they stand."""
    steps = []
    for lang, body in FENCE.findall(readme()):
        if lang not in SHELLS:
            continue
        exported: set[str] = set()
        for line in _logical_lines(body):
            words = line.split()
            if words[0] == "export":
                exported |= {w.partition("=")[0] for w in words[1:] if "=" in w}
                continue
            prefixed = set()
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                prefixed.add(words.pop(0).partition("=")[0])
            if words and words[0] in PROGRAMS and "..." not in words:
                steps.append((" ".join(words), frozenset(exported | prefixed)))
    return steps


def test_the_shell_steps_are_found():
    """Guards the extraction: the release cycle's exported keys are seen, and the loaders are there to check."""
    steps = dict(shell_steps())
    assert any(line.startswith("blackbox score") for line in steps)
    assert any("BLACKBOX_TRUSTED_KEYS" in env and line.startswith("blackbox promote") for line, env in steps.items())


@pytest.mark.parametrize(("line", "env"), shell_steps(), ids=[line for line, _ in shell_steps()])
def test_readme_commands_name_the_keys_they_need(line, env):
    """Copied into a fresh shell, a README command must not be refused for want of a key it never named."""
    words = _as_written(line).split()
    name = "blackbox-train" if words[0].endswith("blackbox-train") else words[1]
    missing = []
    if (name in NEEDS_TRUST or "--push" in words) and "--trusted-keys" not in words \
            and "BLACKBOX_TRUSTED_KEYS" not in env:
        missing.append("a trusted key (--trusted-keys keys/blackbox.pub, or BLACKBOX_TRUSTED_KEYS exported before it)")
    if name in NEEDS_SIGNING and "--signing-key" not in words and "BLACKBOX_SIGNING_KEY" not in env:
        missing.append("a signing key (--signing-key keys/blackbox.key, or BLACKBOX_SIGNING_KEY exported before it)")
    assert not missing, f"README: `{line}`, run as written, is refused: it needs {' and '.join(missing)}"
