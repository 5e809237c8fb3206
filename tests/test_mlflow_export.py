"""blackbox export --mlflow: an MLflow pyfunc model directory that loads the signed artifact through blackbox.load."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

import blackbox
from blackbox import signing
from blackbox.cli import main as blackbox_cli

from _helpers import PYTHON, child_env

EXPORT_CHILD = r"""
import json, sys
from blackbox.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "mlflow": sorted(m for m in sys.modules if m.split(".")[0] == "mlflow")}))
"""


def export(saved: Path, out: Path, *extra: str) -> Path:
    assert blackbox_cli(["export", "--mlflow", str(out), str(saved), *extra]) == 0
    return out


def test_export_writes_plain_files_without_importing_mlflow(saved, tmp_path):
    out = tmp_path / "model"
    done = subprocess.run([PYTHON, "-c", EXPORT_CHILD, "export", "--mlflow", str(out), str(saved)],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "mlflow": []}
    meta = yaml.safe_load((out / "MLmodel").read_text())
    flavor = meta["flavors"]["python_function"]
    assert flavor["loader_module"] == "blackbox.mlflow_export" and flavor["data"] == "blackbox"
    assert (out / flavor["data"] / "model.bbx").read_bytes() == saved.read_bytes()  # the signed bytes, untouched
    manifest = blackbox.inspect(saved)
    assert meta["metadata"]["blackbox"]["name"] == "titanic" and meta["metadata"]["blackbox"]["version"] == "1.0.0"
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert f"scikit-learn=={manifest['requirements']['scikit-learn']}" in requirements
    assert any(line.startswith("blackbox") for line in requirements)
    assert not (out / "blackbox" / "trusted_keys").exists()  # keys are the deployment's, unless asked
    assert blackbox_cli(["export", "--mlflow", str(out), str(saved)]) == 2  # never overwritten


@pytest.mark.slow
def test_mlflow_pyfunc_load_model_predicts_the_golden_sample(saved, tmp_path):
    import mlflow.pyfunc

    out = export(saved, tmp_path / "model")
    golden = blackbox.inspect(saved)["golden"]
    pyfunc = mlflow.pyfunc.load_model(str(out))
    got = pyfunc.predict(pd.DataFrame(golden["records"]))
    expected = blackbox.load(saved).predict_batch(golden["records"])
    assert list(got) == expected == golden["predictions"]


@pytest.mark.slow
def test_the_exported_model_is_verified_when_mlflow_loads_it(saved, keys, tmp_path, monkeypatch):
    import mlflow.pyfunc

    out = export(saved, tmp_path / "model")
    artifact = out / "blackbox" / "model.bbx"
    # trust comes from the serving environment: another key there refuses it
    _, other = signing.keygen(tmp_path / "other", "other")
    monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, str(other))
    with pytest.raises(blackbox.AuthenticityError, match="not among the trusted keys"):
        mlflow.pyfunc.load_model(str(out))
    monkeypatch.delenv(signing.TRUSTED_KEYS_ENV)
    with pytest.raises(blackbox.AuthenticityError, match=signing.TRUSTED_KEYS_ENV):
        mlflow.pyfunc.load_model(str(out))
    # keys copied in at export (--embed-trusted-keys) serve where the environment names none
    embedded = export(saved, tmp_path / "embedded", "--trusted-keys", str(keys["public"]), "--embed-trusted-keys")
    assert mlflow.pyfunc.load_model(str(embedded)).predict(pd.DataFrame(blackbox.inspect(saved, trusted_keys=keys["public"])["golden"]["records"])) is not None
    # an embedded key the serving environment revokes is refused (BLACKBOX_REVOKED_KEYS applies to every keyring)
    monkeypatch.setenv(signing.REVOKED_KEYS_ENV, blackbox.inspect(saved)["signature"]["key_id"])
    with pytest.raises(blackbox.AuthenticityError, match="revoked"):
        mlflow.pyfunc.load_model(str(embedded))
    monkeypatch.delenv(signing.REVOKED_KEYS_ENV)
    # a byte changed in the registry's copy is refused before anything is unpickled
    monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, str(keys["public"]))
    data = bytearray(artifact.read_bytes())
    data[-20] ^= 0x01
    artifact.write_bytes(bytes(data))
    with pytest.raises(blackbox.IntegrityError):
        mlflow.pyfunc.load_model(str(out))


def test_export_refuses_what_would_not_load(saved, tmp_path):
    _, other = signing.keygen(tmp_path / "other", "other")
    out = tmp_path / "model"
    assert blackbox_cli(["export", "--mlflow", str(out), str(saved), "--trusted-keys", str(other)]) == 4
    assert not out.exists()
