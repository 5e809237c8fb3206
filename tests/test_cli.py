"""The ``blackbox`` command group itself: its help, click's usage errors, ``python -m blackbox``, exit codes.

What each command does is tested with its feature (test_store.py, test_scoring.py, ...); here only
what every command shares: that help lists and opens every one, that a wrong command or option is a
usage error (exit 2, click's message), and that a failure ends with the exit code of its class in
:class:`blackbox.ExitCode` and one ``blackbox: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest

import blackbox
from blackbox.cli import cli, main
from blackbox.errors import BlackboxError, ExitCode

from _helpers import child_env, run_cli


def listed_commands(help_text: str) -> list[str]:
    """The command names in the ``Commands:`` section of a group's help."""
    section = help_text.split("Commands:\n", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  (\S+)", section, re.M)]


def all_commands() -> list[str]:
    return cli.list_commands(click.Context(cli))


def test_help_lists_every_command_once(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == ExitCode.OK
    assert listed_commands(out) == all_commands()
    # the group registers its own commands and the lazy ones (serve, from the server package)
    assert set(all_commands()) == {*cli.commands, *type(cli).lazy}
    assert {"inspect", "verify", "score", "push", "serve"} <= set(all_commands())


@pytest.mark.parametrize("name", all_commands())
def test_every_commands_help_works(name, capsys):
    code, out, err = run_cli(capsys, name, "--help")
    assert code == ExitCode.OK, err
    assert out.startswith(f"Usage: blackbox {name} ")
    assert "Options:" in out and "--help" in out and err == ""


@pytest.mark.parametrize(("argv", "message"), [
    (["nope"], "No such command 'nope'."),
    (["--nope"], "No such option '--nope'."),
    (["inspect", "--nope", "x.bbx"], "No such option '--nope'."),
    (["inspect"], "Missing argument 'PATH'."),
    (["score", "--on-error", "sometimes"], "Invalid value for '--on-error'"),
], ids=["command", "group-option", "command-option", "argument", "choice"])
def test_a_wrong_command_option_or_argument_is_a_usage_error_with_clicks_message(argv, message, capsys):
    code, out, err = run_cli(capsys, *argv)
    assert code == ExitCode.USAGE == 2
    assert message in err and "Usage: blackbox" in err and "Traceback" not in err
    assert out == ""


def test_python_dash_m_blackbox_is_the_same_command_line():
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "blackbox", *argv], capture_output=True, text=True, timeout=120,
                              env=child_env())

    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert listed_commands(helped.stdout) == all_commands()
    version = run("--version")
    assert version.returncode == 0 and blackbox.__version__ in version.stdout
    wrong = run("nope")
    assert wrong.returncode == ExitCode.USAGE and "No such command 'nope'" in wrong.stderr


# -- exit codes: the class of the error decides, for every command ------------------------------------


def _error_classes() -> list[type[BlackboxError]]:
    seen: list[type[BlackboxError]] = []
    todo = [BlackboxError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(set(seen), key=lambda c: c.__name__)


@pytest.mark.parametrize("error", _error_classes(), ids=lambda c: c.__name__)
def test_a_blackbox_error_ends_the_command_with_its_class_exit_code_and_one_line(error, capsys, monkeypatch):
    """Through the group's own command class, as every command runs: the class's ExitCode, one stderr line."""
    exc = error.__new__(error)
    BlackboxError.__init__(exc, "it went wrong in the test")

    def fail() -> None:
        raise exc

    monkeypatch.setitem(cli.commands, "fail-for-test", cli.command_class("fail-for-test", callback=fail))
    code, out, err = run_cli(capsys, "fail-for-test")
    assert code == error.exit_code and isinstance(code, ExitCode)
    assert (out, err) == ("", "blackbox: it went wrong in the test\n")


def test_ctrl_c_is_interrupted(capsys, monkeypatch):
    def interrupted() -> None:
        raise KeyboardInterrupt  # click turns it into an Abort

    monkeypatch.setitem(cli.commands, "abort-for-test", cli.command_class("abort-for-test", callback=interrupted))
    code, _, err = run_cli(capsys, "abort-for-test")
    assert code == ExitCode.INTERRUPTED == 130 and err.endswith("Aborted.\n")


def test_a_representative_failure_of_each_kind_of_command_exits_with_its_code(served_artifact, serving_keys, tmp_path, capsys):
    """Real failures, one per kind of command: reading an artifact, trusting it, a store, a data file, keys."""
    junk = tmp_path / "junk.bbx"
    junk.write_text("not an artifact\n")
    partial = tmp_path / "partial.csv"
    partial.write_text("pclass\n3\n")
    (tmp_path / "store").mkdir()
    (tmp_path / "keys").mkdir()
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == ExitCode.OK

    cases = [
        (["inspect", junk], ExitCode.MALFORMED, "is not a blackbox artifact"),
        (["inspect", served_artifact, "--require-valid"], ExitCode.AUTHENTICITY, "NOT verified"),
        (["pull", tmp_path / "store", "titanic", "-o", tmp_path / "out.bbx"], ExitCode.STORE, "neither an alias nor a version"),
        (["export-log", tmp_path / "none.db", "-o", tmp_path / "x.csv"], ExitCode.USAGE, "No prediction log"),
        (["keygen", "--out", tmp_path / "keys"], ExitCode.USAGE, "already exists"),
        (["score", served_artifact, partial, "-o", tmp_path / "scored.csv", "--trusted-keys", serving_keys[1]],
         ExitCode.INPUT_DATA, "sex"),
        (["score", served_artifact, tmp_path / "none.csv", "-o", tmp_path / "scored.csv"], ExitCode.USAGE, "does not exist"),
    ]
    for argv, expected, said in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == expected, (argv, err)
        assert said in out + err and "Traceback" not in out + err, (argv, out, err)
        assert not err or err.startswith(("blackbox: ", "Usage: blackbox")), (argv, err)
