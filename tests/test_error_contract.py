"""One error contract: exit codes from one enum (and the README says the same), wire codes from the exceptions,
library messages in the library's terms (the CLI and the server add their own hints), save() refusing typos,
and the package's metadata (version, typing marker, licence)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import blackbox
from blackbox.cli import main as blackbox_cli
from blackbox.errors import BlackboxError, ExitCode, UsageError, problem

ROOT = Path(__file__).resolve().parents[1]


def readme_exit_codes() -> dict[int, str]:
    """The README's exit-code sentence ("Exit codes, the same for every command: 2 usage, ...") as {code: words}."""
    text = " ".join((ROOT / "README.md").read_text().split())
    sentence = re.search(r"Exit codes, the same for every command[^:]*: (.*?)\.(?: |$)", text)
    assert sentence, "the README's exit-code sentence is gone"
    return {int(code): words.strip() for code, words in re.findall(r"(?:^|, )(\d+) ([a-z][a-z -]*)", sentence.group(1))}


def test_the_readme_names_every_exit_code_of_the_enum_and_no_other():
    documented = readme_exit_codes()
    assert sorted(documented) == sorted(int(code) for code in ExitCode)
    for code in ExitCode:  # the README's words for a code are the member's name: 9 input data is INPUT_DATA
        words = documented[code].replace("-", " ").split()
        assert all(part in words for part in code.name.lower().split("_")), (code, documented[code])


def test_every_error_class_exits_with_a_member_of_the_enum():
    pending, seen = [BlackboxError], []
    while pending:
        cls = pending.pop()
        seen.append(cls)
        pending.extend(cls.__subclasses__())
        assert isinstance(cls.exit_code, ExitCode), cls
    from blackbox.rebuild import RebuildError

    assert RebuildError in seen and RebuildError.exit_code is ExitCode.REBUILD_FAILED
    assert blackbox.errors.RebuildError is RebuildError  # one class, importable from both


def test_the_problem_constructor_has_the_documented_shape():
    entry = problem(3, "age", "type", "a number", "str 'abc'")
    assert entry == {"row": 3, "field": "age", "issue": "type", "expected": "a number", "received": "str 'abc'"}
    assert list(entry) == ["row", "field", "issue", "expected", "received"]


def test_every_row_of_the_http_table_gives_its_class_code():
    """A blackbox error's wire code is its own ``code`` (before: TooManyRecords said validation_error on the class)."""
    from serving import errors
    from serving.http_errors import TooManyRecords

    checked = 0
    for cls, (_status, code) in errors.TABLE.items():
        if isinstance(getattr(cls, "code", None), str):
            assert code == cls.code, (cls, code)
            checked += 1
    assert checked >= 4
    assert TooManyRecords.code == "too_many_records" and issubclass(TooManyRecords, blackbox.SchemaError)
    assert errors.classify(TooManyRecords("over", [])) == (413, "too_many_records")


def test_save_refuses_an_unknown_keyword_and_suggests_the_close_one(search, titanic, tmp_path):
    """Before: verfy=True went into the manifest's metadata and the isolated check was silently skipped."""
    path = tmp_path / "typo.bbx"
    with pytest.raises(UsageError) as info:
        blackbox.save(search, path, train_data=titanic[0], verfy=True)
    message = info.value.message
    assert "'verfy'" in message and "did you mean 'verify'" in message and "signing_key" in message
    assert "metadata=" in message
    assert not path.exists()


def test_schema_messages_name_no_route_and_the_server_adds_it(saved):
    model = blackbox.load(saved)
    record = dict(model.manifest.golden.records[0])
    with pytest.raises(blackbox.SchemaError) as info:
        model.predict({**record, "age": "abc"})
    assert "GET /" not in info.value.message and "schema" in info.value.message

    import serving

    client = serving.create_app({"ARTIFACT": str(saved)}).test_client()
    response = client.post("/predict", data=json.dumps({**record, "age": "abc"}), content_type="application/json")
    assert response.status_code == 422
    assert "GET /schema" in response.get_json()["error"]["message"]


def test_library_usage_errors_name_parameters_and_the_cli_adds_its_flags(saved, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("a\n1\n")
    out = tmp_path / "out.csv"
    out.write_text("taken\n")
    from blackbox import scoring

    with pytest.raises(UsageError) as info:
        scoring.score(saved, rows, out)
    assert "--" not in info.value.message and "overwrite=True" in info.value.message
    assert blackbox_cli(["score", str(saved), str(rows), "-o", str(out)]) == ExitCode.USAGE
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(UsageError) as info:
        scoring.score(saved, rows, tmp_path / "new.csv", scheduler="tcp://127.0.0.1:1")
    assert "--" not in info.value.message and "engine='dask'" in info.value.message


def test_importing_the_cli_imports_neither_flask_nor_serving():
    """Before: blackbox.cli imported serving.cli at import time to register `serve`."""
    code = "import sys, blackbox.cli; print([m for m in sys.modules if m.split('.')[0] in ('flask', 'serving', 'werkzeug')])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_serve_is_still_a_command(capsys):
    assert blackbox_cli(["--help"]) == 0
    assert re.search(r"^\s+serve\s", capsys.readouterr().out, re.M)
    assert blackbox_cli(["serve", "--help"]) == 0
    assert "--prediction-log" in capsys.readouterr().out


def test_the_package_says_its_version_is_typed_and_licensed():
    import importlib.metadata
    import tomllib

    assert blackbox.__version__ == importlib.metadata.version("blackbox")
    assert (ROOT / "blackbox" / "py.typed").is_file() and (ROOT / "serving" / "py.typed").is_file()
    licence = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert licence == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
