"""Shared fixtures: keys, the real Titanic data, a fitted search, and the artifacts and apps built from it.

Every fixture that more than one test module uses lives here; plain helper functions live in
tests/_helpers.py. Test modules never import each other.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

import blackbox

from _helpers import user_module

SERIALIZERS = ["dill", "cloudpickle"]


@pytest.fixture(scope="session", autouse=True)
def keys(tmp_path_factory) -> dict[str, Path]:
    """A test key pair: every save signs with it and every load trusts it (as a deployment would)."""
    from blackbox.signing import SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, keygen

    private, public = keygen(tmp_path_factory.mktemp("keys"), "test")
    patch = pytest.MonkeyPatch()
    patch.setenv(SIGNING_KEY_ENV, str(private))
    patch.setenv(TRUSTED_KEYS_ENV, str(public))
    yield {"private": private, "public": public}
    patch.undo()


@pytest.fixture(scope="session")
def titanic():
    from training.data import load_titanic

    X, y = load_titanic()
    return train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)


@pytest.fixture(scope="session")
def search(titanic):
    """A fitted GridSearchCV over the training package's pipeline (two families, small grid)."""
    from training.pipeline import search

    X_train, _, y_train, _ = titanic
    return search(X_train, y_train, seed=0, n_jobs=1, cv_folds=3, small=True)


@pytest.fixture(scope="session", params=SERIALIZERS)
def saved(request, search, titanic, tmp_path_factory) -> Path:
    """An artifact of the fitted search, saved with each serializer."""
    X_train, X_test, _, _ = titanic
    path = tmp_path_factory.mktemp("artifacts") / f"titanic-{request.param}.bbx"
    return blackbox.save(
        search,
        path,
        serializer=request.param,
        train_data=X_train,
        name="titanic",
        version="1.0.0",
        metrics={"holdout": {"accuracy": 0.8}},
        data_source="test-split",
        metadata={"seed": 0},
    )


# -- the model store's artifact (test_store*.py, test_followups_*.py) -----------------------------


@pytest.fixture(scope="module")
def artifact(search, titanic, tmp_path_factory) -> Path:
    """One signed artifact, titanic 1.0.0; other versions are re-signed copies with an edited manifest (_helpers.variant)."""
    X_train, *_ = titanic
    path = tmp_path_factory.mktemp("store-artifacts") / "titanic-1.0.0.bbx"
    return blackbox.save(search, path, train_data=X_train, name="titanic", version="1.0.0",
                         metrics={"holdout": {"accuracy": 0.8}})


# -- the server (test_serving.py and every module that serves the same artifact) -----------------


@pytest.fixture(scope="session")
def serving_keys(tmp_path_factory) -> tuple[Path, Path]:
    """A signing key pair for the served artifact: (private, public)."""
    from blackbox import signing

    return signing.keygen(tmp_path_factory.mktemp("serving-keys"), "test")


@pytest.fixture(scope="session")
def served_artifact(search, titanic, serving_keys, tmp_path_factory) -> Path:
    """One signed artifact of the fitted search, for every serving test."""
    X_train = titanic[0]
    path = tmp_path_factory.mktemp("serving") / "titanic.bbx"
    return blackbox.save(search, path, train_data=X_train, name="titanic", version="1.0.0", signing_key=serving_keys[0])


@pytest.fixture(scope="session")
def served_model(served_artifact, serving_keys) -> blackbox.Model:
    """The served artifact loaded in-process: the reference for every prediction."""
    return blackbox.load(served_artifact, trusted_keys=[serving_keys[1]])


@pytest.fixture(scope="session")
def passengers(titanic) -> list[dict]:
    """Held-out Titanic records as JSON gives them (missing values as null)."""
    X_test = titanic[1]
    return json.loads(X_test.head(40).to_json(orient="records"))


@pytest.fixture(scope="session")
def base_config(served_artifact, serving_keys) -> dict:
    return {"ARTIFACT": str(served_artifact), "LOAD_OPTIONS": {"trusted_keys": [str(serving_keys[1])]}}


@pytest.fixture(scope="session")
def app(base_config):
    """The app serving ``served_artifact`` (modules with an app of their own override it)."""
    from serving import create_app

    return create_app(base_config)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def close_recorders(monkeypatch):
    """Stop every app's prediction-log writer thread when its test ends (not at interpreter exit, after pytest
    closed stderr). Modules that log predictions use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    from serving.recorder import Recorder

    recorders: list[Recorder] = []
    start = Recorder.__init__

    def tracked(self, *args, **kwargs):
        start(self, *args, **kwargs)
        recorders.append(self)

    monkeypatch.setattr(Recorder, "__init__", tracked)
    yield
    for recorder in recorders:
        recorder.close(timeout=0)


# -- batch scoring (test_scoring.py, test_dask.py) -------------------------------------------------


@pytest.fixture(scope="module")
def scoring_artifact(search, titanic, tmp_path_factory) -> Path:
    X_train = titanic[0]
    path = tmp_path_factory.mktemp("scoring") / "titanic.bbx"
    return blackbox.save(search, path, train_data=X_train, name="titanic", version="2.0.0")


@pytest.fixture(scope="module")
def scoring_model(scoring_artifact):
    return blackbox.load(scoring_artifact)


@pytest.fixture(scope="module")
def scoring_rows(titanic, scoring_model) -> pd.DataFrame:
    """Held-out rows the schema accepts, with a passenger id."""
    X_test = titanic[1]
    required = [field.name for field in scoring_model.schema.fields if not field.nullable]
    frame = X_test.dropna(subset=required).reset_index(drop=True)
    return frame.assign(passenger=[f"P{i:05d}" for i in range(len(frame))])


POISON_SOURCE = '''
import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin


class Poison(BaseEstimator, TransformerMixin):
    """Passes its input through, except that it raises on the value ``poison`` or from ``broken`` up in column a."""

    def __init__(self, poison=13.0, broken=100.0):
        self.poison = poison
        self.broken = broken

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        a = np.asarray(X["a"], dtype=float)
        if (a == self.poison).any():
            raise ValueError(f"poisoned value {self.poison} in column a")
        if (a >= self.broken).any():
            raise ValueError(f"column a at or above {self.broken}")
        return X.assign(a=np.where(a == 7.0, np.inf, a))  # a=7 becomes infinite: the classifier refuses it


class Echo(RegressorMixin, BaseEstimator):
    """A regressor answering column a, except NaN for a=8."""

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        a = np.asarray(X["a"], dtype=float)
        return np.where(a == 8.0, np.nan, a)
'''


@pytest.fixture(scope="module")
def poison_artifacts(tmp_path_factory) -> dict[str, Path]:
    """Signed models with their own (by-value) code: ``classifier`` raises on a=13 (one row) or a>=100 (a broken
    model's every row) and makes a=7 infinite; ``regressor`` (same transformer) answers NaN for a=8."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    saved = {}
    with user_module(tmp_path_factory.mktemp("poisonsrc"), "bbx_poison_feats", POISON_SOURCE) as module:
        rng = np.random.default_rng(0)
        X = pd.DataFrame({"a": rng.normal(size=80), "b": rng.normal(size=80)})
        for kind, final, y in (("classifier", LogisticRegression(), (X.a + X.b > 0).astype(int)), ("regressor", module.Echo(), X.a)):
            pipeline = Pipeline([("poison", module.Poison()), ("final", final)]).fit(X, y)
            saved[kind] = blackbox.save(pipeline, tmp_path_factory.mktemp("poison") / f"{kind}.bbx", train_data=X, name=kind, version="1")
            assert blackbox.inspect(saved[kind])["by_value"] == ["bbx_poison_feats"]
    return saved


@pytest.fixture(scope="module")
def poison_artifact(poison_artifacts) -> Path:
    return poison_artifacts["classifier"]
