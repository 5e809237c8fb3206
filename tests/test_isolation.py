"""blackbox verify and isolation_env: the normal artifact passes, a by-reference one fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import blackbox
from blackbox.artifact import unpack
from blackbox.cli import main as blackbox_cli

from _helpers import child_env, resign

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def by_reference(search, titanic, tmp_path_factory) -> Path:
    """An artifact deliberately saved with the training package kept by reference."""
    X_train, *_ = titanic
    path = tmp_path_factory.mktemp("byref") / "byref.bbx"
    return blackbox.save(search, path, train_data=X_train, by_reference=["training"])


@pytest.fixture(scope="module")
def mispredicting(saved, tmp_path_factory) -> Path:
    """A valid artifact whose golden sample says something the model does not predict."""
    manifest = unpack(saved.read_bytes()).manifest()
    manifest["golden"]["predictions"] = [1 - p for p in manifest["golden"]["predictions"]]
    path = tmp_path_factory.mktemp("mispredict") / "wrong-golden.bbx"
    path.write_bytes(resign(saved.read_bytes(), manifest))
    return path


def test_the_normal_artifact_is_self_contained(saved, capsys):
    outcome = blackbox.verify(saved)
    assert outcome.ok and outcome.status == "ok", outcome.message
    assert "training" in outcome.blocked
    assert blackbox_cli(["verify", str(saved)]) == 0
    assert "self-contained" in capsys.readouterr().out


def test_a_by_reference_artifact_fails_naming_the_module(by_reference, capsys):
    outcome = blackbox.verify(by_reference, block=["training"])  # the caller names its training package
    assert not outcome.ok and outcome.status == "not_self_contained"
    assert "'training'" in outcome.message
    assert any(ref.startswith("training.") for ref in outcome.details)
    assert blackbox_cli(["verify", str(by_reference), "--block", "training", "--json"]) == blackbox.SelfContainmentError.exit_code == 11
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "not_self_contained"
    with pytest.raises(blackbox.SelfContainmentError, match="training"):
        outcome.raise_for_status()


def test_an_artifact_that_predicts_differently_fails_with_the_rows(mispredicting, capsys):
    outcome = blackbox.verify(mispredicting)
    assert outcome.status == "self_test_failed" and outcome.exit_code == 7
    assert len(outcome.details) == 5 and {"row", "expected", "got"} <= set(outcome.details[0])
    assert blackbox_cli(["verify", str(mispredicting)]) == 7
    assert "golden-sample" in capsys.readouterr().out


def test_an_unreadable_artifact_exits_3(tmp_path, capsys):
    junk = tmp_path / "junk.bbx"
    junk.write_bytes(b"\x00" * 100)
    assert blackbox_cli(["verify", str(junk)]) == 3
    assert "not a blackbox artifact" in capsys.readouterr().err


def test_save_with_verify_publishes_only_what_passes(search, titanic, tmp_path):
    X_train, *_ = titanic
    good = blackbox.save(search, tmp_path / "good.bbx", train_data=X_train, verify=True)
    assert blackbox.inspect(good)["by_value"] == ["training"]
    with pytest.raises(blackbox.SelfContainmentError, match="training"):
        blackbox.save(search, tmp_path / "bad.bbx", train_data=X_train, by_reference=["training"], verify=True,
                      block=["training"])
    assert not (tmp_path / "bad.bbx").exists()


@pytest.mark.slow
def test_isolation_env_passes_the_normal_artifact_and_fails_the_by_reference_one(saved, by_reference):
    """The separate venv (no training package) accepts the real artifact and rejects the other."""
    cmd = [sys.executable, str(ROOT / "isolation_env" / "run.py")]
    good = subprocess.run([*cmd, str(saved)], capture_output=True, text=True, env=child_env(), timeout=900)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "`import training` fails" in good.stdout and "is self-contained" in good.stdout
    bad = subprocess.run([*cmd, str(by_reference), "--no-serve"], capture_output=True, text=True,
                         env=child_env(), timeout=900)
    assert bad.returncode == 11, bad.stdout + bad.stderr
    assert "needs module(s) 'training'" in bad.stderr and "blackbox-titanic-training" in bad.stderr
