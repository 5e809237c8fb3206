"""The fast path and sparse outputs: a default OneHotEncoder (sparse_output=True) in a dense ColumnTransformer.

The plan computes what the ColumnTransformer gives (its ``toarray()`` of each
sparse part), so its answers must be the pipeline's on held-out and odd rows
(missing, unseen, numbers as categories), one row at a time and in batches on
both sides of the encoder's column-wise size; where the next step receives the
sparse matrix itself, the encoder runs the reference way.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from blackbox.fastpath import Defer
from blackbox.fastpath.base import Called
from blackbox.fastpath.transformers import COLUMNWISE_ROWS

from _helpers import assert_plan_answers, json_records, proved_plan

NUMBERS = ["age", "fare", "sibsp", "parch"]
BATCHES = (1, 13, COLUMNWISE_ROWS, COLUMNWISE_ROWS + 1, 4000)


def _accepted(schema, record: dict) -> bool:
    try:
        schema.validate([record])
    except Exception:  # noqa: BLE001 - SchemaError: a server would refuse it before any plan runs
        return False
    return True


def _assert_answers(plan, pipeline, schema, records: list[dict]) -> None:
    """The pipeline's labels and probabilities for the ``records`` the schema accepts, in every batch size, from both
    input forms."""
    records = [r for r in records if _accepted(schema, r)]
    assert len(records) > 40  # the held-out rows and some odd ones
    assert_plan_answers(plan, pipeline, schema, records, BATCHES)


def _with_missing_categories(titanic):
    """Titanic with missing sex and port in training (so a served row may miss them) and numeric categories with NaN."""
    X_train, X_test, y_train, _ = titanic
    frames = []
    for frame in (X_train.copy(), X_test.copy()):
        frame["decade"] = frame["age"] // 10  # float categories, NaN where the age is missing
        frames.append(frame)
    train, test = frames
    train.loc[train.index[::17], "sex"] = np.nan
    train.loc[train.index[5::19], "embarked"] = np.nan
    return train, test, y_train


def _odd(test: pd.DataFrame) -> list[dict]:
    base = json_records(test.dropna(subset=["embarked"]).head(40))
    changes = [{"sex": None}, {"sex": float("nan")}, {"embarked": None}, {"sex": "unknown", "embarked": "X"}, {"pclass": 7},
               {"age": None, "fare": None}]
    if "decade" in test:
        changes += [{"decade": None}, {"decade": 99.0}, {"decade": 2}]
    return base + [dict(r, **change) for r in base[:3] for change in changes]


@pytest.mark.parametrize("dtype", [np.float32, np.int64, bool])
def test_default_encoders_of_another_dtype_answer_as_the_pipeline_on_odd_rows_in_every_batch(titanic, dtype):
    train, test, y_train = _with_missing_categories(titanic)
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMBERS),
        ("cat", OneHotEncoder(handle_unknown="ignore", dtype=dtype), ["sex", "embarked", "pclass", "decade"]),
        ("imputed", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), ["sex"]),
    ], sparse_threshold=0)
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=2000))]).fit(train, y_train)
    plan, steps, schema = proved_plan(pipeline, train)
    assert {p: s["mode"] for p, s in steps.items()} == dict.fromkeys(steps, "compiled"), steps
    _assert_answers(plan, pipeline, schema, _odd(test))


class AsObjects(TransformerMixin, BaseEstimator):
    """A user's step before the encoder: its columns as an object array."""

    def fit(self, X, y=None):
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X):
        return np.asarray(X, dtype=object)


def test_a_default_encoder_after_a_users_step_is_compiled_not_blamed_on_the_slice(titanic):
    """The part's own check compared the compiled (dense) output with the encoder's sparse one: the whole part ran the
    reference way, recorded as 'the rebuilt column slice gave another output' (untrue), where sparse_output=False compiled."""
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([("num", SimpleImputer(), ["age"]),
                            ("cat", make_pipeline(AsObjects(), OneHotEncoder(handle_unknown="ignore")), ["sex", "embarked"])])
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=2000))]).fit(X_train, y_train)
    plan, steps, schema = proved_plan(pipeline, X_train)
    assert steps["steps[ct].cat.asobjects"]["mode"] == "called", steps
    assert steps["steps[ct].cat.onehotencoder"]["mode"] == "compiled", steps
    _assert_answers(plan, pipeline, schema, _odd(X_test))


class Reversed(TransformerMixin, BaseEstimator):
    """A user's step after the encoder: it gets what the encoder gives (and says so)."""

    seen: list[type] = []

    def fit(self, X, y=None):
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X):
        Reversed.seen.append(type(X))
        return X[:, ::-1]


def test_an_encoder_followed_by_another_step_in_its_part_keeps_its_sparse_output(titanic):
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([("num", SimpleImputer(), ["age"]),
                            ("cat", make_pipeline(OneHotEncoder(handle_unknown="ignore"), Reversed()), ["sex", "embarked"])])
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=2000))]).fit(X_train, y_train)
    plan, steps, schema = proved_plan(pipeline, X_train)
    assert steps["steps[ct].cat.onehotencoder"]["mode"] == "reference"
    assert "sparse_output=True" in steps["steps[ct].cat.onehotencoder"]["reason"]
    Reversed.seen.clear()
    _assert_answers(plan, pipeline, schema, _odd(X_test))
    assert set(Reversed.seen) == {sparse.csr_matrix}


class Formatted(TransformerMixin, BaseEstimator):
    """A user's step answering a sparse matrix of another format and dtype."""

    def __init__(self, fmt: str = "csc", dtype: str = "int64") -> None:
        self.fmt, self.dtype = fmt, dtype

    def fit(self, X, y=None):
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X):
        return sparse.csr_matrix(np.asarray(X, dtype=float)).asformat(self.fmt).astype(self.dtype)


@pytest.mark.parametrize("fmt, dtype", [("csc", "int64"), ("coo", "float32")])
def test_a_users_sparse_part_of_another_format_and_dtype_is_made_dense_as_the_container_does(titanic, fmt, dtype):
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([("num", make_pipeline(SimpleImputer(), Formatted(fmt, dtype)), ["age", "fare"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["sex", "pclass"])], sparse_threshold=0)
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=2000))]).fit(X_train, y_train)
    plan, steps, schema = proved_plan(pipeline, X_train)
    assert steps["steps[ct]"]["mode"] == "compiled" and steps["steps[ct].cat"]["mode"] == "compiled", steps
    _assert_answers(plan, pipeline, schema, _odd(X_test))


def test_a_mapper_with_a_default_encoder_runs_the_reference_way(titanic):
    from sklearn_pandas import DataFrameMapper

    X_train, X_test, y_train, _ = titanic
    mapper = DataFrameMapper([(["age"], SimpleImputer()), (["sex", "embarked"], OneHotEncoder(handle_unknown="ignore"))])
    pipeline = Pipeline([("mapper", mapper), ("model", LogisticRegression(max_iter=2000))]).fit(X_train, y_train)
    plan, steps, schema = proved_plan(pipeline, X_train)
    assert steps["steps[mapper]"]["mode"] == "reference" and "sparse" in steps["steps[mapper]"]["reason"], steps
    _assert_answers(plan, pipeline, schema, _odd(X_test))


def test_a_column_node_pickled_before_densify_existed_defers_on_a_sparse_part():
    """Plans ride pickled in artifacts: one saved before ``Columns.densify`` unpickles without it (an AttributeError
    then); a sparse part defers, as it did when it was saved."""
    import pickle

    from blackbox.fastpath.composites import VALUES, Columns, Slice
    from blackbox.fastpath.table import Table

    node = Columns(None, "old", [(Slice([0], VALUES, np.dtype(np.float64)), Called(Formatted("csr"), "old.part", "called"))],
                   one_d="refuse")
    del node.densify
    old = pickle.loads(pickle.dumps(node))
    with pytest.raises(Defer):
        old.transform(Table(pd.DataFrame({"x": [1.0, 0.0]}), ["x"]))


def test_saved_and_loaded_a_default_encoder_pipeline_predicts_as_the_pipeline(titanic, tmp_path):
    import blackbox

    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMBERS),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         ["sex", "embarked", "pclass"]),
    ])
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=2000))]).fit(X_train, y_train)
    path = tmp_path / "default-encoder.bbx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blackbox.save(pipeline, path, train_data=X_train, name="default-encoder", version="1")
    fast_path = blackbox.inspect(path)["fast_path"]
    assert fast_path["enabled"] and {s["mode"] for s in fast_path["steps"]} == {"compiled"}, fast_path
    model = blackbox.load(path)
    assert model.plan is not None
    records = [r for r in _odd(X_test) if _accepted(model.schema, r)]
    for size in BATCHES:
        batch = (records * (size // len(records) + 1))[:size]
        assert np.array_equal(np.asarray(model.predict_batch(batch)), pipeline.predict(model.schema.to_frame(batch)[0]))
