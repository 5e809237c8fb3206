"""What a user who never read the lock gets: a plain ``pip install <checkout>`` in a fresh venv.

No lock, no constraints: pip resolves whatever the package index has today, so
the versions differ from the development venv's wherever a newer release came
out (cloudpickle 3.1.3 against the lock's 3.1.2 when issue #17 was filed).
Artifacts saved here with both serializers must load there, pass their golden
sample, and warn once for each distribution whose version differs, and for
nothing else. The venv is built with isolation_env/run.py's own code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import blackbox
from blackbox.cli import main as blackbox_cli

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# Runs in the fresh venv: load with every warning recorded, self-test, and report the
# VersionMismatchWarnings and the versions installed there.
LOAD = """
import importlib.metadata, json, sys, warnings
import blackbox
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = blackbox.load(sys.argv[1])
model.self_test()
manifest = model.manifest
print(json.dumps({
    "warned": [w.message.distribution for w in caught if issubclass(w.category, blackbox.VersionMismatchWarning)],
    "installed": {d: importlib.metadata.version(d) for d in manifest.requirements},
}))
"""


@pytest.fixture(scope="module")
def isolation_run():
    spec = importlib.util.spec_from_file_location("isolation_run", ROOT / "isolation_env" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fresh_venv(isolation_run, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    isolation_run.build_venv(venv, [str(ROOT)], stamp="pip install <checkout>, unpinned")
    return venv


def test_a_plain_install_of_the_checkout_loads_and_self_tests_both_serializers(
    saved, fresh_venv, isolation_run, tmp_path
):
    isolation_run.check_training_absent(fresh_venv)
    isolation_run.check_verify(saved, fresh_venv)  # blackbox verify there: isolated load + golden sample
    done = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-I", "-c", LOAD, str(saved)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout)
    saved_with = blackbox.inspect(saved)["requirements"]
    differ = sorted(d for d, v in saved_with.items() if outcome["installed"][d] != v)
    assert sorted(outcome["warned"]) == differ, (outcome, saved_with)
    print(f"fresh venv vs saved: {({d: (saved_with[d], outcome['installed'][d]) for d in differ})}", file=sys.stderr)


def test_a_server_venv_built_from_blackbox_requirements_has_exactly_the_saved_versions(
    search, titanic, isolation_run, tmp_path_factory, tmp_path, capsys
):
    """The README's server build: `blackbox requirements model.bbx > requirements.txt`,
    then `python -m venv srv && srv/bin/pip install -r requirements.txt`: no version differs."""
    X_train, *_ = titanic
    out = tmp_path_factory.mktemp("server")
    artifacts = [blackbox.save(search, out / f"{s}.bbx", serializer=s, train_data=X_train) for s in ("dill", "cloudpickle")]
    requirements = out / "requirements.txt"
    assert blackbox_cli(["requirements", str(artifacts[0])]) == 0
    requirements.write_text(capsys.readouterr().out)
    srv = out / "srv"
    isolation_run.build_venv(srv, ["-r", str(requirements)], stamp="blackbox requirements")
    for artifact in artifacts:  # the cloudpickle artifact pins a subset of the dill one's
        done = subprocess.run(
            [str(srv / "bin" / "python"), "-I", "-c", LOAD, str(artifact)],
            capture_output=True, text=True, cwd=tmp_path, timeout=300,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outcome = json.loads(done.stdout)
        assert outcome["warned"] == [], outcome
        assert outcome["installed"] == blackbox.inspect(artifact)["requirements"]
