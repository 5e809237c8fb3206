"""The sklearn-pandas shim: needed, installed in every interpreter of the environment."""

from __future__ import annotations

import subprocess
import sysconfig

import sklearn

from _helpers import PYTHON, child_env

NEEDS_SHIM = tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 7)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, env=child_env(), timeout=120)


def test_a_fresh_isolated_interpreter_imports_sklearn_pandas():
    done = run("-I", "-c", "import sklearn_pandas, sklearn.utils; print(sklearn.utils.tosequence.__module__)")
    assert done.returncode == 0, done.stderr
    if NEEDS_SHIM:
        assert done.stdout.strip() == "_blackbox_compat"


def test_without_the_startup_hook_sklearn_pandas_breaks_and_install_fixes_it():
    """Proves the .pth hook is what makes it work: skip site (-S) and the import fails again."""
    site_packages = sysconfig.get_paths()["purelib"]
    prefix = f"import sys; sys.path.append({site_packages!r}); "
    bare = run("-S", "-c", prefix + "import sklearn_pandas")
    if NEEDS_SHIM:
        assert bare.returncode != 0 and "tosequence" in bare.stderr
    fixed = run("-S", "-c", prefix + "import _blackbox_compat; _blackbox_compat.install(); import sklearn_pandas")
    assert fixed.returncode == 0, fixed.stderr
