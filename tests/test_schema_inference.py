"""Which inputs a saved model requires: the columns its fitted pipeline reads, missing where the pipeline tolerates it.

The schema used to be every column of ``train_data``, nullable where the training
split happened to hold a missing value. These tests pin what it is now: derived from
the pipeline (ColumnTransformer, DataFrameMapper, Pipeline, searches,
``feature_names_in_``), with ``train_data`` only as the recorded fallback, and each
field's nullability probed on the fitted pipeline at save time; a missing value
that is imputed is predicted with a warning naming its field and row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.datasets import load_wine
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn_pandas import DataFrameMapper

import blackbox
from blackbox.artifact import unpack
from blackbox.cli import main
from blackbox.errors import SchemaError, UsageError
from blackbox.schema import Schema

from _helpers import resign, user_module


@pytest.fixture(scope="module")
def wine() -> tuple[pd.DataFrame, pd.Series]:
    data = load_wine(as_frame=True)
    return data.data, data.target


def save_and_load(estimator, train_data: pd.DataFrame, path: Path) -> blackbox.Model:
    return blackbox.load(blackbox.save(estimator, path, train_data=train_data, name=path.stem, version="1"))


def issues(entries: list[dict]) -> list[tuple]:
    return [(entry["row"], entry["field"], entry["issue"]) for entry in entries]


# -- inputs: what the pipeline reads ---------------------------------------------------
def test_a_column_no_feature_uses_is_not_required(wine, tmp_path):
    """The wine model of the report: `ash` is in train_data, no feature reads it, a record without it predicts."""
    X, y = wine
    encode = ColumnTransformer([("scale", StandardScaler(), ["alcohol", "flavanoids"]), ("hue", "passthrough", ["hue"])])
    pipeline = make_pipeline(encode, LogisticRegression(max_iter=1000)).fit(X, y)
    model = save_and_load(pipeline, X, tmp_path / "wine.bbx")

    assert model.schema.columns == ["alcohol", "flavanoids", "hue"]
    assert model.manifest.schema["inputs"] == {"from": "pipeline", "detail": "ColumnTransformer columns"}
    assert model.manifest.features["input"] == ["alcohol", "flavanoids", "hue"]
    record = {name: float(X.iloc[7][name]) for name in ["alcohol", "flavanoids", "hue"]}
    assert model.predict(record) == int(pipeline.predict(X.iloc[[7]])[0])
    # a column training had but the model ignores is an unknown field like any other: warned, not used
    _, warnings = model.prepare([{**record, "ash": 2.4}])
    assert issues(warnings) == [(0, "ash", "unknown_field")]
    assert model.predict_batch(X.iloc[:20]) == pipeline.predict(X.iloc[:20]).tolist()  # a whole frame still scores


def test_column_transformer_selectors_indices_slices_and_masks_resolve_to_names(wine, tmp_path):
    X, y = wine
    proline = [name == "proline" for name in X.columns]
    encode = ColumnTransformer([
        ("pattern", StandardScaler(), make_column_selector(pattern="phenols")),
        ("index", StandardScaler(), [1]),
        ("slice", StandardScaler(), slice(9, 11)),
        ("mask", StandardScaler(), proline),
        ("dropped", "drop", ["ash"]),
    ])
    pipeline = make_pipeline(encode, LogisticRegression(max_iter=1000)).fit(X, y)
    model = save_and_load(pipeline, X, tmp_path / "selectors.bbx")
    assert model.schema.columns == ["malic_acid", "total_phenols", "nonflavanoid_phenols", "color_intensity", "hue", "proline"]
    assert model.predict_batch(X[model.schema.columns].iloc[:10]) == pipeline.predict(X.iloc[:10]).tolist()


def test_remainder_passthrough_reads_every_column(wine, tmp_path):
    X, y = wine
    encode = ColumnTransformer([("scale", StandardScaler(), ["alcohol"])], remainder="passthrough")
    model = save_and_load(make_pipeline(encode, StandardScaler(), LogisticRegression()).fit(X, y), X, tmp_path / "rest.bbx")
    assert model.schema.columns == list(X.columns)
    assert model.manifest.schema["inputs"]["from"] == "pipeline"


def test_a_data_frame_mapper_requires_its_feature_columns_only(wine, tmp_path):
    X, y = wine
    mapper = DataFrameMapper([
        (["alcohol"], StandardScaler()),
        (["flavanoids", "proline"], StandardScaler()),
        ("hue", None),
        (make_column_selector(pattern="phenols"), StandardScaler()),
    ])
    pipeline = make_pipeline(mapper, LogisticRegression(max_iter=1000)).fit(X, y)
    model = save_and_load(pipeline, X, tmp_path / "mapper.bbx")
    assert model.schema.columns == ["alcohol", "total_phenols", "flavanoids", "nonflavanoid_phenols", "hue", "proline"]
    assert model.manifest.schema["inputs"] == {"from": "pipeline", "detail": "DataFrameMapper features"}
    assert model.predict_batch(X[model.schema.columns].iloc[:10]) == pipeline.predict(X.iloc[:10]).tolist()


def test_a_mapper_that_passes_unlisted_columns_on_falls_back_to_train_data(wine, tmp_path):
    X, y = wine
    mapper = DataFrameMapper([(["alcohol"], StandardScaler())], default=StandardScaler())
    model = save_and_load(make_pipeline(mapper, LogisticRegression(max_iter=5000)).fit(X, y), X, tmp_path / "default.bbx")
    assert model.schema.columns == list(X.columns)
    inputs = model.manifest.schema["inputs"]
    assert inputs["from"] == "train_data" and "default" in inputs["detail"]


def test_an_estimator_fitted_on_fewer_columns_takes_its_feature_names_in_order(wine, tmp_path):
    X, y = wine
    columns = ["proline", "alcohol", "hue"]  # not train_data's order: the estimator checks names in fit order
    estimator = LogisticRegression(max_iter=5000).fit(X[columns], y)
    model = save_and_load(estimator, X, tmp_path / "bare.bbx")
    assert model.schema.columns == columns
    assert model.manifest.schema["inputs"] == {"from": "pipeline", "detail": "LogisticRegression.feature_names_in_"}
    assert model.predict_batch(X.iloc[:10]) == estimator.predict(X[columns].iloc[:10]).tolist()


def test_train_data_without_a_column_the_pipeline_reads_is_refused(wine, tmp_path):
    X, y = wine
    encode = ColumnTransformer([("scale", StandardScaler(), ["alcohol", "hue"])])
    pipeline = make_pipeline(encode, LogisticRegression()).fit(X, y)
    with pytest.raises(UsageError, match=r"lacks the column\(s\) \['hue'\] that the model reads"):
        blackbox.save(pipeline, tmp_path / "short.bbx", train_data=X.drop(columns="hue"))
    assert not (tmp_path / "short.bbx").exists()


WHOLE_FRAME_SOURCE = '''
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class WholeFrame(TransformerMixin, BaseEstimator):
    """Reads every column it is given and says nothing about which: no feature_names_in_."""

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return np.nan_to_num(np.asarray(X, dtype=float))
'''


def test_a_user_step_that_reads_the_whole_frame_falls_back_to_train_data(wine, tmp_path):
    X, y = wine
    with user_module(tmp_path, "bbx_whole_frame", WHOLE_FRAME_SOURCE) as module:
        pipeline = make_pipeline(module.WholeFrame(), LogisticRegression(max_iter=5000)).fit(X, y)
        model = save_and_load(pipeline, X, tmp_path / "whole.bbx")
    assert model.schema.columns == list(X.columns)
    assert model.manifest.schema["inputs"] == {
        "from": "train_data", "detail": "WholeFrame does not say which columns it reads (no feature_names_in_)",
    }
    # it turns NaN into 0 itself, so every field tolerates a missing value
    assert all(field.nullable and field.missing_probe == "tolerated" for field in model.schema.fields)


def test_the_training_packages_model_keeps_name_which_its_title_transformer_reads(titanic, tmp_path):
    from training.pipeline import build_pipeline

    X_train, _, y_train, _ = titanic
    X = X_train.assign(ticket="A/5 21171", cabin="C85")  # a user's frame has columns no feature uses
    pipeline = build_pipeline(X.columns, seed=0).fit(X, y_train)
    model = save_and_load(pipeline, X, tmp_path / "package.bbx")
    assert model.schema.columns == ["pclass", "sex", "age", "sibsp", "parch", "fare", "embarked", "name"]
    assert model.manifest.schema["inputs"] == {"from": "pipeline", "detail": "DataFrameMapper features"}
    complete = X.dropna().iloc[[0]]
    record = complete.drop(columns=["ticket", "cabin"]).to_dict("records")[0]
    assert model.predict(record) == int(pipeline.predict(complete)[0])


# -- nullability: what the pipeline tolerates --------------------------------------------
@pytest.fixture(scope="module")
def titanic_artifact(search, titanic, tmp_path_factory) -> Path:
    """The training package's search, saved on the conftest split: no training row lacks `embarked`."""
    X_train = titanic[0]
    assert not X_train.embarked.isna().any()
    return blackbox.save(search, tmp_path_factory.mktemp("inference") / "titanic.bbx", train_data=X_train, name="titanic", version="1")


@pytest.fixture(scope="module")
def titanic_model(titanic_artifact) -> blackbox.Model:
    return blackbox.load(titanic_artifact)


@pytest.fixture(scope="module")
def unembarked(titanic) -> pd.DataFrame:
    """The two real passengers without a port of embarkation (Icard and Stone), both in the holdout."""
    X_test = titanic[1]
    found = X_test[X_test.embarked.isna()].reset_index(drop=True)
    assert sorted(found.name.str.split(",").str[0]) == ["Icard", "Stone"]
    return found


def test_nullability_is_what_the_pipeline_tolerates_not_what_the_split_held(titanic_model):
    fields = {field.name: field for field in titanic_model.schema.fields}
    assert fields["embarked"].nullable and fields["embarked"].missing_probe == "tolerated"  # imputed by the pipeline
    assert fields["sex"].nullable and fields["name"].nullable and fields["age"].nullable
    # int64 columns cannot hold a missing value in the frame the pipeline gets: not probed, not nullable
    assert [(name, fields[name].nullable, fields[name].missing_probe) for name in ("pclass", "sibsp", "parch")] == [
        ("pclass", False, "untestable"), ("sibsp", False, "untestable"), ("parch", False, "untestable"),
    ]
    assert titanic_model.manifest.schema["fields"][6]["missing_probe"] == "tolerated"


def test_a_real_passenger_without_embarked_is_predicted_with_a_warning(titanic_model, search, unembarked):
    records = [{**record, "embarked": None} for record in unembarked.to_dict("records")]
    frame, warnings = titanic_model.prepare(records)
    assert issues(warnings) == [(0, "embarked", "null_imputed"), (1, "embarked", "null_imputed")]
    assert warnings[0]["received"] == "null"
    assert titanic_model.predict_batch(records) == search.predict(unembarked).tolist()
    # a field left out (not sent as null) is answered too, under its own issue name
    _, warnings = titanic_model.prepare([{k: v for k, v in record.items() if k != "embarked"} for record in records])
    assert issues(warnings) == [(0, "embarked", "missing_imputed"), (1, "embarked", "missing_imputed")]
    assert warnings[0]["received"] == "no value (field absent)"


def test_blackbox_score_predicts_the_passengers_without_embarked(titanic_artifact, titanic_model, unembarked, tmp_path):
    source = tmp_path / "in.csv"
    unembarked.to_csv(source, index=False)
    assert pd.read_csv(source, keep_default_na=False).embarked.tolist() == ["", ""]  # an empty cell, as a CSV has it
    out = tmp_path / "out.csv"
    assert main(["score", str(titanic_artifact), str(source), "-o", str(out)]) == 0
    scored = pd.read_csv(out)
    assert scored.row.tolist() == [1, 2]
    assert scored.prediction.tolist() == titanic_model.predict_batch(unembarked)


def test_a_field_the_model_cannot_do_without_is_required_and_says_why(wine, tmp_path):
    X, y = wine
    columns = ["alcohol", "hue"]
    refuses = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[columns], y)  # NaN reaches the regression
    imputes = make_pipeline(SimpleImputer(), StandardScaler(), LogisticRegression()).fit(X[columns], y)
    strict = save_and_load(refuses, X[columns], tmp_path / "refuses.bbx")
    lenient = save_and_load(imputes, X[columns], tmp_path / "imputes.bbx")
    assert [(f.nullable, f.missing_probe) for f in strict.schema.fields] == [(False, "refused")] * 2
    assert [(f.nullable, f.missing_probe) for f in lenient.schema.fields] == [(True, "tolerated")] * 2  # training had no NaN
    with pytest.raises(SchemaError) as caught:
        strict.prepare([{"alcohol": None, "hue": 1.0}])
    assert issues(caught.value.problems) == [(0, "alcohol", "null")]
    assert "the model cannot predict without it" in caught.value.problems[0]["expected"]
    with pytest.raises(SchemaError) as caught:
        strict.prepare([{"hue": 1.0}])  # absent, not null: the same reason
    assert issues(caught.value.problems) == [(0, "alcohol", "missing")]
    assert caught.value.problems[0]["expected"] == "a number (the model cannot predict without it)"
    assert lenient.predict({"hue": 1.0}) == int(imputes.predict(pd.DataFrame({"alcohol": [np.nan], "hue": [1.0]}))[0])


def test_missing_values_in_a_data_frame_are_warned_about_and_capped(titanic_model, titanic):
    X_test = titanic[1].reset_index(drop=True)
    frame = X_test.head(150).assign(embarked=None, age=np.nan)
    _, warnings = titanic_model.prepare(frame)
    age = [w for w in warnings if w["field"] == "age"]
    embarked = [w for w in warnings if w["field"] == "embarked"]
    assert len(age) == len(embarked) == 101  # 100 rows each, then "50 more rows"
    assert {w["issue"] for w in age + embarked} == {"null_imputed"}
    assert age[0] == {"row": None, "field": "age", "issue": "null_imputed", "expected": "as above", "received": "50 more rows"}
    assert [w["row"] for w in age[1:]] == list(range(100))


# -- older artifacts -------------------------------------------------------------------
OLD_SCHEMA = {
    "version": 1,
    "fields": [
        {"name": "age", "kind": "number", "dtype": "float64", "nullable": True,
         "categories": None, "minimum": 0.5, "maximum": 80.0, "max_length": None},
        {"name": "embarked", "kind": "string", "dtype": "object", "nullable": False,
         "categories": ["C", "Q", "S"], "minimum": None, "maximum": None, "max_length": 1},
    ],
}


def test_an_old_style_schema_dict_loads_and_keeps_its_rules():
    schema = Schema.from_dict(OLD_SCHEMA)
    assert schema.to_dict() == OLD_SCHEMA  # nothing added: it reads back in the blackbox that wrote it
    assert schema.inputs is None and {field.missing_probe for field in schema.fields} == {None}
    with pytest.raises(SchemaError) as caught:
        schema.to_frame([{"age": 30.0, "embarked": None}])
    assert caught.value.problems[0]["expected"] == "a string (training never saw a missing value)"
    _, warnings = schema.to_frame([{"embarked": "S"}])
    assert issues(warnings) == [(0, "age", "missing_imputed")]  # nullable there: the pipeline was fit on missing ages


def test_a_schema_whose_probe_contradicts_its_nullability_is_refused():
    item = {**OLD_SCHEMA["fields"][1], "missing_probe": "tolerated"}
    with pytest.raises(UsageError, match="'nullable' must be true"):
        Schema.from_dict({"version": 1, "fields": [item]})
    with pytest.raises(UsageError, match="missing_probe"):
        Schema.from_dict({"version": 1, "fields": [{**item, "nullable": True, "missing_probe": "maybe"}]})
    with pytest.raises(UsageError, match="inputs"):
        Schema.from_dict({**OLD_SCHEMA, "inputs": {"from": "guess"}})


def test_an_artifact_saved_before_the_probe_loads_with_its_old_rules(titanic_artifact, unembarked, tmp_path):
    manifest = unpack(titanic_artifact.read_bytes()).manifest()
    schema = manifest["schema"]
    del schema["inputs"]
    for field in schema["fields"]:
        field.pop("missing_probe", None)
        field["nullable"] = field["name"] in ("age", "fare")  # what the split held
    old = tmp_path / "old.bbx"
    old.write_bytes(resign(titanic_artifact.read_bytes(), manifest))
    model = blackbox.load(old)
    with pytest.raises(SchemaError) as caught:
        model.prepare([{**record, "embarked": None} for record in unembarked.to_dict("records")])
    assert issues(caught.value.problems) == [(0, "embarked", "null"), (1, "embarked", "null")]
    model.self_test()
