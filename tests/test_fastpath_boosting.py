"""The fast path compiles HistGradientBoosting classifiers and regressors: the estimator's own answers, and its refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from blackbox.fastpath import Defer

from _helpers import fast_plan, json_records

NUMBERS = ["age", "fare", "sibsp", "parch"]
CATEGORIES = ["sex", "embarked", "pclass"]
SIZES = (1, 13, 32, 33, 64, 65, 4000)


def _modes(record) -> dict[str, str]:
    return {step["path"]: step["mode"] for step in record["steps"]}


def _assert_same(plan, pipeline, frame: pd.DataFrame) -> None:
    """The plan on ``frame`` (one batch, then each size in SIZES cycled over it) against the pipeline itself."""
    classifier = hasattr(pipeline, "predict_proba")
    for size in (len(frame), *SIZES):
        for start in range(0, len(frame), size)[:3]:
            rows = frame.iloc[start:start + size].reset_index(drop=True)
            if classifier:
                labels, proba = plan.both(rows)
                assert np.array_equal(labels, pipeline.predict(rows))
                assert np.abs(proba - pipeline.predict_proba(rows)).max() <= 1e-9
            else:
                assert np.abs(plan.predict(rows) - pipeline.predict(rows)).max() <= 1e-9


def _odd(frame: pd.DataFrame, columns: list[str], n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows drawn from ``frame`` with NaN, huge, tiny and infinite values put into ``columns``."""
    rng = np.random.default_rng(seed)
    rows = frame.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    odd = np.array([np.nan, 1e300, -1e300, 1e-300, np.inf, -np.inf, 0.0])
    for column in columns:
        hit = rng.random(n) < 0.3
        values = rows[column].to_numpy(dtype=float, copy=True)
        values[hit] = rng.choice(odd, hit.sum())
        rows[column] = values
    return rows


def _titanic_ct() -> ColumnTransformer:
    return ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]), NUMBERS),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
         CATEGORIES),
    ])


@pytest.fixture(scope="module", params=[False, True], ids=["no_early_stopping", "early_stopping"])
def titanic_hgb(request, titanic):
    X_train, _, y_train, _ = titanic
    model = HistGradientBoostingClassifier(max_iter=60, early_stopping=request.param, random_state=0)
    pipeline = Pipeline([("ct", _titanic_ct()), ("model", model)]).fit(X_train, y_train)
    assert (model.n_iter_ < 60) == request.param
    return pipeline


def test_titanic_classifier_is_compiled_and_exact(titanic_hgb, titanic):
    X_train, X_test, _, _ = titanic
    plan, record, _ = fast_plan(titanic_hgb, X_train)
    assert plan is not None, record
    assert set(_modes(record).values()) == {"compiled"}, record["steps"]
    _assert_same(plan, titanic_hgb, X_test.dropna(subset=["embarked"]))


def test_odd_values_give_the_reference_answer_or_defer_where_it_refuses(titanic_hgb, titanic):
    X_train, X_test, _, _ = titanic
    plan, record, _ = fast_plan(titanic_hgb, X_train)
    assert plan is not None, record
    frame = _odd(X_test.dropna(subset=["embarked"]), ["age", "fare"], 200)
    finite = frame[np.isfinite(frame[["age", "fare"]].fillna(0)).all(axis=1)].reset_index(drop=True)
    _assert_same(plan, titanic_hgb, finite)
    infinite = frame.iloc[[int(np.flatnonzero(~np.isfinite(frame[["age", "fare"]].fillna(0)).all(axis=1))[0])]]
    with pytest.raises(ValueError, match="infinity"):  # the scaler refuses it
        titanic_hgb.predict(infinite)
    with pytest.raises(Defer):
        plan.both(infinite)


def test_nan_and_infinity_reach_the_boosting_and_follow_its_routes(titanic):
    """No imputer: the model learnt where missing ages go; inf, -inf and huge values are compared as scikit-learn does."""
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([
        ("num", "passthrough", NUMBERS),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
         CATEGORIES),
    ])
    pipeline = Pipeline([("ct", ct), ("model", HistGradientBoostingClassifier(max_iter=80, random_state=0))]).fit(X_train, y_train)
    model = pipeline[-1]
    ages = np.concatenate([p.nodes[(p.nodes["is_leaf"] == 0) & (p.nodes["feature_idx"] == 0)] for [p] in model._predictors])
    assert set(ages["missing_go_to_left"]) == {0, 1}  # missing ages were sent both ways
    plan, record, _ = fast_plan(pipeline, X_train)
    assert plan is not None, record
    assert _modes(record)["steps[model]"] == "compiled"
    frame = _odd(X_test.dropna(subset=["embarked"]), ["age", "fare", "sibsp"], 4000)
    assert np.isinf(frame["fare"]).any() and frame["age"].isna().any()
    _assert_same(plan, pipeline, frame)
    X = pipeline[:-1].transform(frame)  # the node itself on arrays, of every size
    for size in SIZES:
        rows = X[:size]
        assert np.array_equal(plan.final._raw(rows), model._raw_predict(rows))  # the same sums, bit for bit
        labels, proba = plan.final.both(rows)
        assert np.array_equal(labels, model.predict(rows))
        assert np.abs(proba - model.predict_proba(rows)).max() <= 1e-9
        with np.errstate(over="ignore"):
            narrow = rows.astype(np.float32)  # 1e300 becomes inf
        assert np.array_equal(plan.final.predict(narrow), model.predict(narrow))


@pytest.fixture(scope="module")
def wine():
    data = load_wine(as_frame=True)
    X, y = data.data, data.target.map(dict(enumerate(data.target_names)))
    return X.iloc[::2].reset_index(drop=True), X.iloc[1::2].reset_index(drop=True), y.iloc[::2].reset_index(drop=True)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_multiclass_wine_softmax_and_labels(wine, early_stopping):
    X_train, X_test, y_train = wine
    ct = ColumnTransformer([("num", StandardScaler(), list(X_train.columns))])
    model = HistGradientBoostingClassifier(max_iter=40, early_stopping=early_stopping, validation_fraction=0.2,
                                           n_iter_no_change=3, random_state=0)
    pipeline = Pipeline([("ct", ct), ("model", model)]).fit(X_train, y_train)
    assert model.n_trees_per_iteration_ == 3 and model.classes_.dtype == object
    plan, record, _ = fast_plan(pipeline, X_train)
    assert plan is not None, record
    assert _modes(record)["steps[model]"] == "compiled", record["steps"]
    _assert_same(plan, pipeline, X_test)
    X = pipeline[:-1].transform(X_test)
    for size in (1, 32, 33, len(X)):
        assert np.array_equal(plan.final._raw(X[:size]), pipeline[-1]._raw_predict(X[:size]))
    _assert_same(plan, pipeline, _odd(X_test, ["alcohol", "proline"], 4000).dropna().pipe(
        lambda f: f[np.isfinite(f).all(axis=1)]).reset_index(drop=True))


@pytest.mark.parametrize("loss", ["squared_error", "poisson", "absolute_error"])
def test_regressor_diabetes(loss):
    data = load_diabetes(as_frame=True, scaled=False)
    X, y = data.data, data.target
    X_train, X_test, y_train = X.iloc[::2].reset_index(drop=True), X.iloc[1::2].reset_index(drop=True), y.iloc[::2]
    ct = ColumnTransformer([("num", StandardScaler(), list(X.columns))])
    pipeline = Pipeline([("ct", ct), ("model", HistGradientBoostingRegressor(loss=loss, max_iter=50, random_state=0))])
    pipeline.fit(X_train, y_train)
    plan, record, _ = fast_plan(pipeline, X_train)
    assert plan is not None, record
    assert _modes(record)["steps[model]"] == "compiled", record["steps"]
    _assert_same(plan, pipeline, X_test)
    model = pipeline[-1]
    X = _odd(pd.DataFrame(pipeline[:-1].transform(X_test)), [0, 2, 5], 4000).to_numpy()
    for size in SIZES:
        assert np.abs(plan.final.predict(X[:size]) - model.predict(X[:size])).max() <= 1e-9


def test_categorical_splits_run_the_reference_way_and_say_why(titanic):
    X_train, _, y_train, _ = titanic
    ct = ColumnTransformer([
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OrdinalEncoder()), CATEGORIES),
        ("num", "passthrough", NUMBERS),
    ])
    model = HistGradientBoostingClassifier(max_iter=20, categorical_features=[0, 1, 2], random_state=0)
    pipeline = Pipeline([("ct", ct), ("model", model)]).fit(X_train, y_train)
    assert any(p.nodes["is_categorical"].any() for [p] in model._predictors)
    _, record, _ = fast_plan(pipeline, X_train)
    [final] = [s for s in record["steps"] if s["path"] == "steps[model]"]
    assert final["mode"] == "reference"
    assert "categorical" in final["reason"], final


def test_saved_and_loaded_it_serves_through_the_compiled_boosting(titanic_hgb, titanic, tmp_path):
    import blackbox

    X_train, X_test, _, _ = titanic
    path = blackbox.save(titanic_hgb, tmp_path / "hgb.bbx", train_data=X_train, name="hgb", version="1.0.0")
    manifest = blackbox.inspect(path)
    assert manifest["fast_path"]["enabled"] is True, manifest["fast_path"]
    [final] = [s for s in manifest["fast_path"]["steps"] if s["path"] == "steps[model]"]
    assert final["mode"] == "compiled" and final["step"].endswith("HistGradientBoostingClassifier")
    model = blackbox.load(path)
    assert model.plan is not None
    records = json_records(X_test.dropna(subset=["embarked"]).head(80))
    model.plan.both(model.prepare(records)[0])  # answered by the plan, not deferred
    assert model.predict_batch(records) == titanic_hgb.predict(model.prepare(records)[0]).tolist()
    proba = np.asarray(model.predict_proba(records))
    assert np.abs(proba - titanic_hgb.predict_proba(model.prepare(records)[0])).max() <= 1e-9
