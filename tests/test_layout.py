"""The layers the tree shows (#18): what imports pickles, what the load path imports, who says what to block."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import blackbox
from blackbox import persist
from blackbox.cli import main

ROOT = Path(__file__).resolve().parents[1]
PICKLERS = {"pickle", "dill", "cloudpickle"}


def imported_modules(path: Path) -> set[str]:
    """The top-level modules a source file imports (every import statement, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.partition(".")[0])
    return found


def test_only_the_serializer_seam_imports_pickle_dill_or_cloudpickle():
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & PICKLERS)
        for package in ("blackbox", "serving")
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported_modules(path) & PICKLERS
    }
    assert offenders == {"blackbox/containment/serializers.py": ["cloudpickle", "dill", "pickle"]}


def test_the_load_path_imports_no_monitoring(saved):
    """import blackbox + load + self-test (trusting the test key from the environment): no monitoring, SQLAlchemy, matplotlib."""
    code = (
        "import json, sys, blackbox\n"
        f"m = blackbox.load({str(saved)!r})\n"
        "m.self_test()\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.startswith('blackbox.monitoring')"
        " or n.partition('.')[0] in ('sqlalchemy', 'matplotlib', 'flask', 'serving'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_monitoring_package_imports_sqlalchemy_only_when_read_log_is_asked_for():
    code = (
        "import sys, blackbox.monitoring as mon\n"
        "before = 'sqlalchemy' in sys.modules\n"
        "mon.read_log\n"
        "print(before, 'sqlalchemy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def relative_imports(path: Path) -> set[str]:
    """The blackbox modules a file imports relatively (``from .x import``, ``from . import x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


def test_model_never_loads_itself_persist_does(saved):
    assert not hasattr(blackbox.Model, "deserialize")
    assert "trust" not in relative_imports(ROOT / "blackbox" / "model.py")
    model = blackbox.load(saved)
    again = persist.loads(model.serialize(), source="copy")
    assert type(again) is type(model) and again.sha256 == model.sha256 and again.plan is not None
    assert persist.loads(model.serialize(), fast_path=False).plan is None


@pytest.fixture(scope="module")
def training_by_reference(search, titanic, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("layout") / "byref.bbx"
    return blackbox.save(search, path, train_data=titanic[0], by_reference=["training"])


def test_verify_blocks_what_the_caller_names_not_training_by_default(training_by_reference, capsys):
    """blackbox knows nothing of the training package: here (where it is installed) it satisfies the artifact."""
    assert blackbox.verify(training_by_reference).ok
    assert blackbox.verify(training_by_reference, block=["training"]).status == "not_self_contained"
    assert main(["verify", str(training_by_reference)]) == 0
    assert main(["verify", str(training_by_reference), "--block", "training"]) == 11
    capsys.readouterr()
    assert main(["verify", "--help"]) == 0
    assert "default: training" not in capsys.readouterr().out


def test_the_openapi_record_is_the_servers_not_the_schemas(saved):
    """blackbox.Schema knows validation; the OpenAPI description of a record lives with the server."""
    from serving.openapi import record_schema

    assert not hasattr(blackbox.Schema, "openapi")
    record = record_schema(blackbox.load(saved).schema)
    assert record["type"] == "object" and record["properties"]["age"]["anyOf"][1]["type"] == "string"


def test_the_old_documented_read_log_path_still_works():
    from blackbox.monitoring import read_log
    from blackbox.predlog import read_log as old

    assert old is read_log
