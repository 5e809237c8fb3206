"""blackbox rebuild: re-run the recorded training from the artifact and compare."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import blackbox
from blackbox.artifact import unpack
from blackbox.cli import main as blackbox_cli
from blackbox.rebuild import RebuildError, rebuild

from _helpers import resign

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A small model trained by the real command on a CSV snapshot of our own."""
    from training.__main__ import train
    from training.data import load_titanic

    root = tmp_path_factory.mktemp("rebuild")
    data = root / "titanic.csv"
    features, label = load_titanic()  # the built-in data: the suite needs nothing from outside the checkout
    features.assign(survived=label).to_csv(data, index=False)
    assert ",22.0," in data.read_text()  # test_a_changed_data_file_is_refused_by_fingerprint edits one such value
    out = root / "model.bbx"
    train(out, data=data, small_grid=True, seed=7, verify=False, quiet=True)
    return out, data


def test_the_recipe_is_recorded(trained):
    path, data = trained
    recipe = blackbox.inspect(path)["recipe"]
    assert recipe["entry_point"] == "training" and recipe["seed"] == 7
    assert recipe["args"] == ["--seed", "7", "--serializer", "dill", "--name", "titanic", "--small-grid"]
    assert recipe["data"]["path"] == str(data.resolve())
    assert {"training/__main__.py", "training/features.py", "training/transforms.py"} <= set(recipe["source"])
    assert recipe["cv"]["folds"] == 5 and recipe["cv"]["scoring"] == "roc_auc"


def test_a_fresh_rebuild_reproduces_the_cv_score_exactly(trained, tmp_path, capsys):
    path, _ = trained
    modules_before = {name: getattr(m, "__file__", None) for name, m in sys.modules.items() if name.startswith("training")}
    out = tmp_path / "again.bbx"
    assert blackbox_cli(["rebuild", str(path), "-o", str(out)]) == 0
    assert "REPRODUCED" in capsys.readouterr().out
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["status"] == "reproduced"
    assert report["cv"]["old"]["mean"] == report["cv"]["new"]["mean"]  # exactly, not approximately
    assert report["golden"] == {"rows": 5, "changed": 0}
    assert all(v["old"] == v["new"] for v in report["versions"].values())
    assert blackbox.inspect(out)["version"] == f"{blackbox.inspect(path)['version']}+rebuild"
    # the recorded source ran in a subprocess; nothing of it was imported here
    after = {name: getattr(m, "__file__", None) for name, m in sys.modules.items() if name.startswith("training")}
    assert after == modules_before


def test_a_changed_data_file_is_refused_by_fingerprint(trained, tmp_path):
    path, data = trained
    changed = tmp_path / "changed.csv"
    changed.write_text(data.read_text().replace(",22.0,", ",23.0,", 1))
    with pytest.raises(RebuildError, match="another snapshot"):
        rebuild(path, data=changed, out=tmp_path / "x.bbx")
    assert not (tmp_path / "x.bbx").exists()
    report = rebuild(path, data=changed, out=tmp_path / "y.bbx", allow_data_change=True)
    assert report.data["changed"] and "different data snapshot" in " ".join(report.notes)
    assert report.status == "drifted"


def test_a_changed_recorded_source_reports_the_score_difference(trained, tmp_path):
    path, _ = trained
    manifest = unpack(path.read_bytes()).manifest()
    features = manifest["recipe"]["source"]["training/features.py"]
    assert "threshold=18" in features
    manifest["recipe"]["source"]["training/features.py"] = features.replace("threshold=18", "threshold=60")
    edited = tmp_path / "edited.bbx"
    edited.write_bytes(resign(path.read_bytes(), manifest))
    report = rebuild(edited, out=tmp_path / "edited-rebuilt.bbx")
    assert report.status == "drifted" and report.exit_code == 12
    assert report.cv["difference"] != 0
    rebuilt_source = blackbox.inspect(tmp_path / "edited-rebuilt.bbx")["recipe"]["source"]["training/features.py"]
    assert "threshold=60" in rebuilt_source  # the recorded (edited) code is what ran


def test_rebuild_refuses_an_untrusted_or_recipe_less_artifact(trained, saved, tmp_path):
    path, _ = trained
    with pytest.raises(blackbox.AuthenticityError):
        rebuild(path, trusted_keys=[], out=tmp_path / "z.bbx")
    with pytest.raises(RebuildError, match="no recipe"):
        rebuild(saved, out=tmp_path / "z.bbx")


def _user_project(root: Path) -> Path:
    """A user's working directory with a key pair in keys/, as `blackbox keygen --out keys` leaves it."""
    from blackbox.signing import keygen

    root.mkdir(parents=True, exist_ok=True)
    keygen(root / "keys", "blackbox")
    return root


def test_rebuild_signs_with_a_relative_key_from_the_environment(trained, tmp_path, monkeypatch, capsys):
    """The README's `blackbox rebuild artifacts/titanic.bbx`, run where keys/ is a relative path."""
    from blackbox.signing import SIGNING_KEY_ENV, key_id, load_private_key

    path, _ = trained  # signed by the suite's key, which BLACKBOX_TRUSTED_KEYS trusts
    project = _user_project(tmp_path / "project")
    monkeypatch.chdir(project)
    monkeypatch.setenv(SIGNING_KEY_ENV, "keys/blackbox.key")  # relative to the user's directory
    assert blackbox_cli(["rebuild", str(path), "-o", "rebuilt/model.bbx"]) == 0, capsys.readouterr()
    out = project / "rebuilt" / "model.bbx"
    signature = blackbox.inspect(out, trusted_keys="keys/blackbox.pub")["signature"]
    assert signature["valid"] and signature["key_id"] == key_id(load_private_key(project / "keys/blackbox.key").public_key())
    report = json.loads((project / "rebuilt" / "model.bbx.report.json").read_text())
    assert report["status"] == "reproduced" and report["signed_by"] == signature["key_id"]


def test_rebuild_takes_the_signing_key_as_an_option(trained, tmp_path, monkeypatch, capsys):
    from blackbox.signing import SIGNING_KEY_ENV

    path, _ = trained
    project = _user_project(tmp_path / "project")
    monkeypatch.chdir(project)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    assert blackbox_cli(["rebuild", str(path), "-o", "again.bbx", "--signing-key", "keys/blackbox.key"]) == 0, capsys.readouterr()
    assert blackbox.inspect(project / "again.bbx", trusted_keys=project / "keys/blackbox.pub")["signature"]["valid"]


def test_rebuild_without_a_signing_key_is_refused_before_training_with_a_report(trained, tmp_path, monkeypatch, capsys):
    from blackbox.signing import SIGNING_KEY_ENV

    path, _ = trained
    monkeypatch.delenv(SIGNING_KEY_ENV)
    out = tmp_path / "unsigned.bbx"
    assert blackbox_cli(["rebuild", str(path), "-o", str(out)]) == RebuildError.exit_code
    err = capsys.readouterr().err
    assert "--signing-key" in err and "BLACKBOX_SIGNING_KEY" in err
    assert not out.exists()  # no unsigned artifact left behind
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["status"] == "failed" and report["exit_code"] == 13 and report["rebuilt"] is None
    assert "signing_key=KEY" in report["error"]["message"]  # the library's terms; the CLI adds --signing-key on stderr


def test_a_failing_recorded_training_leaves_no_artifact_and_writes_the_report(trained, tmp_path):
    path, _ = trained
    manifest = unpack(path.read_bytes()).manifest()
    main = manifest["recipe"]["source"]["training/__main__.py"]
    # the recorded training saves, then fails: the file it wrote must not be published
    manifest["recipe"]["source"]["training/__main__.py"] = main.replace(
        "    save_seconds = time.perf_counter() - started\n",
        "    save_seconds = time.perf_counter() - started\n    raise SystemExit('boom after save')\n", 1,
    )
    assert "boom after save" in manifest["recipe"]["source"]["training/__main__.py"]
    broken = tmp_path / "broken.bbx"
    broken.write_bytes(resign(path.read_bytes(), manifest))
    out = tmp_path / "out" / "broken-rebuilt.bbx"
    with pytest.raises(RebuildError, match="boom after save"):
        rebuild(broken, out=out)
    assert not out.exists() and [p.name for p in out.parent.iterdir()] == ["broken-rebuilt.bbx.report.json"]
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["status"] == "failed" and "boom after save" in report["error"]["message"]
