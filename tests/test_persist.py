"""save / load / inspect on the real Titanic pipeline, with both serializers."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import GridSearchCV

import blackbox
from blackbox import artifact
from blackbox.artifact import unpack

from _helpers import PYTHON, child_env, marker_payload, resign


def records_of(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


# -- the manifest ------------------------------------------------------------------


def test_manifest_describes_the_model(saved, search, titanic):
    X_train, *_ = titanic
    m = blackbox.inspect(saved)
    payload = unpack(saved.read_bytes()).payload

    assert m["format_version"] == artifact.FORMAT_VERSION
    assert (m["name"], m["version"]) == ("titanic", "1.0.0")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["created_at"])
    assert m["serializer"]["name"] in ("dill", "cloudpickle")
    assert m["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert m["payload"] == {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    for dist in ("scikit-learn", "sklearn-pandas", "numpy", "cloudpickle", m["serializer"]["name"]):
        assert dist in m["requirements"], dist
    assert "training" not in json.dumps(m["requirements"])
    assert m["by_value"] == ["training"]
    assert not any(i.startswith("training") for i in m["imports"])
    assert set(m["git"]) == {"commit", "branch", "dirty"}
    # data: fingerprint of the training inputs, not the data itself
    assert m["data"]["rows"] == len(X_train) and m["data"]["source"] == "test-split"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", m["data"]["fingerprint"])
    assert blackbox.Schema.from_dict(m["schema"]).columns == list(X_train.columns)
    assert m["features"]["input"] == list(X_train.columns)
    assert any("is_adult" in name for name in m["features"]["transformed"])
    assert m["output"] == {"kind": "classification", "classes": [0, 1], "probabilities": True}
    # scores: the search's and the ones passed in
    s = m["metrics"]["search"]
    assert s["best_score"] == pytest.approx(search.best_score_)
    assert len(s["candidates"]) == len(search.cv_results_["params"])
    assert all({"params", "mean", "std", "rank"} <= set(c) for c in s["candidates"])
    assert m["metrics"]["holdout"] == {"accuracy": 0.8}
    # the code that made the model
    assert "def is_bigger_than" in m["source"]["training.features"]["text"]
    assert "class FamilySize" in m["source"]["training.transforms"]["text"]
    assert m["metadata"] == {"seed": 0}
    # golden sample: records and what the model said for them
    golden = m["golden"]
    assert len(golden["records"]) == 5 == len(golden["predictions"]) == len(golden["probabilities"])


def test_fingerprint_changes_with_the_data(titanic):
    from blackbox.manifest import data_summary

    X_train, *_ = titanic
    changed = X_train.copy()
    changed.loc[changed.index[0], "age"] = 99.0
    assert data_summary(X_train, None)["fingerprint"] == data_summary(X_train.copy(), None)["fingerprint"]
    assert data_summary(X_train, None)["fingerprint"] != data_summary(changed, None)["fingerprint"]


def test_inspect_reads_no_payload(saved, tmp_path):
    """inspect works on a file whose payload is garbage: it never touches the payload."""
    broken = tmp_path / "broken.bbx"
    broken.write_bytes(resign(saved.read_bytes(), payload=b"\x00garbage"))
    assert blackbox.inspect(broken)["name"] == "titanic"


# -- loading -----------------------------------------------------------------------


def test_load_predicts_what_the_estimator_predicts(saved, search, titanic):
    X_train, *_ = titanic
    rows = X_train.head(100)
    model = blackbox.load(saved)
    expected = search.best_estimator_.predict(rows).tolist()
    assert model.predict_batch(records_of(rows)) == expected
    assert model.predict_batch(rows) == expected
    assert model.predict(records_of(rows)[0]) == expected[0]
    proba = search.best_estimator_.predict_proba(rows)
    np.testing.assert_array_equal(model.predict_proba(records_of(rows)), proba)
    assert model.predict_proba(records_of(rows)[0]) == proba[0].tolist()
    assert model.classes == [0, 1]
    model.self_test()


def test_serialize_deserialize_round_trip(saved):
    model = blackbox.load(saved)
    data = model.serialize()
    assert data == saved.read_bytes()
    again = blackbox.persist.loads(data)
    assert again.sha256 == model.sha256 and type(again) is blackbox.SklearnModel


CHILD = r"""
import json, sys
from blackbox.containment._probe import _Blocker
sys.meta_path.insert(0, _Blocker(frozenset({"training"})))
try:
    import training
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("training is importable")
import blackbox
model = blackbox.load(sys.argv[1])
records = json.load(open(sys.argv[2]))
print(json.dumps({
    "predictions": model.predict_batch(records),
    "proba": model.predict_proba(records),
    "training_loaded": any(m.split(".")[0] == "training" for m in sys.modules),
    "cwd_on_path": "" in sys.path,
}))
"""


def test_loads_where_training_cannot_be_imported(saved, search, titanic, tmp_path):
    """The by-value proof: a fresh ``python -I``, an empty directory, training unimportable."""
    X_train, *_ = titanic
    rows = X_train.head(200)
    (tmp_path / "records.json").write_text(json.dumps(records_of(rows)))
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [PYTHON, "-I", "-c", CHILD, str(saved), str(tmp_path / "records.json")],
        cwd=empty, capture_output=True, text=True, env=child_env(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["training_loaded"] is False and out["cwd_on_path"] is False
    assert out["predictions"] == search.best_estimator_.predict(rows).tolist()
    np.testing.assert_array_equal(out["proba"], search.best_estimator_.predict_proba(rows))


# -- refusals at save time ---------------------------------------------------------------


def test_unfitted_estimators_are_refused(search, titanic, tmp_path):
    from training.pipeline import build_pipeline

    X_train, *_ = titanic
    with pytest.raises(blackbox.UsageError, match="not fitted.*call fit"):
        blackbox.save(build_pipeline(X_train.columns, 0), tmp_path / "a.bbx", train_data=X_train)
    no_refit = GridSearchCV(search.estimator, {"model__C": [1.0]}, refit=False, cv=2)
    no_refit.fit(X_train, titanic[2])
    with pytest.raises(blackbox.UsageError, match="refit=False"):
        blackbox.save(no_refit, tmp_path / "b.bbx", train_data=X_train)
    with pytest.raises(blackbox.UsageError, match="train_data"):
        blackbox.save(search, tmp_path / "c.bbx")
    with pytest.raises(blackbox.UsageError, match="serializer"):
        blackbox.save(search, tmp_path / "d.bbx", train_data=X_train, serializer="pickle")
    assert not list(tmp_path.iterdir())


def test_refuses_a_reference_it_cannot_embed(search, titanic, tmp_path, monkeypatch):
    """A function in a sourceless (compiled) module the server won't have: refused, with its path."""
    import compileall
    import importlib

    from sklearn.base import clone
    from sklearn.preprocessing import FunctionTransformer

    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "sourceless_feats.py").write_text(
        "import numpy as np\ndef is_bigger_than(x, threshold):\n    return np.asarray(x, dtype=float) > threshold\n"
    )
    compileall.compile_file(pkg / "sourceless_feats.py", legacy=True, quiet=1)
    (pkg / "sourceless_feats.py").unlink()  # only the .pyc is left: no source to embed
    monkeypatch.syspath_prepend(str(pkg))
    module = importlib.import_module("sourceless_feats")
    assert module.__file__.endswith(".pyc")

    X_train, _, y_train, _ = titanic
    pipeline = clone(search.best_estimator_)
    mapper = pipeline.steps[0][1]
    mapper.features = [*mapper.features, (["age"], FunctionTransformer(module.is_bigger_than, kw_args={"threshold": 60}))]
    pipeline.fit(X_train, y_train)
    index = len(mapper.features) - 1
    with pytest.raises(blackbox.SelfContainmentError) as caught:
        blackbox.save(pipeline, tmp_path / "m.bbx", train_data=X_train)
    message = str(caught.value)
    assert f"steps[0] mapper -> features[{index}] -> FunctionTransformer.func -> sourceless_feats.is_bigger_than" in message
    assert "by_reference" in message
    assert not (tmp_path / "m.bbx").exists()


def test_by_reference_keeps_the_module_out_of_the_payload(saved, search, titanic, tmp_path):
    X_train, *_ = titanic
    path = blackbox.save(search, tmp_path / "byref.bbx", train_data=X_train, by_reference=["training"])
    m = blackbox.inspect(path)
    assert m["by_value"] == [] and "training" not in m["source"]
    assert any(i.startswith("training.") for i in m["imports"])


# -- refusals at load time, before unpickling ----------------------------------------------


def rewrite(path: Path, out: Path, *, payload: bytes | None = None, edit=None) -> Path:
    """A copy of an artifact with its manifest edited or payload replaced, validly signed again."""
    manifest = unpack(path.read_bytes()).manifest()
    if edit:
        edit(manifest)
    out.write_bytes(resign(path.read_bytes(), manifest, payload))
    return out


def test_tampered_payload_is_refused_before_unpickling(saved, tmp_path):
    marker = tmp_path / "MARKER"
    bad = rewrite(saved, tmp_path / "swapped.bbx", payload=marker_payload(marker))
    with pytest.raises(blackbox.IntegrityError, match="was truncated or padded|sha256"):
        blackbox.load(bad)
    data = bytearray(saved.read_bytes())
    data[-100] ^= 0x01
    flipped = tmp_path / "flipped.bbx"
    flipped.write_bytes(bytes(data))
    with pytest.raises(blackbox.IntegrityError, match="sha256 does not match"):
        blackbox.load(flipped)
    assert not marker.exists()


def test_truncated_and_non_artifacts_are_refused(saved, tmp_path):
    data = saved.read_bytes()
    half = tmp_path / "half.bbx"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises((blackbox.IntegrityError, blackbox.ArtifactError), match="truncated"):
        blackbox.load(half)
    head_only = tmp_path / "head.bbx"
    head_only.write_bytes(data[:40])
    with pytest.raises(blackbox.ArtifactError, match="truncated"):
        blackbox.load(head_only)
    empty = tmp_path / "empty.bbx"
    empty.write_bytes(b"")
    with pytest.raises(blackbox.ArtifactError, match="not a blackbox artifact"):
        blackbox.load(empty)
    with pytest.raises(blackbox.ArtifactError, match="is a directory"):
        blackbox.load(tmp_path)
    marker = tmp_path / "MARKER"
    plain = tmp_path / "model.bbx"
    plain.write_bytes(marker_payload(marker))
    with pytest.raises(blackbox.ArtifactError, match="plain pickles are never loaded"):
        blackbox.load(plain)
    assert not marker.exists()


def test_other_python_is_refused_before_unpickling(saved, tmp_path):
    marker = tmp_path / "MARKER"
    payload = marker_payload(marker)

    def edit(m):
        m["python"]["version"] = "3.10.14"
        m["payload"] = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}

    bad = rewrite(saved, tmp_path / "py310.bbx", payload=payload, edit=edit)
    with pytest.raises(blackbox.EnvironmentMismatchError, match=r"Python 3\.10\.14 saved it"):
        blackbox.load(bad)
    assert not marker.exists()


def test_package_versions_warn_or_refuse_by_policy(saved, tmp_path):
    def bump(version_of):
        def edit(m):
            m["requirements"]["scikit-learn"] = version_of(m["requirements"]["scikit-learn"])
        return edit

    minor = rewrite(saved, tmp_path / "minor.bbx", edit=bump(lambda v: v.split(".")[0] + ".0.0"))
    with pytest.warns(blackbox.VersionMismatchWarning, match="scikit-learn"):
        blackbox.load(minor)
    with pytest.raises(blackbox.EnvironmentMismatchError, match="scikit-learn"):
        blackbox.load(minor, strict=True)
    major = rewrite(saved, tmp_path / "major.bbx", edit=bump(lambda v: "0.20.0"))
    with pytest.raises(blackbox.EnvironmentMismatchError, match="scikit-learn 0.20.0 saved it"):
        blackbox.load(major)

    def two_majors(m):
        m["requirements"]["numpy"] = "1.0.0"
        m["requirements"]["scikit-learn"] = "0.20.0"

    both = rewrite(saved, tmp_path / "majors.bbx", edit=two_majors)
    with pytest.raises(blackbox.EnvironmentMismatchError) as caught:
        blackbox.load(both)
    assert len(caught.value.mismatches) == 2  # every mismatch is listed, not just the first


# -- the golden sample ----------------------------------------------------------------


def test_self_test_catches_a_changed_model(saved):
    model = blackbox.load(saved)
    model.self_test()
    final = model.estimator.steps[-1][1]
    if hasattr(final, "coef_"):
        final.coef_ = -final.coef_
    else:
        final.estimators_ = final.estimators_[:1]
    with pytest.raises(blackbox.SelfTestError, match="golden-sample") as caught:
        model.self_test()
    assert caught.value.differences


# -- atomic writes ----------------------------------------------------------------------


def test_a_failed_save_leaves_nothing_half_written(saved, search, titanic, tmp_path, monkeypatch):
    X_train, *_ = titanic
    target = tmp_path / "model.bbx"
    target.write_bytes(saved.read_bytes())
    before = target.read_bytes()

    def crash(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="No space"):
        blackbox.save(search, target, train_data=X_train)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.bbx"]


def test_predictions_with_probabilities_in_one_pass_equal_the_two_calls(saved, titanic):
    model = blackbox.load(saved)
    frame, _ = model.prepare(titanic[1].dropna(subset=["embarked", "fare"]).head(50))
    predictions, probabilities = model.predict_and_proba_frame(frame)
    assert predictions == model.predict_frame(frame)
    assert probabilities == model.predict_proba_frame(frame)  # bit for bit: the transform is shared, not changed
