"""The lint and type step: scripts/test.sh (CI) runs ruff and mypy --strict before any test, and pre-commit
runs the same two from the venv; both read their configuration from pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_lints_and_type_checks_before_the_tests():
    lines = [line.strip() for line in (ROOT / "scripts" / "test.sh").read_text().splitlines()]
    assert "set -euo pipefail" in lines  # a failing step fails the run
    steps = {step: lines.index(step) for step in (".venv/bin/ruff check .", ".venv/bin/mypy")}
    pytest_step = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/python -m pytest"))
    assert all(i < pytest_step for i in steps.values()), steps


def test_mypy_is_strict_for_both_packages_with_no_exception():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True and config["files"] == ["blackbox", "serving"]
    relaxed = [o for o in config.get("overrides", []) if any(k != "module" and k != "ignore_missing_imports" for k in o)]
    # Third-party libraries without hints may be skipped, but no module of blackbox or serving is relaxed.
    own = sorted(m for o in relaxed for m in o["module"] if m.split(".")[0] in ("blackbox", "serving"))
    assert own == [], own


def test_pre_commit_runs_the_venvs_ruff_and_mypy():
    text = (ROOT / ".pre-commit-config.yaml").read_text()
    assert "repo: local" in text and "https://" not in text  # no hook repository to fetch at commit time
    assert re.findall(r"entry: (\S+)", text) == [".venv/bin/ruff", ".venv/bin/mypy"]
