"""What a user reads in the first hour: inspect's CV scorer, serve --help's routes, and the advice for an
``import`` inside a feature function that the isolated check refuses."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

import blackbox
from blackbox.cli import cli, main


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": rng.normal(size=60), "y": rng.normal(size=60)})


@pytest.mark.parametrize(("kind", "shown"), [("classifier", "cv default (accuracy)"), ("regressor", "cv default (r2)")])
def test_inspect_names_the_default_scorer(kind, shown, frame, tmp_path, capsys):
    if kind == "classifier":
        search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=3).fit(frame, (frame["x"] > 0).astype(int))
    else:
        search = GridSearchCV(LinearRegression(), {"fit_intercept": [True, False]}, cv=3).fit(frame, frame["x"] * 2)
    path = blackbox.save(search, tmp_path / "m.bbx", train_data=frame, name="m", version="1")
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"  {shown}  " in text and "cv None" not in text


def test_serve_help_lists_every_route_family():
    text = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200).output
    for route in ("/predict", "/feedback", "/drift", "/metrics", "/models", "/v2"):
        assert route in text, route


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A user's feature module whose function imports another of their modules when it runs."""
    (tmp_path / "late_feats.py").write_text(textwrap.dedent("""
        def twice(X):
            import late_helpers  # an import inside the function: only runs at predict time
            return late_helpers.double(X)
    """))
    (tmp_path / "late_helpers.py").write_text("def double(X):\n    return X * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("late_feats", "late_helpers"):
        sys.modules.pop(name, None)


def test_an_import_inside_a_feature_function_is_refused_with_advice(user_code, frame, tmp_path):
    import late_feats

    pipeline = make_pipeline(FunctionTransformer(late_feats.twice), LogisticRegression()).fit(frame, frame["x"] > 0)
    with pytest.raises(blackbox.SelfContainmentError) as refused:
        blackbox.save(pipeline, tmp_path / "late.bbx", train_data=frame, name="late", version="1", verify=True)
    message = refused.value.message
    assert "'late_helpers'" in message and "Traceback" not in message
    assert "module level" in message and "by_reference" in message and "install" in message
    assert refused.value.references == ["late_helpers"]
    assert not (tmp_path / "late.bbx").exists()


def test_a_child_that_dies_importing_a_module_gets_the_same_advice(frame, tmp_path):
    """A traceback on the child's stderr (no outcome line) that is a missing module: advice, not the raw tail."""
    path = blackbox.save(LogisticRegression().fit(frame, frame["x"] > 0), tmp_path / "m.bbx", train_data=frame,
                         name="m", version="1")
    dying = tmp_path / "python"
    dying.write_text("#!/bin/sh\ncat >/dev/null\necho 'Traceback (most recent call last):' >&2\n"
                     "echo \"ModuleNotFoundError: No module named 'late_helpers.sub'\" >&2\nexit 1\n")
    dying.chmod(0o755)
    outcome = blackbox.verify(path, python=dying)
    assert outcome.status == blackbox.SelfContainmentError.code and outcome.exit_code == 11
    assert "'late_helpers.sub'" in outcome.message and "by_reference=['late_helpers']" in outcome.message
    assert "Traceback" not in outcome.message and outcome.details == ["late_helpers.sub"]
