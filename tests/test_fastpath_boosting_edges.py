"""Edges of the compiled HistGradientBoosting node: ties, thresholds, tree shapes, losses, refusals, a fresh process.

Each test pins a place where a walk or a label rule written anew could part from scikit-learn's: the raw
scores are compared bit for bit, labels exactly, at the batch sizes either side of the walk's switch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn._loss.loss import HalfTweedieLoss
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder, StandardScaler

from blackbox.fastpath import Defer
from blackbox.fastpath.base import Unsupported
from blackbox.fastpath.boosting import Boosting

from _helpers import fast_plan

SIZES = (1, 31, 32, 33, 55, 64, 65, 4000)


def _final(record) -> dict:
    [final] = [s for s in record["steps"] if s["path"] == "steps[model]"]
    return final


def _assert_node_exact(model, X: np.ndarray) -> None:
    """The node's raw scores bit for bit, labels exactly, outputs within 1e-9, for every size in SIZES."""
    node = Boosting(model, "model")
    for size in SIZES:
        for start in (0, 7):
            rows = X[start:start + size]
            assert np.array_equal(node._raw(rows), model._raw_predict(rows)), size
            if node.classifier:
                labels, proba = node.both(rows)
                assert np.array_equal(labels, model.predict(rows)), size
                assert np.abs(proba - model.predict_proba(rows)).max() <= 1e-9, size
            else:
                assert np.abs(node.predict(rows) - model.predict(rows)).max() <= 1e-9, size


@pytest.fixture(scope="module")
def classification():
    X, y = make_classification(800, 6, n_informative=4, random_state=0)
    return np.round(X, 1), y  # rounded: many values sit exactly on a threshold


@pytest.mark.parametrize("labels", [["no", "yes"], [1, -1], ["b", "a", "c"]], ids=["str", "minus_one", "three"])
def test_tied_raw_scores_take_scikit_learns_class(labels):
    """Single-leaf trees over balanced classes: raw exactly 0 (binary) or equal per class; '> 0' and argmax's first."""
    X = np.ones((42, 3))
    y = np.array(labels * (42 // len(labels)))
    model = HistGradientBoostingClassifier(max_iter=3, min_samples_leaf=42).fit(X, y)
    raw = model._raw_predict(X[:1])
    assert (raw == 0).all() if len(labels) == 2 else (raw == raw[0, 0]).all()
    assert all(p.nodes["is_leaf"].all() for it in model._predictors for p in it)  # trees that are a root leaf
    _assert_node_exact(model, np.repeat(X, 100, axis=0))
    assert Boosting(model, "model").predict(X[:1])[0] == model.classes_[0]


def _on_thresholds(model, X: np.ndarray, seed: int) -> np.ndarray:
    """Rows of ``X`` with features set to split thresholds, their neighbours, -0.0, NaN and infinities."""
    rng = np.random.default_rng(seed)
    splits = np.concatenate([p.nodes[p.nodes["is_leaf"] == 0] for it in model._predictors for p in it])
    rows = X[rng.integers(0, len(X), 4100)].copy()
    for row in rows:
        for feature, threshold in splits[["feature_idx", "num_threshold"]][rng.integers(0, len(splits), 3)]:
            row[feature] = rng.choice([threshold, np.nextafter(threshold, np.inf), np.nextafter(threshold, -np.inf),
                                       -0.0, np.nan, np.inf, -np.inf, 1e300])
    return rows


@pytest.mark.parametrize("nan_in_training", [False, True])
def test_thresholds_nan_and_float32_follow_the_c_walk(classification, nan_in_training):
    """x == threshold goes left; NaN goes where missing_go_to_left says, also when training saw none."""
    X, y = classification
    train = X.copy()
    if nan_in_training:
        train[np.random.default_rng(1).random(X.shape) < 0.05] = np.nan
    for model in (HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(train, y),
                  HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(train, np.arange(len(y)) % 3),
                  HistGradientBoostingRegressor(max_iter=30, random_state=0).fit(train, X[:, 0] + y)):
        rows = _on_thresholds(model, X, seed=2)
        _assert_node_exact(model, rows)
        with np.errstate(over="ignore"):
            _assert_node_exact(model, rows.astype(np.float32))


@pytest.mark.parametrize("settings", [
    {"max_iter": 1}, {"max_leaf_nodes": 2, "max_iter": 20}, {"max_depth": 1, "max_iter": 20},
    {"learning_rate": 1e-12, "max_iter": 3}, {"class_weight": "balanced", "max_iter": 20},
    {"early_stopping": True, "validation_fraction": 0.3, "n_iter_no_change": 2, "max_iter": 200},
    {"monotonic_cst": [1, -1, 0, 0, 0, 0], "max_iter": 20}, {"interaction_cst": [[0, 1], [2, 3, 4, 5]], "max_iter": 20},
], ids=lambda s: "-".join(s)[:40])
def test_settings_that_shape_the_trees(classification, settings):
    X, y = classification
    _assert_node_exact(HistGradientBoostingClassifier(random_state=0, **settings).fit(X, np.where(y, "yes", "no")), X)


def test_warm_start_more_iterations(classification):
    X, y = classification
    model = HistGradientBoostingClassifier(max_iter=5, warm_start=True, random_state=0).fit(X, y)
    model.set_params(max_iter=12).fit(X, y)
    assert model.n_iter_ == len(model._predictors) == 12
    _assert_node_exact(model, X)


@pytest.mark.parametrize("loss", ["gamma", "quantile"])
def test_gamma_and_quantile_regressors_are_compiled(loss):
    X, y = load_diabetes(return_X_y=True)
    model = HistGradientBoostingRegressor(loss=loss, quantile=0.8 if loss == "quantile" else None, max_iter=30).fit(X, y)
    _assert_node_exact(model, np.repeat(X, 10, axis=0))


def test_a_loss_object_not_listed_is_refused():
    X, y = load_diabetes(return_X_y=True)
    model = HistGradientBoostingRegressor(loss=HalfTweedieLoss(power=1.5), max_iter=5).fit(X, y)
    with pytest.raises(Unsupported, match="HalfTweedieLoss"):
        Boosting(model, "model")


def _frame(classification) -> tuple[pd.DataFrame, pd.Series]:
    X, y = classification
    frame = pd.DataFrame(X[:, :4], columns=["a", "b", "c", "d"])
    frame["kind"] = np.where(X[:, 4] > 0, "up", "down")
    return frame, pd.Series(y)


@pytest.mark.parametrize("how", ["mask", "names", "from_dtype"])
def test_categorical_features_every_way_run_the_reference(classification, how):
    frame, y = _frame(classification)
    ordinal = ColumnTransformer([("num", "passthrough", ["a", "b", "c", "d"]), ("cat", OrdinalEncoder(), ["kind"])])
    steps: list = [("ct", ordinal)]
    if how == "mask":
        model = HistGradientBoostingClassifier(max_iter=10, categorical_features=[False] * 4 + [True])
    else:
        ordinal.set_output(transform="pandas")
        if how == "from_dtype":
            steps.append(("cat", FunctionTransformer(lambda f: f.astype({"cat__kind": "category"}))))
        model = HistGradientBoostingClassifier(max_iter=10, categorical_features=["cat__kind"] if how == "names" else "from_dtype")
    pipeline = Pipeline([*steps, ("model", model)]).fit(frame, y)
    assert model._preprocessor is not None
    plan, record, _ = fast_plan(pipeline, frame)
    assert _final(record)["mode"] == "reference" and "categorical" in _final(record)["reason"], record["steps"]
    if plan is not None:
        rows = frame.iloc[:65]
        assert np.array_equal(plan.predict(rows), pipeline.predict(rows))


def test_a_dataframe_reaching_the_node_defers(classification):
    X, y = classification
    model = HistGradientBoostingClassifier(max_iter=5).fit(pd.DataFrame(X), y)
    with pytest.raises(Defer):
        Boosting(model, "model").both(pd.DataFrame(X[:3]))


def test_an_artifact_loaded_in_a_fresh_process_answers_the_same(classification, tmp_path):
    import blackbox

    frame, y = _frame(classification)
    frame.loc[::7, "a"] = np.nan
    ct = ColumnTransformer([("num", StandardScaler(), ["a", "b", "c", "d"]), ("cat", OrdinalEncoder(), ["kind"])])
    labels = y.map({0: "no", 1: "yes"}).where(frame["b"] < 1, "maybe")
    pipeline = Pipeline([("ct", ct), ("model", HistGradientBoostingClassifier(max_iter=25, random_state=0))]).fit(frame, labels)
    path = blackbox.save(pipeline, tmp_path / "hgb.bbx", train_data=frame, name="hgb", version="1.0.0")
    assert _final(blackbox.inspect(path)["fast_path"])["mode"] == "compiled"
    records = json.loads(frame.iloc[:70].to_json(orient="records"))
    code = (
        "import json, sys, blackbox, numpy as np\n"
        f"model = blackbox.load({str(path)!r})\n"
        "records = json.loads(sys.stdin.read())\n"
        "out = [model.plan.both(model.prepare(records[:n])[0]) for n in (1, 33, 70)]\n"  # the plan itself: a Defer would fail here
        "print(json.dumps([[labels.tolist(), proba.tolist()] for labels, proba in out]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(records), capture_output=True, text=True,
                          timeout=120, check=True)
    expected = pd.DataFrame(records)
    for (labels_got, proba_got), n in zip(json.loads(done.stdout), (1, 33, 70)):
        assert labels_got == pipeline.predict(expected[:n]).tolist()
        assert np.abs(np.array(proba_got) - pipeline.predict_proba(expected[:n])).max() <= 1e-9
