"""The fast path: compiled plans give the pipeline's own answers, and say what they did not compile."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    PowerTransformer,
    RobustScaler,
    StandardScaler,
)
from sklearn.tree import DecisionTreeClassifier

from blackbox.fastpath import Defer, build_plan
from blackbox.model import SklearnModel
from blackbox.schema import infer_schema

from _helpers import fast_plan, json_records

NUMBERS = ["age", "fare", "sibsp", "parch"]
CATEGORIES = ["sex", "embarked", "pclass"]


def _assert_exact(plan, pipeline, schema, frame: pd.DataFrame) -> None:
    """Rows the plan never saw (the holdout), one batch and one row at a time."""
    prepared, _ = schema.to_frame(json_records(frame.dropna(subset=["embarked"])))  # training saw no missing port
    labels, proba = plan.both(prepared)
    assert np.array_equal(labels, pipeline.predict(prepared))
    assert np.abs(proba - pipeline.predict_proba(prepared)).max() <= 1e-9
    for i in range(0, len(prepared), 37):
        row = prepared.iloc[[i]].reset_index(drop=True)
        assert np.array_equal(plan.predict(row), pipeline.predict(row))
        assert np.abs(plan.predict_proba(row) - pipeline.predict_proba(row)).max() <= 1e-9


def _modes(record) -> dict[str, str]:
    return {step["path"]: step["mode"] for step in record["steps"]}


@pytest.fixture(scope="module", params=["lr", "rf"])
def training_pipeline(request, titanic):
    from training.pipeline import build_pipeline

    X_train, _, y_train, _ = titanic
    pipeline = build_pipeline(X_train.columns, seed=0)
    if request.param == "rf":
        pipeline.set_params(model=RandomForestClassifier(n_estimators=30, random_state=0))
    return pipeline.fit(X_train, y_train)


def test_training_pipelines_compile_every_library_step_and_call_the_users(training_pipeline, titanic):
    X_train, X_test, _, _ = titanic
    plan, record, schema = fast_plan(training_pipeline, X_train)
    assert plan is not None, record
    modes = _modes(record)
    assert modes["steps[mapper]"] == "compiled"
    assert modes["steps[model]"] == "compiled"
    called = {p for p, m in modes.items() if m == "called"}
    assert called == {"steps[mapper].features[3]:family_size.familysize", "steps[mapper].features[7]:title.titleextractor"}
    assert "reference" not in modes.values()
    assert record["verified_rows"]["accepted"] > len(X_train)  # training rows and edge rows
    _assert_exact(plan, training_pipeline, schema, X_test)


def test_edge_rows_missing_unseen_and_out_of_range(training_pipeline, titanic):
    X_train, X_test, _, _ = titanic
    plan, _, schema = fast_plan(training_pipeline, X_train)
    base = json_records(X_test.dropna().head(2))
    odd = [{**r, "age": None, "fare": None} for r in base] + [
        {**r, "sex": "unknown", "embarked": "X", "name": "No Title Here", "pclass": 7, "fare": 1e9, "age": -40.0} for r in base]
    frame, _ = schema.to_frame(odd)
    labels, proba = plan.both(frame)
    assert np.array_equal(labels, training_pipeline.predict(frame))
    assert np.abs(proba - training_pipeline.predict_proba(frame)).max() <= 1e-9


def test_a_value_the_model_refuses_defers_to_the_reference(titanic):
    X_train, X_test, y_train, _ = titanic
    pipeline = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), ["fare"])]), LogisticRegression()).fit(X_train[["fare"]].fillna(0), y_train)
    frame = pd.DataFrame({"fare": [1.0, 7.0]})
    plan, record, schema = fast_plan(pipeline, X_train[["fare"]].fillna(0))
    assert plan is not None, record
    with pytest.raises(ValueError, match="infinity"):
        pipeline.predict(pd.DataFrame({"fare": [np.inf]}))
    with pytest.raises(Defer):  # the caller then runs the reference, which raises its own error
        plan.predict(pd.DataFrame({"fare": [np.inf]}))
    assert np.array_equal(plan.predict(frame), pipeline.predict(frame))


def test_column_transformer_pipeline(titanic):
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer(strategy="mean")), ("scale", StandardScaler())]), ["age", "fare"]),
        ("counts", MinMaxScaler(), ["sibsp", "parch"]),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
         CATEGORIES),
    ], remainder="drop")
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=1000))]).fit(X_train, y_train)
    plan, record, schema = fast_plan(pipeline, X_train)
    assert plan is not None, record
    modes = _modes(record)
    assert set(modes.values()) == {"compiled"}, modes
    assert {"steps[ct].num.impute", "steps[ct].counts", "steps[ct].cat.onehotencoder"} <= set(modes)
    _assert_exact(plan, pipeline, schema, X_test)


def test_a_default_one_hot_encoder_in_a_dense_column_transformer_is_compiled(titanic):
    """OneHotEncoder's default is sparse_output=True; a ColumnTransformer whose output is dense turns each part into an array."""
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMBERS),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), CATEGORIES),
        ("sex", OneHotEncoder(handle_unknown="ignore"), ["sex"]),
    ])
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=1000))]).fit(X_train, y_train)
    assert not pipeline.named_steps["ct"].sparse_output_
    plan, record, schema = fast_plan(pipeline, X_train)
    assert plan is not None, record
    modes = _modes(record)
    assert set(modes.values()) == {"compiled"}, record["steps"]
    _assert_exact(plan, pipeline, schema, X_test)


class SparseOut(BaseEstimator, TransformerMixin):
    """A user's step returning a sparse matrix: called as it is, its output made dense by the container as scikit-learn does."""

    def fit(self, X, y=None):
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X):
        from scipy import sparse

        return sparse.csr_matrix(X, dtype=float)


def test_a_sparse_part_of_a_dense_column_transformer_is_made_dense_as_scikit_learn_does(titanic):
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([("num", make_pipeline(SimpleImputer(), SparseOut()), NUMBERS),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["sex", "embarked"])], sparse_threshold=0)
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=1000))]).fit(X_train, y_train)
    plan, record, schema = fast_plan(pipeline, X_train)
    assert plan is not None, record
    modes = _modes(record)
    assert modes["steps[ct]"] == "compiled", record["steps"]
    assert modes["steps[ct].num.sparseout"] == "called"
    assert modes["steps[ct].cat"] == "compiled"
    _assert_exact(plan, pipeline, schema, X_test)


@pytest.mark.parametrize("how", ["sparse column transformer", "sparse encoder before another step"])
def test_a_sparse_matrix_handed_on_runs_the_reference_way_and_says_why(titanic, how):
    X_train, X_test, y_train, _ = titanic
    encoder = OneHotEncoder(handle_unknown="ignore")
    if how == "sparse column transformer":  # the model would get the sparse matrix
        first, refused = ColumnTransformer([("cat", encoder, CATEGORIES)], sparse_threshold=1.0), "steps[ct]"
    else:  # the CT's output is dense, but the user's step after the encoder gets its sparse matrix
        first = ColumnTransformer([("num", SimpleImputer(), NUMBERS),
                                   ("cat", Pipeline([("encode", encoder), ("again", SparseOut())]), CATEGORIES)])
        refused = "steps[ct].cat.encode"
    pipeline = Pipeline([("ct", first), ("model", LogisticRegression(max_iter=1000))]).fit(X_train, y_train)
    plan, record, schema = fast_plan(pipeline, X_train)
    reasons = {step["path"]: step.get("reason") for step in record["steps"]}
    assert "sparse" in reasons[refused], record["steps"]
    if plan is not None:
        _assert_exact(plan, pipeline, schema, X_test)


@pytest.mark.parametrize("scaler", [RobustScaler(), RobustScaler(with_centering=False, quantile_range=(10, 90)),
                                    RobustScaler(with_scaling=False), MaxAbsScaler()], ids=repr)
def test_robust_and_max_abs_scalers_are_compiled(titanic, scaler):
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([("num", make_pipeline(SimpleImputer(), scaler), NUMBERS),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORIES)])
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=1000))]).fit(X_train, y_train)
    plan, record, schema = fast_plan(pipeline, X_train)
    assert plan is not None, record
    assert set(_modes(record).values()) == {"compiled"}, record["steps"]
    _assert_exact(plan, pipeline, schema, X_test)


ORDINAL = ["sex", "embarked", "pclass"]


def _odd_rows(X_test: pd.DataFrame, n: int) -> list[dict]:
    """Unseen strings and numbers, missing values, and rows as they are, cycled to ``n`` rows."""
    base = json_records(X_test.dropna(subset=["embarked"]).head(8))
    odd = [{**base[0], "sex": "unknown"}, {**base[1], "embarked": None}, {**base[2], "pclass": 7},
           {**base[3], "sex": "other", "embarked": "X"}]
    rows = odd + base
    return [rows[i % len(rows)] for i in range(n)]


@pytest.mark.parametrize("rows", [1, 12, 65, 400])
def test_an_ordinal_encoder_before_a_forest_answers_unseen_and_missing_as_the_encoder_does(titanic, rows):
    X_train, X_test, y_train, _ = titanic
    X_train = X_train.copy()
    X_train.loc[X_train.index[::40], "embarked"] = np.nan  # missing in training: NaN is one of its categories
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2)
    ct = ColumnTransformer([("num", SimpleImputer(), NUMBERS), ("cat", encoder, ORDINAL)])
    pipeline = Pipeline([("ct", ct), ("model", RandomForestClassifier(n_estimators=20, random_state=0))]).fit(X_train, y_train)
    embarked = pipeline.named_steps["ct"].named_transformers_["cat"].categories_[1]
    assert embarked[-1] != embarked[-1]
    plan, record, schema = fast_plan(pipeline, X_train)
    assert plan is not None, record
    assert _modes(record)["steps[ct].cat"] == "compiled", record["steps"]
    frame, _ = schema.to_frame(_odd_rows(X_test, rows))
    labels, proba = plan.both(frame)
    assert np.array_equal(labels, pipeline.predict(frame))
    assert np.abs(proba - pipeline.predict_proba(frame)).max() <= 1e-9
    encoded = pipeline.named_steps["ct"].transform(frame)
    assert (encoded == -1).any() and ((encoded == -2).any() or rows < 2)  # the odd rows did reach both codes


@pytest.mark.parametrize("rows", [1, 65])
def test_an_ordinal_encoder_refusing_unknowns_defers_so_the_pipeline_raises_its_own_error(titanic, rows):
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([("cat", OrdinalEncoder(), ["sex", "pclass"])])
    pipeline = Pipeline([("ct", ct), ("model", DecisionTreeClassifier(random_state=0))]).fit(X_train, y_train)
    plan, record, schema = fast_plan(pipeline, X_train)
    assert plan is not None and set(_modes(record).values()) == {"compiled"}, record
    known, _ = schema.to_frame(json_records(X_test.head(rows)))
    assert np.array_equal(plan.predict(known), pipeline.predict(known))
    unseen, _ = schema.to_frame([{**r, "pclass": 7} for r in json_records(X_test.head(rows))])
    with pytest.raises(ValueError, match="unknown categories"):
        pipeline.predict(unseen)
    with pytest.raises(Defer):
        plan.predict(unseen)


def test_an_ordinal_encoder_with_infrequent_categories_runs_the_reference_way_and_says_why(titanic):
    X_train, X_test, y_train, _ = titanic
    encoder = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, max_categories=2)
    pipeline = make_pipeline(ColumnTransformer([("cat", encoder, ORDINAL)]), DecisionTreeClassifier(random_state=0))
    pipeline.fit(X_train, y_train)
    plan, record, schema = fast_plan(pipeline, X_train)
    reasons = {step["path"]: step.get("reason") for step in record["steps"]}
    assert "infrequent" in reasons["steps[columntransformer].cat"], record["steps"]
    _assert_exact(plan, pipeline, schema, X_test)


def test_a_column_transformer_reading_some_of_the_training_columns(tmp_path):
    """The schema holds only the 3 columns the pipeline reads; the plan must pick them by name, not train_data's positions."""
    from sklearn.datasets import load_wine

    import blackbox

    wine = load_wine(as_frame=True)
    X, y = wine.frame.drop(columns="target"), wine.frame["target"]
    used = ["alcohol", "flavanoids", "proline"]  # positions 0, 6, 12 of 13
    ct = ColumnTransformer([("num", StandardScaler(), ["flavanoids", "alcohol"]), ("big", MinMaxScaler(), ["proline"])])
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=2000))]).fit(X, y)
    columns, _ = SklearnModel.input_columns(pipeline, X)
    assert columns == used
    schema = infer_schema(X[columns], limit=SklearnModel.numeric_limit(pipeline))
    plan, record = build_plan(pipeline, X, schema)
    assert plan is not None and record["enabled"], record
    assert set(_modes(record).values()) == {"compiled"}, record
    prepared, _ = schema.to_frame(json_records(X))
    labels, proba = plan.both(prepared)
    assert np.array_equal(labels, pipeline.predict(X))
    assert np.abs(proba - pipeline.predict_proba(X)).max() <= 1e-9
    path = tmp_path / "wine.bbx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blackbox.save(pipeline, path, train_data=X, name="wine", version="1")
    assert blackbox.inspect(path)["fast_path"]["enabled"], blackbox.inspect(path)["fast_path"]


class Clipper(TransformerMixin, BaseEstimator):
    """A user's own transformer: clips each column to what training saw."""

    def fit(self, X, y=None):
        values = np.asarray(X, dtype=float)
        self.low_, self.high_ = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype=float), self.low_, self.high_)


def test_a_user_transformer_class_is_called_as_it_is(titanic):
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([("num", make_pipeline(SimpleImputer(), Clipper(), StandardScaler()), NUMBERS)])
    pipeline = make_pipeline(ct, RandomForestClassifier(n_estimators=20, random_state=0)).fit(X_train, y_train)
    calls = []
    original = Clipper.transform
    Clipper.transform = lambda self, X: calls.append(type(X)) or original(self, X)
    try:
        plan, record, schema = fast_plan(pipeline, X_train)
        assert plan is not None, record
        modes = _modes(record)
        assert modes["steps[columntransformer].num.clipper"] == "called"
        assert modes["steps[columntransformer].num.simpleimputer"] == "compiled"
        assert modes["steps[randomforestclassifier]"] == "compiled"
        calls.clear()
        _assert_exact(plan, pipeline, schema, X_test)
        assert calls and set(calls) == {np.ndarray}  # the imputer's output, as in the pipeline
    finally:
        Clipper.transform = original


def test_an_unsupported_step_falls_back_and_says_why(titanic):
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([
        ("power", make_pipeline(SimpleImputer(), PowerTransformer()), ["age", "fare"]),
        ("flags", SimpleImputer(add_indicator=True), ["age"]),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False, drop="first"), ["sex"]),
    ])
    pipeline = make_pipeline(ct, LogisticRegression(max_iter=1000)).fit(X_train, y_train)
    plan, record, schema = fast_plan(pipeline, X_train)
    assert plan is not None, record
    steps = {s["path"]: s for s in record["steps"]}
    assert steps["steps[columntransformer].power.powertransformer"]["mode"] == "reference"
    assert "no compiler for PowerTransformer" in steps["steps[columntransformer].power.powertransformer"]["reason"]
    assert steps["steps[columntransformer].flags"]["reason"] == "add_indicator=True"
    assert steps["steps[columntransformer].cat"]["reason"] == "drop='first'"
    assert steps["steps[columntransformer].power.simpleimputer"]["mode"] == "compiled"
    _assert_exact(plan, pipeline, schema, X_test)


def test_same_compares_sparse_outputs_exactly_without_a_warning():
    from scipy import sparse

    from blackbox.fastpath.compiler import same

    dense = np.array([[1.0, 0.0, np.nan], [0.0, 2.5, 0.0]])
    a = sparse.csr_matrix(dense)
    changed = dense.copy()
    changed[1, 1] = np.nextafter(2.5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns that == on two sparse matrices is inefficient
        assert same(a, sparse.csr_matrix(dense.copy()))  # NaN equal to NaN, as for arrays
        assert not same(a, sparse.csr_matrix(changed))
        assert not same(a, sparse.csr_matrix(np.nan_to_num(dense)))  # NaN against a number
        assert not same(a, sparse.csr_matrix(dense.astype(np.float32)))
        assert not same(a, sparse.csr_matrix(dense[:, :2]))
        assert not same(a, sparse.csc_matrix(dense))  # another format
        assert not same(a, dense) and not same(dense, a)
        assert same(sparse.csr_matrix(np.eye(3, dtype=int)), sparse.csr_matrix(np.eye(3, dtype=int)))
        assert not same(sparse.csr_matrix(np.eye(3, dtype=int)), sparse.csr_matrix(np.eye(3, dtype=int)[::-1]))


def test_the_shortcuts_of_compiled_steps_give_the_general_answers(titanic):
    """What a one-row call takes a shorter way to: an imputer with nothing to impute, a category's type checked
    value by value, a binary model's probabilities: the step's own answer, in a new array."""
    from scipy.special import expit

    from blackbox.fastpath.estimators import Linear
    from blackbox.fastpath.transformers import Imputer, OneHot, _object_kind, _value_kind

    imputer = SimpleImputer(strategy="median").fit(np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 6.0]]))
    node = Imputer(imputer, "imputer", np.dtype(np.float64))
    for X in (np.array([[1.5, -2.0]]), np.array([[np.nan, 7.0], [0.0, np.nan]]), np.array([[1e300, -0.0]])):
        out = node.transform(X)
        assert compiler_same(out, imputer.transform(X)) and not np.shares_memory(out, X)
    with pytest.raises(Defer):  # scikit-learn refuses infinity
        node.transform(np.array([[1.0, np.inf]]))
    odd = ["a", np.str_("a"), "", 1, 1.5, np.int64(2), np.float32(2.5), True, np.bool_(False), None, np.nan, b"a", object()]
    assert [_value_kind(v) for v in odd] == [_object_kind([v]) for v in odd]
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(np.array([["a"], ["b"]], dtype=object))
    onehot = OneHot(encoder, "onehot", np.dtype(object))
    for value in ("b", "unseen", np.nan):
        row = np.array([[value]], dtype=object)
        assert compiler_same(onehot.transform(row), encoder.transform(row))
    with pytest.raises(Defer):  # a number among string categories: the reference decides
        onehot.transform(np.array([[3]], dtype=object))

    X_train, _, y_train, _ = titanic
    numbers = X_train[["sibsp", "parch"]].to_numpy(dtype=float)
    model = LogisticRegression().fit(numbers, y_train)
    linear = Linear(model, "model")
    for X in (numbers[:1], numbers[:7]):
        proba, scores = linear.predict_proba(X), linear._decision(X)
        assert compiler_same(proba, np.stack([1 - expit(scores), expit(scores)], axis=1))
        assert np.abs(proba - model.predict_proba(X)).max() <= 1e-9


class AsFrame(TransformerMixin, BaseEstimator):
    """A user's step that answers a DataFrame (the mapper stacks it with np.hstack like any other output)."""

    def fit(self, X, y=None):
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X):
        return pd.DataFrame(np.asarray(X, dtype=float) * 2)


def test_a_part_that_answers_a_frame_is_stacked_as_the_mapper_stacks_it(titanic):
    from sklearn_pandas import DataFrameMapper

    X_train, X_test, y_train, _ = titanic
    columns = ["age", "fare", "sibsp"]
    mapper = DataFrameMapper([(["age"], [SimpleImputer(), AsFrame()]), (["fare"], SimpleImputer()), ("sibsp", None)])
    pipeline = make_pipeline(mapper, LogisticRegression()).fit(X_train[columns], y_train)
    plan, record, schema = fast_plan(pipeline, X_train[columns])
    assert plan is not None, record
    assert _modes(record)["steps[dataframemapper]"] == "compiled"
    for rows in (X_test[columns], X_test[columns].iloc[[0]]):
        frame, _ = schema.to_frame(json_records(rows))
        labels, proba = plan.both(frame)
        assert np.array_equal(labels, pipeline.predict(frame)) and np.abs(proba - pipeline.predict_proba(frame)).max() <= 1e-9


def test_not_a_pipeline_has_no_plan(titanic):
    X_train, _, y_train, _ = titanic
    numbers = X_train[["sibsp", "parch"]]
    plan, record, _ = fast_plan(LogisticRegression().fit(numbers, y_train), numbers)
    assert plan is None and record["enabled"] is False and "Pipeline" in record["reason"]


def test_saved_artifact_carries_the_plan_and_serves_through_it(training_pipeline, titanic, tmp_path):
    import blackbox

    X_train, X_test, _, _ = titanic
    path = blackbox.save(training_pipeline, tmp_path / "fast.bbx", train_data=X_train, name="fast", version="1.0.0")
    manifest = blackbox.inspect(path)
    assert manifest["fast_path"]["enabled"] is True
    assert manifest["fast_path"]["speedup"]["ratio"] > 0
    model = blackbox.load(path)
    assert model.plan is not None
    model.self_test()
    records = json_records(X_test.dropna(subset=["embarked"]).head(50))
    fast = model.predict_batch(records), model.predict_proba(records)
    model.plan = None  # the reference path
    slow = model.predict_batch(records), model.predict_proba(records)
    assert fast[0] == slow[0]
    assert np.abs(np.asarray(fast[1]) - np.asarray(slow[1])).max() <= 1e-9


def test_saved_without_the_fast_path_still_loads_and_serves(training_pipeline, titanic, tmp_path):
    import blackbox

    X_train, X_test, _, _ = titanic
    path = blackbox.save(training_pipeline, tmp_path / "slow.bbx", train_data=X_train, fast_path=False)
    assert blackbox.inspect(path)["fast_path"] == {"enabled": False, "reason": "fast_path=False"}
    model = blackbox.load(path)
    assert model.plan is None
    record = json_records(X_test.dropna().head(1))[0]
    assert model.predict(record) == training_pipeline.predict(model.prepare([record])[0])[0]


# ---------------------------------------------------------------- the training package's user steps, made cheap

def _titles_as_before(extractor, X) -> np.ndarray:
    """TitleExtractor.transform as it was (pandas str.extract per column): the oracle of the rewrite."""
    from sklearn.utils.validation import validate_data

    from training.transforms import _TITLE_PATTERN, TITLE_ALIASES

    X = validate_data(extractor, X, reset=False, dtype=None, ensure_all_finite=False)
    keep = set(extractor.keep)
    out = np.empty(X.shape, dtype=object)
    for j in range(X.shape[1]):
        column = X[:, j]
        is_str = np.fromiter((isinstance(v, str) for v in column), dtype=bool, count=len(column))
        titles = pd.Series(np.where(is_str, column, None), dtype="str").str.extract(_TITLE_PATTERN, expand=False).replace(TITLE_ALIASES)
        out[:, j] = np.where(titles.isna(), extractor.missing, np.where(titles.isin(keep), titles, extractor.rare))
    return out


def _family_as_before(family, X) -> np.ndarray:
    from sklearn.utils.validation import validate_data

    X = validate_data(family, X, reset=False, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
    return np.nansum(X, axis=1, keepdims=True) + 1


def test_the_training_transformers_give_their_previous_outputs_on_every_input_form(titanic):
    import random
    import warnings

    from training.transforms import FamilySize, TitleExtractor

    X_train, _, _, _ = titanic
    random.seed(0)
    pieces = [",", ".", " ", "\t", "\n", "\v", "\xa0", "\u2003", "Mr", "Mlle", "Ms", "Mme", "Dr", "é", "Master", "the Countess", ""]
    fuzz = ["".join(random.choice(pieces) for _ in range(random.randint(0, 8))) for _ in range(3000)]
    names = pd.DataFrame({"name": pd.array([*X_train["name"], *fuzz, None], dtype="str")})
    extractor = TitleExtractor().fit(names)
    for X in (names, names.astype(object), names.iloc[[7]], names.iloc[[len(names) - 1]]):
        got, expected = extractor.transform(X), _titles_as_before(extractor, X)
        assert got.dtype == object and got.tolist() == expected.tolist() and {type(v) for v in got.ravel()} == {str}
    values = np.array([[v] for v in fuzz[:300]] + [[None], [np.nan], [3]], dtype=object)
    unnamed = TitleExtractor().fit(values)
    assert unnamed.transform(values).tolist() == _titles_as_before(unnamed, values).tolist()

    relatives = X_train[["sibsp", "parch"]]
    family = FamilySize().fit(relatives)
    odd = pd.DataFrame({"sibsp": [1.5, np.nan, -0.0], "parch": [np.nan, np.nan, -0.0]})
    as_float32 = relatives.astype(np.float32)
    for X in (relatives, relatives.iloc[[3]], odd, as_float32):
        got, expected = family.transform(X), _family_as_before(family, X)
        assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)
    # What scikit-learn refuses or warns about is still refused or warned about, by scikit-learn.
    with pytest.raises(ValueError, match="infinity"):
        family.transform(pd.DataFrame({"sibsp": [np.inf], "parch": [0]}))
    with pytest.raises(ValueError, match="feature names"):
        family.transform(relatives.rename(columns={"parch": "other"}))
    with pytest.warns(UserWarning, match="feature names"):
        family.transform(relatives.to_numpy())
    with pytest.raises(ValueError, match="features"):
        FamilySize().fit(relatives.to_numpy()).transform(np.ones((1, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        family.transform(relatives.iloc[[0]])


# ---------------------------------------------------------------- records to the plan without a DataFrame

def _odd_records(X_test: pd.DataFrame) -> list[dict]:
    """Records a server gets: missing values (null and absent), unseen categories, numbers as text, far-out numbers."""
    base = json_records(X_test.dropna().head(3))
    absent = [{k: v for k, v in r.items() if k not in ("age", "fare")} for r in base]
    return [*base, *absent, *[{**r, "age": None, "fare": None} for r in base],
            *[{**r, "sex": "unknown", "embarked": "X", "name": "No Title Here", "pclass": 7} for r in base],
            *[{**r, "age": "22", "fare": " 7.25", "sibsp": "1", "pclass": "3"} for r in base],
            *[{**r, "age": -40.0, "fare": 1e9, "parch": 30} for r in base]]


def test_checked_records_give_the_frames_answers_without_building_it(training_pipeline, titanic, monkeypatch):
    from blackbox.fastpath.table import Prepared, Table

    X_train, X_test, _, _ = titanic
    plan, _, schema = fast_plan(training_pipeline, X_train)
    records = _odd_records(X_test)
    frame, _ = schema.to_frame(records)
    prepared = Prepared(schema, records)
    pd.testing.assert_frame_equal(prepared.frame(), frame, check_exact=True)
    expected = training_pipeline.predict(frame), training_pipeline.predict_proba(frame)
    for source in (Prepared(schema, records), frame):
        labels, proba = plan.both(source)
        assert np.array_equal(labels, expected[0]) and np.abs(proba - expected[1]).max() <= 1e-9
    for i, record in enumerate(records):  # one record at a time, as Model.predict runs them
        labels, proba = plan.both(Prepared(schema, [record]))
        assert labels[0] == expected[0][i] and np.abs(proba[0] - expected[1][i]).max() <= 1e-9
    # The slices user steps get, and the values compiled steps get, are the frame's, from either source.
    for source in (Prepared(schema, records), frame):
        table = Table(source, schema.columns)
        for positions in ([3, 4], [7], [0, 1, 2, 5, 6], [2], [1], [0]):
            pd.testing.assert_frame_equal(table.frame_of(positions), frame.iloc[:, positions], check_exact=True)
            values = table.values(positions, frame.iloc[:, positions].values.dtype)
            assert compiler_same(values, frame.iloc[:, positions].values) and values.flags.c_contiguous
            assert not any(np.shares_memory(values, frame._get_column_array(p)) for p in positions)
    # No DataFrame of the whole input is built on the way.
    monkeypatch.setattr(Prepared, "frame", lambda self: pytest.fail("built the DataFrame"))
    plan.both(Prepared(schema, records))


def _blocks(frame: pd.DataFrame) -> list[tuple]:
    """How a frame holds its columns, as a user step could see it: each block's type, dtype, columns, shape and layout."""
    return [(type(b).__name__, str(b.dtype), b.mgr_locs.as_array.tolist(), b.values.shape,
             b.values.flags.c_contiguous if isinstance(b.values, np.ndarray) else type(b.values._pa_array).__name__)
            for b in frame._mgr.blocks]


def test_user_steps_get_what_the_frame_holds_down_to_its_blocks(training_pipeline, titanic, monkeypatch):
    """Each column Prepared builds is the one to_frame builds, and each slice a user step gets is ``frame[cols]``.

    The same type, dtype, values and missing markers (an Arrow string column: the
    same Arrow array), the same blocks and layout, the same read-only ``to_numpy``;
    and a step that writes into its slice changes no other step's input.
    """
    from blackbox.fastpath.table import Prepared, Table

    X_train, X_test, _, _ = titanic
    from dataclasses import replace

    _, _, schema = fast_plan(training_pipeline, X_train)
    schema = replace(schema, fields=tuple(replace(f, nullable=True) for f in schema.fields))  # missing strings too
    records = _odd_records(X_test)
    names = schema.columns
    for batch in [records, *([r] for r in records[::4]), [{**records[0], "name": None, "sex": None}], records * 5]:
        frame, _ = schema.to_frame(batch)
        prepared = Prepared(schema, batch)
        for position, name in enumerate(names):
            got, expected = prepared.array(position), frame._get_column_array(position)
            assert type(got) is type(expected) and got.dtype == expected.dtype, name
            if isinstance(expected, np.ndarray):
                assert compiler_same(got, expected), name
            else:
                assert got.equals(expected) and got._pa_array.equals(expected._pa_array), name
                assert got._pa_array.type == expected._pa_array.type and got._pa_array.num_chunks == expected._pa_array.num_chunks
        for source in (Prepared(schema, batch), frame):
            table = Table(source, names)
            for positions in ([3, 4], [7], [1, 6, 7], [2, 5], [0], [0, 1, 2, 5, 6]):
                expected = frame[[names[p] for p in positions]]
                got = table.frame_of(positions)
                pd.testing.assert_frame_equal(got, expected, check_exact=True)
                assert list(got.dtypes) == list(expected.dtypes)
                if len(set(got.dtypes)) == 1:  # the blocks built directly (a mixed frame is pandas' own constructor)
                    assert _blocks(got) == _blocks(expected), positions
                assert got.to_numpy().flags.writeable == expected.to_numpy().flags.writeable
                got.iloc[0, 0] = None if got.dtypes.iloc[0].kind == "O" or isinstance(got.dtypes.iloc[0], pd.StringDtype) else 99
                pd.testing.assert_frame_equal(table.frame_of(positions), expected, check_exact=True)
    # The blocks were built directly (this pandas passed the check); a pandas that fails it gets the general constructor.
    from blackbox.fastpath import table as table_module

    assert table_module._internals() is not None
    monkeypatch.setattr(table_module, "_internals", lambda: None)
    frame, _ = schema.to_frame(records)
    for positions in ([3, 4], [7]):
        got = Table(Prepared(schema, records), names).frame_of(positions)
        pd.testing.assert_frame_equal(got, frame[[names[p] for p in positions]], check_exact=True)


def compiler_same(a, b) -> bool:
    from blackbox.fastpath.compiler import same

    return same(a, b)


def test_model_predict_runs_records_through_the_plan_and_defers_whole(training_pipeline, titanic, tmp_path, monkeypatch):
    import blackbox
    from blackbox.fastpath import estimators

    X_train, X_test, _, _ = titanic
    path = blackbox.save(training_pipeline, tmp_path / "m.bbx", train_data=X_train)
    model, reference = blackbox.load(path), blackbox.load(path, fast_path=False)
    assert model.plan is not None and reference.plan is None
    records = _odd_records(X_test)
    expected = reference.predict_batch(records), reference.predict_proba(records)
    assert [model.predict(r) for r in records] == expected[0]
    assert np.abs(np.asarray(model.predict_proba(records)) - np.asarray(expected[1])).max() <= 1e-9
    called = []
    monkeypatch.setattr(type(model.plan.final), "both", lambda self, X: called.append(1) or (_ for _ in ()).throw(Defer("test")))
    monkeypatch.setattr(type(model.plan.final), "predict", lambda self, X: called.append(1) or (_ for _ in ()).throw(Defer("test")))
    assert model.predict_batch(records) == expected[0]  # the deferred call ran the estimator on the frame the records make
    assert called and isinstance(model.plan.final, (estimators.Linear, estimators.Trees))


@pytest.mark.parametrize("rows", [1, 2, 5, 12, 13, 40, 64, 65])
def test_the_forest_walk_finds_each_trees_leaf_at_every_batch_size(titanic, rows):
    from blackbox.fastpath.estimators import SMALL_BATCH, SUMMED_AT_ONCE, Trees

    X_train, _, y_train, _ = titanic
    numbers = X_train[NUMBERS].fillna(0).to_numpy()
    forest = RandomForestClassifier(n_estimators=25, random_state=0).fit(numbers, y_train)
    node = Trees(forest, "forest")
    rng = np.random.default_rng(rows)
    X = numbers[rng.integers(0, len(numbers), rows)].copy()
    thresholds = forest.estimators_[0].tree_.threshold  # values on (float32 next to) split points: ties go left
    X[:, 1] = np.float32(thresholds[rng.integers(0, len(thresholds), rows)])
    X[0] = [0.0, -1e6, 1e6, 0.0]
    expected = np.stack([t.tree_.apply(X.astype(np.float32)) for t in forest.estimators_], axis=1) + node.offsets
    assert np.array_equal(node._leaves(node._float32(X)), expected)
    assert (rows <= SMALL_BATCH) == (rows in (1, 2, 5, 12))  # both ways of finding leaves are covered
    assert (rows <= SUMMED_AT_ONCE) == (rows != 65)  # and both ways of summing the trees' outputs
    labels, proba = node.both(X)
    # The trees' probabilities added in tree order, as the forest adds them (n_jobs=None): the same bits.
    assert np.array_equal(labels, forest.predict(X)) and compiler_same(proba, forest.predict_proba(X))


def test_a_step_wrong_only_for_a_few_rows_is_refused_at_save(titanic, monkeypatch):
    """The proof runs the verification rows in small batches too: a forest walk that stops too early (used up to
    SMALL_BATCH rows; all the rows at once take tree_.apply) must not be used."""
    from blackbox.fastpath.estimators import Trees

    X_train, _, y_train, _ = titanic
    pipeline = make_pipeline(ColumnTransformer([("num", SimpleImputer(), NUMBERS)]),
                             RandomForestClassifier(n_estimators=10, random_state=0)).fit(X_train, y_train)
    derive = Trees._derive

    def shallow(self):
        derive(self)
        self.depth = 2  # every row stops two levels down: wrong leaves, for small batches only

    monkeypatch.setattr(Trees, "_derive", shallow)
    plan, record, _ = fast_plan(pipeline, X_train)
    assert plan is None and record["enabled"] is False
    assert "on the verification rows (batches of " in record["reason"], record["reason"]


# ---------------------------------------------------------------- the commands: inspect shows the plan, score and serve turn it off

@pytest.fixture(scope="module")
def lr_artifacts(titanic, tmp_path_factory):
    import blackbox
    from training.pipeline import build_pipeline

    X_train, _, y_train, _ = titanic
    pipeline = build_pipeline(X_train.columns, seed=0).fit(X_train, y_train)
    where = tmp_path_factory.mktemp("fastpath-cli")
    return (blackbox.save(pipeline, where / "fast.bbx", train_data=X_train, name="fast", version="1"),
            blackbox.save(pipeline, where / "slow.bbx", train_data=X_train, name="slow", version="1", fast_path=False))


def test_inspect_shows_the_plan_its_steps_and_the_speedup(lr_artifacts):
    from click.testing import CliRunner

    from blackbox.cli import cli

    fast, slow = lr_artifacts
    out = CliRunner().invoke(cli, ["inspect", str(fast)])
    assert out.exit_code == 0, out.output
    assert "fast path     on: 16 compiled, 2 called as they are, 0 fallback(s); at save " in out.output
    assert "x faster per record" in out.output
    assert "    called    steps[mapper].features[7]:title.titleextractor (training.transforms.TitleExtractor)" in out.output
    assert "    compiled  steps[model] (sklearn.linear_model._logistic.LogisticRegression)" in out.output
    out = CliRunner().invoke(cli, ["inspect", str(slow)])
    assert "  fast path     off: fast_path=False" in out.output


def test_score_no_fast_path_loads_without_it_and_writes_the_same(lr_artifacts, titanic, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import blackbox.persist
    from blackbox.cli import cli

    fast, _ = lr_artifacts
    _, X_test, _, _ = titanic
    source = tmp_path / "in.csv"
    X_test.dropna(subset=["embarked"]).to_csv(source, index=False)
    loaded = []
    original = blackbox.persist.load
    monkeypatch.setattr(blackbox.persist, "load", lambda *a, **k: loaded.append(original(*a, **k)) or loaded[-1])
    outputs = []
    for flags in ([], ["--no-fast-path"]):
        out = tmp_path / f"out{len(flags)}.csv"
        result = CliRunner().invoke(cli, ["score", str(fast), str(source), "-o", str(out), *flags])
        assert result.exit_code == 0, result.output
        outputs.append(pd.read_csv(out))
    assert loaded[0].plan is not None and loaded[1].plan is None
    assert outputs[0]["prediction"].tolist() == outputs[1]["prediction"].tolist()
    probabilities = [c for c in outputs[0].columns if c.startswith("proba_")]
    assert probabilities and np.abs(outputs[0][probabilities].to_numpy() - outputs[1][probabilities].to_numpy()).max() <= 1e-9


def test_serve_no_fast_path_is_a_load_option(monkeypatch):
    from click.testing import CliRunner

    import serving.cli
    from blackbox.errors import UsageError
    from serving.config import _load_options

    seen = {}

    def stop(path, load, **overrides):
        seen.update(load)
        raise UsageError("stopped by the test")

    monkeypatch.setattr(serving.cli, "_config", stop)
    CliRunner().invoke(serving.cli.serve, ["model.bbx", "--no-fast-path"])
    assert seen["fast_path"] is False
    CliRunner().invoke(serving.cli.serve, ["model.bbx"])
    assert seen["fast_path"] is None  # not given: the default (on) holds
    assert _load_options({"fast_path": False})["fast_path"] is False  # BLACKBOX_LOAD_OPTIONS__fast_path=false


@pytest.mark.parametrize("kind", ["forest", "tree"])
def test_impure_leaves_give_the_estimators_labels_and_probability_bits(kind):
    """A leaf whose class fractions do not add up to exactly 1.0 (min_samples_leaf) is returned as it is, as
    scikit-learn does: dividing by the sum again moved it by an ulp, and where a forest's probabilities tied, the
    label (found by a hostile review: 234 probabilities and 5 labels of 4,000 rows differed)."""
    from sklearn.tree import DecisionTreeClassifier

    from blackbox.fastpath.estimators import Trees

    rng = np.random.default_rng(23)
    X, y = rng.normal(size=(300, 3)), rng.integers(0, 3, 300)
    fitted = (RandomForestClassifier(n_estimators=4, min_samples_leaf=3, random_state=23) if kind == "forest"
              else DecisionTreeClassifier(min_samples_leaf=7, random_state=23)).fit(X, y)
    node = Trees(fitted, kind)
    for rows in (5, 40, 65, 4000):  # the walk, the stacked leaves, and tree by tree
        Z = np.random.default_rng(1000 + rows).normal(size=(rows, 3))
        labels, proba = node.both(Z)
        assert np.array_equal(proba, fitted.predict_proba(Z)), rows  # the same bits
        assert np.array_equal(labels, fitted.predict(Z)), rows
