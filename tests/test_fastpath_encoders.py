"""The fast path's OrdinalEncoder, OneHotEncoder, RobustScaler and MaxAbsScaler against the fitted steps themselves.

Each compiled node must give its step's output bit for bit, or defer (so the
reference answers or raises); never another answer and never an error of its
own. Checked on odd values (missing markers of every kind, unseen categories,
values of another type) in batches on both sides of the encoders' column-wise
size, and through pipelines the way a user would write them, saved and loaded.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MaxAbsScaler, OneHotEncoder, OrdinalEncoder, RobustScaler
from sklearn.tree import DecisionTreeClassifier

from blackbox.fastpath import Defer, transformers
from blackbox.fastpath.compiler import same
from blackbox.fastpath.transformers import COLUMNWISE_ROWS

from _helpers import assert_plan_answers, json_records, proved_plan

NUMBERS = ["age", "fare", "sibsp", "parch"]
BATCHES = (1, 13, COLUMNWISE_ROWS, COLUMNWISE_ROWS + 1, 4000)


def _node(step, X_fit: np.ndarray):
    step.fit(X_fit)
    return {OneHotEncoder: transformers.OneHot, OrdinalEncoder: transformers.Ordinal}.get(type(step), transformers.Scaler)(
        step, "step", X_fit.dtype)


def _assert_step_or_defer(node, step, X: np.ndarray) -> None:
    """``X`` cycled to every batch size: the step's own output bit for bit, or Defer."""
    for size in BATCHES:
        rows = X[np.arange(size) % len(X)]
        try:
            got = node.transform(rows)
        except Defer:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "unknown categories" of OneHotEncoder
            expected = step.transform(rows)
        expected = expected.toarray() if hasattr(expected, "toarray") else expected
        assert same(got, expected), (size, rows[:8].tolist(), got[:8].tolist(), expected[:8].tolist())


def _column(*values, dtype=object) -> np.ndarray:
    return np.array(values, dtype=dtype).reshape(-1, 1)


ENCODERS = [OneHotEncoder(handle_unknown="ignore", sparse_output=False),
            OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2),
            OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan), OrdinalEncoder()]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("encoder", ENCODERS, ids=repr)
def test_a_missing_category_of_a_narrow_float_column_is_the_encoders_missing_category(encoder, dtype):
    """NaN was told apart as a Python float only: a float32 NaN category was a key of the lookup, never found, so a NaN
    was unseen (zeros, unknown_value, or deferring) where the encoder gives its NaN category."""
    step = encoder.__class__(**encoder.get_params())
    node = _node(step, _column(1.0, 2.5, 3.0, np.nan, dtype=dtype))
    _assert_step_or_defer(node, step, _column(np.nan, 1.0, 2.5, 7.0, np.nan, 3.0, dtype=dtype))
    assert node.transform(_column(np.nan, 2.5, dtype=dtype)) is not None  # it answers, it does not defer


@pytest.mark.parametrize("encoder", ENCODERS, ids=repr)
@pytest.mark.parametrize("odd", [pd.NA, pd.NaT, None, np.float32("nan"), True, 3, b"a"], ids=repr)
def test_an_odd_object_in_a_column_of_strings_is_the_encoders_answer_or_defers(encoder, odd):
    """pd.NA raised TypeError ('boolean value of NA is ambiguous') out of the plan; pd.NaT, unequal to itself, was taken
    for the NaN category where the encoder finds it unseen."""
    step = encoder.__class__(**encoder.get_params())
    node = _node(step, _column("b", "a", "c", np.nan))
    _assert_step_or_defer(node, step, _column("a", odd, "zz", np.nan, "c"))


@pytest.mark.parametrize("odd", [pd.NA, None, "2"], ids=repr)
def test_an_odd_object_among_numbers_from_a_mixed_part_defers(odd):
    """A part of a str and an Int64 column is an object array: the numbers' categories are float64 (scikit-learn
    reads each column on its own), so pd.NA there is the encoder's NaN; the node defers rather than guess."""
    frame = pd.DataFrame({"sex": ["a", "b", "a", "b"], "pclass": pd.array([1, 2, None, 3], dtype="Int64")})
    step = OneHotEncoder(handle_unknown="ignore", sparse_output=False).fit(frame)
    assert step.categories_[1].dtype == np.float64
    node = transformers.OneHot(step, "step", np.dtype(object))
    rows = np.array([["a", odd]], dtype=object)
    with pytest.raises(Defer):
        node.transform(rows)
    assert same(node.transform(np.array([["a", 2], ["b", 3.0]], dtype=object)), step.transform(
        pd.DataFrame({"sex": ["a", "b"], "pclass": pd.array([2, 3], dtype="Int64")})))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32])
def test_an_ordinal_encoder_of_another_output_dtype_refusing_unknowns_is_compiled(titanic, dtype):
    """With handle_unknown='error' the unknown code (None) was written into the rows it had none for: an integer output
    raised TypeError on every call, so the encoder ran the reference way ('compiled step failed')."""
    X_train, X_test, y_train, _ = titanic
    ct = ColumnTransformer([("num", SimpleImputer(), NUMBERS), ("cat", OrdinalEncoder(dtype=dtype), ["sex", "pclass"])])
    pipeline = Pipeline([("ct", ct), ("model", DecisionTreeClassifier(random_state=0))]).fit(X_train, y_train)
    plan, steps, schema = proved_plan(pipeline, X_train)
    assert steps["steps[ct].cat"]["mode"] == "compiled", steps["steps[ct].cat"]
    known = json_records(X_test.dropna(subset=["embarked"]))  # training saw no missing port
    assert_plan_answers(plan, pipeline, schema, known, BATCHES)
    unseen, _ = schema.to_frame([{**r, "pclass": 7} for r in known[:COLUMNWISE_ROWS + 1]])
    with pytest.raises(Defer):
        plan.predict(unseen)


def test_float32_categories_with_nan_before_a_model_compile_and_answer_as_the_pipeline(titanic):
    """The user's float32 column with missing values: before, each encoder's output differed on the verification rows
    (its NaN category was never found), so both ran the reference way."""
    X_train, X_test, y_train, _ = titanic
    train, test = (frame.assign(decade=(frame["age"] // 10).astype(np.float32)) for frame in (X_train, X_test))
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), RobustScaler(unit_variance=True)), NUMBERS),
        ("hot", OneHotEncoder(handle_unknown="ignore"), ["decade", "sex"]),
        ("ord", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-2), ["decade"]),
    ])
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=2000))]).fit(train, y_train)
    plan, steps, schema = proved_plan(pipeline, train)
    assert {p: s["mode"] for p, s in steps.items()} == dict.fromkeys(steps, "compiled"), steps
    base = json_records(test.dropna(subset=["embarked"]).head(40))
    odd = [dict(r, **change) for r in base[:3] for change in ({"decade": None}, {"decade": 99.0}, {"decade": 2}, {"sex": "x"})]
    assert_plan_answers(plan, pipeline, schema, base + odd, BATCHES)


@pytest.mark.parametrize("scaler", [RobustScaler(unit_variance=True), RobustScaler(quantile_range=(1.0, 99.0)),
                                    RobustScaler(with_centering=False, with_scaling=False), MaxAbsScaler()], ids=repr)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, bool])
def test_scalers_on_constant_zero_negative_and_missing_columns(scaler, dtype):
    rng = np.random.default_rng(0)
    fit = np.c_[rng.normal(size=50) * 100, np.zeros(50), np.full(50, 3), -np.abs(rng.normal(size=50))].astype(dtype)
    rows = np.c_[rng.normal(size=50) * 1e4, rng.normal(size=50), np.full(50, 3), rng.normal(size=50)].astype(dtype)
    if rows.dtype.kind == "f":
        fit[3, 0] = rows[::7, 1] = np.nan
    step = scaler.__class__(**scaler.get_params())
    _assert_step_or_defer(_node(step, fit), step, rows)


@pytest.mark.parametrize("encoder", ENCODERS[:2], ids=repr)
def test_a_number_among_strings_or_a_huge_integer_answers_as_the_encoder_above_the_columnwise_size(encoder):
    step = encoder.__class__(**encoder.get_params())
    strings = _node(step, _column("b", "a", "c"))
    with pytest.raises(Defer):
        strings.transform(_column(*["a"] * COLUMNWISE_ROWS, 1.5))
    step = encoder.__class__(**encoder.get_params())
    huge = np.array([2**53 + 1, -3, 0, 2**62], dtype=np.int64).reshape(-1, 1)
    _assert_step_or_defer(_node(step, huge), step, np.array([2**53, 2**53 + 1, 2**62, 7, 0], dtype=np.int64).reshape(-1, 1))
    step = encoder.__class__(**encoder.get_params())
    _assert_step_or_defer(_node(step, _column(-0.0, 1.5, dtype=float)), step, _column(0.0, -0.0, 1.5, 2.0, dtype=float))


def test_explicit_unsorted_categories_saved_and_loaded_answer_as_the_pipeline(titanic, tmp_path):
    import blackbox

    X_train, X_test, y_train, _ = titanic
    train = X_train.copy()
    train.loc[train.index[::40], "embarked"] = np.nan
    categories = [["male", "female"], ["S", "Q", "C", np.nan], [1, 2, 3]]
    ct = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), MaxAbsScaler()), NUMBERS),
        ("ord", OrdinalEncoder(categories=categories, handle_unknown="use_encoded_value", unknown_value=-1,
                               encoded_missing_value=-2), ["sex", "embarked", "pclass"]),
        ("hot", OneHotEncoder(categories=categories, handle_unknown="ignore"), ["sex", "embarked", "pclass"]),
    ])
    pipeline = Pipeline([("ct", ct), ("model", LogisticRegression(max_iter=2000))]).fit(train, y_train)
    model = blackbox.load(blackbox.save(pipeline, tmp_path / "ordinal.bbx", train_data=train))
    assert model.plan is not None
    assert {s["mode"] for s in model.plan.records()} == {"compiled"}, model.plan.records()
    base = json_records(X_test.head(60))
    odd = [dict(r, **change) for r in base[:4] for change in ({"sex": "x"}, {"embarked": None}, {"embarked": "Z"})]
    records = base + odd
    for size in BATCHES:
        batch = (records * (size // len(records) + 1))[:size]
        assert model.predict_batch(batch) == pipeline.predict(model.prepare(batch)[0]).tolist(), size
