"""Plans saved by an earlier blackbox keep working, or give way to the estimator; they never stop a load.

A plan rides pickled in the payload (an attribute of the estimator), so an
artifact saved by an earlier version unpickles its nodes with their attributes
as they were then, into this version's classes. Before: an artifact saved
before the encoders shared their reading of the categories raised
``AttributeError: 'OneHot' object has no attribute 'features'`` in its
load-time self-test, and every such artifact failed to load, the fast path
turned off or not.
"""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import blackbox
from blackbox.fastpath import transformers

CATEGORIES = ["sex", "embarked", "pclass"]


def _old_one_hot(encoder, dtype) -> transformers.OneHot:
    """A OneHot node as the version before f7794e1 pickled it: one lookup per feature holding output columns."""
    node = transformers.OneHot.__new__(transformers.OneHot)
    lookups, offset = [], 0
    for categories in encoder.categories_:
        values = list(categories)
        nan_at = None
        if values and isinstance(values[-1], float) and values[-1] != values[-1]:
            nan_at, values = offset + len(values) - 1, values[:-1]
        kind = "str" if categories.dtype == object and all(type(v) is str for v in values) else None
        lookups.append(({v: offset + i for i, v in enumerate(values)}, nan_at, kind))
        offset += len(categories)
    node.__dict__.update(step=encoder, path="old", dtype=dtype, width=len(lookups), out_dtype=np.dtype(encoder.dtype),
                         lookups=lookups, n_out=offset)
    return pickle.loads(pickle.dumps(node))


@pytest.mark.parametrize("rows", [1, 65, 300])
def test_a_one_hot_node_pickled_by_the_version_before_encodes_as_its_encoder(titanic, rows):
    X_train, X_test, _, _ = titanic
    train = X_train[CATEGORIES].astype(object).copy()
    train.loc[train.index[::30], "embarked"] = np.nan  # a NaN category too
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(train)
    test = X_test[CATEGORIES].astype(object).copy()
    test.iloc[0, 0], test.iloc[1, 1], test.iloc[2, 1] = "unknown", np.nan, "X"
    values = np.resize(test.to_numpy(), (rows, len(CATEGORIES)))
    node = _old_one_hot(encoder, values.dtype)
    assert np.array_equal(node.transform(values), encoder.transform(pd.DataFrame(values, columns=CATEGORIES)))


@pytest.fixture
def saved(titanic, tmp_path):
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "fare"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORIES)])
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=1000))]).fit(X_train, y_train)
    records = json.loads(X_test.dropna(subset=["embarked"]).head(40).to_json(orient="records"))
    return blackbox.save(pipeline, tmp_path / "m.bbx", train_data=X_train, name="m", version="1"), pipeline, records


def _fast_path_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "fast path is not used" in r.getMessage()]


def test_a_plan_that_fails_its_self_test_gives_way_to_the_estimator_with_one_warning(saved, monkeypatch, caplog):
    """The fault is injected (the encoder node raises, as a node pickled by another version would); the estimator is
    sound. ``serve``, ``score`` and ``verify`` self-test every model they load; before, this refused the model."""
    path, pipeline, records = saved

    def stale(self, X):
        raise AttributeError("'OneHot' object has no attribute 'features'")

    model = blackbox.load(path, allow_unsigned=True)
    monkeypatch.setattr(transformers.OneHot, "transform", stale)  # after the load, which now checks the plan too
    with caplog.at_level(logging.WARNING, logger="blackbox"):
        model.self_test()
    assert model.plan is None and blackbox.Model.named("sklearn")(model.estimator, model.manifest).plan is None
    (warned,) = _fast_path_warnings(caplog)
    assert "AttributeError" in warned and "Re-save" in warned, warned
    assert model.predict_batch(records) == pipeline.predict(model.prepare(records)[0]).tolist()


def test_a_plain_load_drops_a_plan_that_fails_the_golden_sample(saved, monkeypatch, caplog):
    """``blackbox.load`` runs the whole self-test only where the environment differs; the plan's half costs about a
    millisecond, so it always runs. Before: the plan was kept, and every predict raised the AttributeError."""
    path, pipeline, records = saved

    def stale(self, X):
        raise AttributeError("'OneHot' object has no attribute 'features'")

    monkeypatch.setattr(transformers.OneHot, "transform", stale)
    with caplog.at_level(logging.WARNING, logger="blackbox"):
        model = blackbox.load(path, allow_unsigned=True)
    assert model.plan is None
    assert len(_fast_path_warnings(caplog)) == 1
    assert model.predict_batch(records) == pipeline.predict(model.prepare(records)[0]).tolist()


def test_a_model_whose_estimator_fails_its_self_test_is_still_refused(saved, monkeypatch):
    path, _, _ = saved
    model = blackbox.load(path, allow_unsigned=True)
    final = model.estimator.steps[-1][1]
    monkeypatch.setattr(final, "predict_proba", lambda X: np.full((len(X), 2), 0.5))
    with pytest.raises(blackbox.SelfTestError, match="through the model"):
        model.self_test()


def test_a_plan_of_another_fast_path_version_is_not_used(saved, monkeypatch, caplog):
    path, pipeline, records = saved
    with caplog.at_level(logging.WARNING, logger="blackbox"):
        model = blackbox.load(path, allow_unsigned=True)
    assert model.plan is not None and not _fast_path_warnings(caplog)
    monkeypatch.setattr(model.plan, "version", 7)  # as a plan saved by a later fast path would say
    with caplog.at_level(logging.WARNING, logger="blackbox"):
        rebuilt = blackbox.Model.named("sklearn")(model.estimator, model.manifest)
    assert rebuilt.plan is None
    (warned,) = _fast_path_warnings(caplog)
    assert "fast-path version 7" in warned and "reads version 1" in warned, warned
    assert rebuilt.predict_batch(records) == pipeline.predict(rebuilt.prepare(records)[0]).tolist()
