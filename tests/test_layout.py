"""The layers the tree shows (#18): what imports pickles, what the load path imports, who says what to block."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

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


def test_the_load_path_imports_no_monitoring(served_artifact, serving_keys):
    """import blackbox + load + predict: neither blackbox.monitoring nor SQLAlchemy nor matplotlib."""
    code = (
        "import json, sys, blackbox\n"
        f"m = blackbox.load({str(served_artifact)!r}, trusted_keys={str(serving_keys[1])!r})\n"
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
