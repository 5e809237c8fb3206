"""Schema inference and validation of raw JSON records (blackbox.schema)."""

from __future__ import annotations

import io
import json
import math
import unicodedata

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from blackbox.errors import SchemaError, UsageError
from blackbox.schema import Field, Schema, infer_schema
from serving.openapi import record_schema

TITANIC_CSV = """pclass,sex,age,sibsp,parch,fare,embarked,name,survived
3,male,22,1,0,7.25,S,"Braund, Mr. Owen Harris",0
1,female,38,1,0,71.2833,C,"Cumings, Mrs. John Bradley",1
3,female,26,0,0,7.925,S,"Heikkinen, Miss. Laina",1
1,female,35,1,0,53.1,S,"Futrelle, Mrs. Jacques Heath",1
3,male,35,0,0,8.05,S,"Allen, Mr. William Henry",0
3,male,,0,0,8.4583,Q,"Moran, Mr. James",0
1,male,54,0,0,51.8625,S,"McCarthy, Mr. Timothy J",0
3,male,2,3,1,21.075,S,"Palsson, Master. Gosta Leonard",0
3,female,27,0,2,11.1333,S,"Johnson, Mrs. Oscar W",1
2,female,14,1,0,30.0708,C,"Nasser, Mrs. Nicholas",1
3,female,4,1,1,16.7,S,"Sandstrom, Miss. Marguerite Rut",1
1,female,58,0,0,26.55,S,"Bonnell, Miss. Elizabeth",1
3,male,20,0,0,,S,"Saundercock, Mr. William Henry",0
3,male,39,1,5,31.275,S,"Andersson, Mr. Anders Johan",0
3,female,14,0,0,7.8542,S,"Vestrom, Miss. Hulda Amanda",0
2,female,55,0,0,16,S,"Hewlett, Mrs. Mary D",1
3,male,,4,1,29.125,Q,"Rice, Master. Eugene",0
2,male,,0,0,13,S,"Williams, Mr. Charles Eugene",1
3,female,31,1,0,18,S,"Vander Planke, Mrs. Julius",0
1,female,62,0,0,80,,"Icard, Miss. Amelie",1
"""
FEATURES = ["pclass", "sex", "age", "sibsp", "parch", "fare", "embarked", "name"]


def titanic() -> tuple[pd.DataFrame, pd.Series]:
    data = pd.read_csv(io.StringIO(TITANIC_CSV))
    return data[FEATURES], data["survived"]


def as_client_sends(frame: pd.DataFrame) -> list[dict]:
    """What a JSON client sends: NaN becomes null, then a real JSON round trip."""
    records = [
        {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in record.items()}
        for record in frame.to_dict("records")
    ]
    return json.loads(json.dumps(records))


@pytest.fixture
def schema() -> Schema:
    return infer_schema(titanic()[0])


@pytest.fixture
def record() -> dict:
    return as_client_sends(titanic()[0])[0]


def problems_of(schema: Schema, records, **kwargs) -> list[tuple]:
    with pytest.raises(SchemaError) as info:
        schema.to_frame(records, **kwargs)
    return [(p["row"], p["field"], p["issue"]) for p in info.value.problems]


# --- inference -------------------------------------------------------------


def test_infer_kinds_nullability_ranges_and_categories(schema):
    by_name = {field.name: field for field in schema.fields}
    assert schema.columns == FEATURES
    assert by_name["pclass"] == Field("pclass", "integer", "int64", False, None, 1.0, 3.0, None)
    assert by_name["age"].kind == "number" and by_name["age"].dtype == "float64"
    assert by_name["age"].nullable and (by_name["age"].minimum, by_name["age"].maximum) == (2.0, 62.0)
    assert by_name["fare"].nullable and not by_name["sibsp"].nullable
    assert by_name["sex"] == Field("sex", "string", "str", False, ("female", "male"), None, None, 6)
    assert by_name["embarked"].nullable and by_name["embarked"].categories == ("C", "Q", "S")
    assert by_name["name"].max_length == len("Sandstrom, Miss. Marguerite Rut")
    assert isinstance(by_name["age"].minimum, float)


def test_categories_are_capped():
    frame = pd.DataFrame({"code": [f"c{i}" for i in range(10)], "few": ["a", "b"] * 5})
    fields = infer_schema(frame, max_categories=5).fields
    assert fields[0].categories is None and fields[0].max_length == 2
    assert fields[1].categories == ("a", "b")


def test_ranges_ignore_non_finite_and_all_missing():
    frame = pd.DataFrame({"x": [1.5, np.inf, -np.inf, np.nan, -2.0], "y": [np.nan] * 5})
    x, y = infer_schema(frame).fields
    assert (x.minimum, x.maximum, x.nullable) == (-2.0, 1.5, True)
    assert (y.minimum, y.maximum, y.nullable) == (None, None, True)


def test_infer_object_booleans_and_categoricals():
    frame = pd.DataFrame(
        {
            "flag": np.array([True, False, True]),
            "maybe": pd.Series([True, np.nan, False], dtype=object),
            "words": pd.Series(["x", "yy", np.nan], dtype=object),
            "cat": pd.Series(["b", "a", "b"], dtype="category"),
        }
    )
    flag, maybe, words, cat = infer_schema(frame).fields
    assert (flag.kind, flag.dtype, flag.nullable) == ("boolean", "bool", False)
    assert (maybe.kind, maybe.dtype, maybe.nullable) == ("boolean", "object", True)
    assert (words.kind, words.dtype, words.categories, words.max_length) == ("string", "object", ("x", "yy"), 2)
    assert (cat.kind, cat.categories) == ("category", ("a", "b"))


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(pd.to_datetime(["2020-01-01", "2021-01-01"])),
        pd.Series(["a", 1], dtype=object),
        pd.Series([1 + 2j, 3j]),
        pd.Series(pd.Categorical(["lo", "hi"], categories=["lo", "hi"], ordered=True)),
    ],
)
def test_infer_rejects_unrepresentable_dtypes(column):
    with pytest.raises(UsageError, match="'when'.*convert it"):
        infer_schema(pd.DataFrame({"when": column}))


def test_infer_rejects_non_string_column_names():
    with pytest.raises(UsageError, match="Column names must be strings"):
        infer_schema(pd.DataFrame({0: [1], "b": [2]}))


# --- serialisation ---------------------------------------------------------


def test_to_dict_round_trips_through_strict_json(schema):
    text = json.dumps(schema.to_dict(), allow_nan=False)
    assert Schema.from_dict(json.loads(text)) == schema
    frame = pd.DataFrame({"cat": pd.Series(["b", "a"], dtype="category"), "n": pd.array([1, None], dtype="Int64")})
    other = infer_schema(frame)
    assert Schema.from_dict(json.loads(json.dumps(other.to_dict(), allow_nan=False))) == other


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(extra=1), "exactly the keys"),
        (lambda d: d.update(version=99), "version"),
        (lambda d: d["fields"][0].pop("dtype"), "exactly the keys"),
        (lambda d: d["fields"][0].update(colour="red"), "exactly the keys"),
        (lambda d: d["fields"][0].update(kind="date"), "'kind'"),
        (lambda d: d["fields"][0].update(dtype="not-a-dtype"), "'dtype'"),
        (lambda d: d["fields"][0].update(dtype="float64"), "'dtype'"),
        (lambda d: d["fields"][0].update(nullable=True), "cannot hold missing"),
        (lambda d: d["fields"][0].update(minimum=float("nan")), "'minimum'"),
        (lambda d: d["fields"].append(dict(d["fields"][0])), "unique"),
    ],
)
def test_from_dict_is_strict(schema, mutate, match):
    data = json.loads(json.dumps(schema.to_dict()))
    mutate(data)
    with pytest.raises(UsageError, match=match):
        Schema.from_dict(data)


def test_openapi_describes_one_record(schema):
    spec = record_schema(schema)
    json.dumps(spec, allow_nan=False)
    assert spec["type"] == "object"
    assert list(spec["properties"]) == FEATURES
    assert set(spec["required"]) == {"pclass", "sex", "sibsp", "parch", "name"}
    assert spec["properties"]["pclass"]["anyOf"][0]["type"] == "integer"  # or a numeric string: anyOf[1]
    assert spec["properties"]["age"]["anyOf"][0] == {"type": "number", "nullable": True}
    assert spec["properties"]["sex"]["type"] == "string"


# --- dtype-exact round trip ------------------------------------------------


def test_round_trip_reproduces_training_frame_and_predictions():
    features, target = titanic()
    assert str(features["sex"].dtype) == "str"
    schema = infer_schema(features)
    wire = as_client_sends(features)
    assert wire[5]["age"] is None and wire[19]["embarked"] is None
    frame, warnings = schema.to_frame(wire)
    pd.testing.assert_frame_equal(frame, features)
    assert [(w["row"], w["field"], w["issue"]) for w in warnings] == [(5, "age", "null_imputed"), (12, "fare", "null_imputed"), (16, "age", "null_imputed"), (17, "age", "null_imputed"), (19, "embarked", "null_imputed")]

    numeric, categorical = ["pclass", "age", "sibsp", "parch", "fare"], ["sex", "embarked"]
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", SimpleImputer(), numeric),
                ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), categorical),
            ]
        ),
        LogisticRegression(max_iter=1000),
    ).fit(features, target)
    np.testing.assert_array_equal(model.predict(frame), model.predict(features))
    np.testing.assert_array_equal(model.predict_proba(frame), model.predict_proba(features))


def test_round_trip_of_other_dtypes():
    frame = pd.DataFrame(
        {
            "i32": np.array([1, -2, 3], dtype="int32"),
            "f32": np.array([0.5, np.nan, 2.25], dtype="float32"),
            "flag": [True, False, True],
            "maybe": pd.Series([True, np.nan, False], dtype=object),
            "words": pd.Series(["x", np.nan, "z"], dtype=object),
            "cat": pd.Series(["b", "a", np.nan], dtype="category"),
            "n": pd.array([1, None, 3], dtype="Int64"),
            "s": pd.array(["p", None, "q"], dtype="string"),
        }
    )
    schema = Schema.from_dict(json.loads(json.dumps(infer_schema(frame).to_dict())))
    result, _ = schema.to_frame(as_client_sends(frame))
    pd.testing.assert_frame_equal(result, frame)
    assert result["words"].iloc[1] is np.nan


def test_key_order_does_not_matter(schema, record):
    shuffled = dict(reversed(list(record.items())))
    first, _ = schema.to_frame([record])
    second, _ = schema.to_frame([shuffled])
    pd.testing.assert_frame_equal(first, second)
    assert list(second.columns) == FEATURES


def test_absent_nullable_field_is_a_missing_value(schema, record):
    del record["age"], record["embarked"]
    frame, warnings = schema.to_frame([record])
    assert math.isnan(frame["age"].iloc[0]) and pd.isna(frame["embarked"].iloc[0])
    assert [(w["row"], w["field"], w["issue"]) for w in warnings] == [(0, "age", "missing_imputed"), (0, "embarked", "missing_imputed")]


# --- problems --------------------------------------------------------------


def test_empty_batch_and_non_list(schema):
    assert problems_of(schema, []) == [(None, None, "empty")]
    assert problems_of(schema, {"pclass": 3}) == [(None, None, "not_a_list")]
    assert problems_of(schema, "records") == [(None, None, "not_a_list")]


def test_not_an_object(schema, record):
    assert problems_of(schema, [record, 42, None, [record]]) == [
        (1, None, "not_an_object"),
        (2, None, "not_an_object"),
        (3, None, "not_an_object"),
    ]


def test_missing_and_null(schema, record):
    absent = {key: value for key, value in record.items() if key != "pclass"}
    null = {**record, "sex": None, "age": None}
    assert problems_of(schema, [absent, null]) == [(0, "pclass", "missing"), (1, "sex", "null")]


def test_names_match_exactly(schema, record):
    record["Age"] = record.pop("pclass")
    with pytest.raises(SchemaError) as info:
        schema.to_frame([record])
    assert [(p["row"], p["field"], p["issue"]) for p in info.value.problems] == [(0, "pclass", "missing")]
    record["pclass"] = 3
    frame, warnings = schema.to_frame([record])
    assert [(w["field"], w["issue"]) for w in warnings] == [("Age", "unknown_field")]
    assert "age" in warnings[0]["expected"]


@pytest.mark.parametrize(
    "field, value, issue",
    [
        ("age", "abc", "type"),
        ("age", True, "type"),
        ("pclass", False, "type"),
        ("age", [22], "type"),
        ("age", {"value": 22}, "type"),
        ("sex", 1, "type"),
        ("sex", ["male"], "type"),
        ("sex", {"v": "male"}, "type"),
        ("pclass", 3.5, "type"),
        ("pclass", "3.5", "type"),
        ("pclass", 10**30, "type"),
        ("age", float("nan"), "non_finite"),
        ("age", float("inf"), "non_finite"),
        ("fare", float("-inf"), "non_finite"),
        ("pclass", float("nan"), "non_finite"),
        ("sibsp", float("inf"), "non_finite"),
        ("age", "NaN", "non_finite"),
        ("age", "-Infinity", "non_finite"),
        ("age", 10**400, "non_finite"),
        ("name", "x" * 1025, "too_long"),
        ("name", "\ud800", "type"),
    ],
)
def test_value_problems(schema, record, field, value, issue):
    record[field] = value
    assert problems_of(schema, [record]) == [(0, field, issue)]


def test_received_is_short(schema, record):
    record["age"] = "y" * 5000
    record["name"] = "n" * 100_000
    with pytest.raises(SchemaError) as info:
        schema.to_frame([record])
    assert all(len(p["received"]) <= 40 for p in info.value.problems)
    assert len(str(info.value)) < 1000


def test_too_long_threshold_scales_with_training(schema, record):
    record["name"] = "x" * 1024  # max_length is 31: the floor of 1024 applies
    schema.to_frame([record])
    wide = infer_schema(pd.DataFrame({"t": ["y" * 500]}))
    wide.to_frame([{"t": "y" * 2000}])
    assert problems_of(wide, [{"t": "y" * 2001}]) == [(0, "t", "too_long")]


def test_numbers_accept_numeric_strings_and_integral_floats(schema, record):
    record.update(pclass=3.0, age="22", fare="7.25", sibsp="1", parch=" 0 ")
    frame, _ = schema.to_frame([record])
    assert frame["pclass"].dtype == "int64" and frame["pclass"].iloc[0] == 3
    assert frame["age"].iloc[0] == 22.0 and frame["fare"].iloc[0] == 7.25
    assert (frame["sibsp"].iloc[0], frame["parch"].iloc[0]) == (1, 0)


def test_integers_keep_full_precision():
    schema = infer_schema(pd.DataFrame({"id": np.array([2**62, 1], dtype="int64")}))
    frame, _ = schema.to_frame([{"id": 2**62 + 1}, {"id": str(2**62 + 3)}])
    assert frame["id"].tolist() == [2**62 + 1, 2**62 + 3]


def test_every_problem_is_collected_at_once(schema, record):
    bad_age = {**record, "age": "old"}
    no_sex = {key: value for key, value in record.items() if key != "sex"}
    problems = problems_of(schema, [record, bad_age, "oops", no_sex, {**record, "fare": float("nan"), "pclass": True}])
    assert problems == [
        (1, "age", "type"),
        (2, None, "not_an_object"),
        (3, "sex", "missing"),
        (4, "pclass", "type"),
        (4, "fare", "non_finite"),
    ]


def test_problem_shape_and_message(schema, record):
    records = [{**record, "age": "abc"} for _ in range(8)]
    with pytest.raises(SchemaError) as info:
        schema.to_frame(records)
    error = info.value
    assert error.problems[0] == {"row": 0, "field": "age", "issue": "type", "expected": "a number", "received": "str 'abc'"}
    lines = str(error).splitlines()
    assert lines[0].startswith("8 of 8 records failed validation")
    assert lines[1] == "- record 0, field 'age': expected a number, got str 'abc'"
    assert sum(line.startswith("- record") for line in lines) == 5
    assert lines[6] == "- ... and 3 more"
    assert "model.schema" in lines[7] and "GET /" not in str(error)  # the server adds its route (serving/errors.py)
    assert isinstance(error, ValueError) and error.code == "validation_error"


# --- warnings --------------------------------------------------------------


def test_warnings_keep_the_record(schema, record):
    odd = {**record, "colour": "red", "embarked": "X", "age": 130, "fare": -1}
    frame, warnings = schema.to_frame([record, odd])
    assert [(w["row"], w["field"], w["issue"]) for w in warnings] == [
        (1, "age", "out_of_range"),
        (1, "fare", "out_of_range"),
        (1, "embarked", "unseen_category"),
        (1, "colour", "unknown_field"),
    ]
    assert len(frame) == 2 and list(frame.columns) == FEATURES
    assert frame["embarked"].iloc[1] == "X" and frame["age"].iloc[1] == 130.0


def test_strict_mode_rejects_unknown_fields(schema, record):
    assert problems_of(schema, [{**record, "colour": "red"}], strict=True) == [(0, "colour", "unknown_field")]


def test_a_field_name_that_is_not_unicode_is_a_problem_shown_escaped(schema, record):
    """A lone surrogate in a key cannot be written back as UTF-8: a type problem, strict or not, never a warning."""
    for strict in (False, True):
        with pytest.raises(SchemaError) as info:
            schema.to_frame([{**record, "a\ud800b": 1}], strict=strict)
        (problem,) = info.value.problems
        assert (problem["row"], problem["field"], problem["issue"]) == (0, "a\\ud800b", "type")
        problem["field"].encode("utf-8")
        info.value.message.encode("utf-8")


# --- the model's numeric limit ---------------------------------------------


F32 = float(np.finfo(np.float32).max)


@pytest.fixture
def limited() -> Schema:
    return infer_schema(titanic()[0], limit=F32)


def test_a_limit_is_set_on_number_fields_only_and_round_trips(limited):
    assert {f.name: f.limit for f in limited.fields if f.limit} == {"age": F32, "fare": F32}
    data = json.loads(json.dumps(limited.to_dict(), allow_nan=False))
    assert Schema.from_dict(data) == limited
    assert [f.get("limit") for f in data["fields"]] == [None, None, F32, None, None, F32, None, None]
    assert "limit" not in infer_schema(titanic()[0]).to_dict()["fields"][2]  # written only when set


@pytest.mark.parametrize("field, value, match", [
    (2, 0, "'limit'"), (2, -1.0, "'limit'"), (2, float("inf"), "'limit'"), (2, "big", "'limit'"), (0, F32, "not a number"),
])
def test_from_dict_checks_the_limit(limited, field, value, match):
    data = json.loads(json.dumps(limited.to_dict()))
    data["fields"][field]["limit"] = value
    with pytest.raises(UsageError, match=match):
        Schema.from_dict(data)


@pytest.mark.parametrize("value, issue", [
    (3.4e38, None), (-3.4e38, None), (3.5e38, "non_finite"), (-1e300, "non_finite"), ("1e39", "non_finite"), (10**39, "non_finite"),
])
def test_values_beyond_the_limit_are_non_finite(limited, record, value, issue):
    record["age"] = value
    if issue is None:
        assert limited.to_frame([record])[0]["age"][0] == value
    else:
        with pytest.raises(SchemaError) as info:
            limited.to_frame([record])
        assert [(p["row"], p["field"], p["issue"]) for p in info.value.problems] == [(0, "age", issue)]
        assert "float32" in info.value.problems[0]["expected"]


def test_dataframe_values_beyond_the_limit_are_non_finite(limited):
    features = titanic()[0]
    features.loc[[1, 4], "fare"] = [1e39, -np.inf]
    assert problems_of(limited, features) == [(1, "fare", "non_finite"), (4, "fare", "non_finite")]


def test_category_dtype_rejects_values_outside_its_categories():
    schema = infer_schema(pd.DataFrame({"c": pd.Series(["a", "b"], dtype="category")}))
    assert problems_of(schema, [{"c": "z"}]) == [(0, "c", "type")]
    frame, _ = schema.to_frame([{"c": "b"}])
    assert frame["c"].dtype == pd.CategoricalDtype(["a", "b"])


def test_strings_are_nfc_normalised():
    nfc = unicodedata.normalize("NFC", "São Paulo")
    nfd = unicodedata.normalize("NFD", "São Paulo")
    assert nfc != nfd
    schema = infer_schema(pd.DataFrame({"city": [nfc, "Lisboa"]}))
    frame, warnings = schema.to_frame([{"city": nfd}])
    assert frame["city"].iloc[0] == nfc and warnings == []


# --- DataFrame input -------------------------------------------------------


def test_dataframe_input_round_trips(schema):
    features, _ = titanic()
    shuffled = features[FEATURES[::-1]].assign(extra=1)
    frame, warnings = schema.to_frame(shuffled)
    pd.testing.assert_frame_equal(frame, features)
    assert [(w["row"], w["field"], w["issue"]) for w in warnings] == [
        (None, "extra", "unknown_field"), (5, "age", "null_imputed"), (12, "fare", "null_imputed"),
        (16, "age", "null_imputed"), (17, "age", "null_imputed"), (19, "embarked", "null_imputed"),
    ]


def test_dataframe_input_converts_compatible_dtypes(schema):
    features, _ = titanic()
    loose = features.astype({"pclass": "float64", "sex": object, "age": object})
    frame, _ = schema.to_frame(loose)
    pd.testing.assert_frame_equal(frame, features)


def test_dataframe_input_problems(schema):
    features, _ = titanic()
    broken = features.drop(columns=["fare"]).assign(sex=1)
    broken["sibsp"] = broken["sibsp"].astype("float64")
    broken.loc[[2, 4], "sibsp"] = np.nan
    broken.loc[3, "age"] = np.inf
    assert problems_of(schema, broken) == [
        (None, "sex", "type"),
        (None, "fare", "missing"),
        (2, "sibsp", "null"),
        (3, "age", "non_finite"),
        (4, "sibsp", "null"),
    ]
    assert problems_of(schema, features.iloc[:0]) == [(None, None, "empty")]
    assert problems_of(schema, features.assign(extra=1), strict=True) == [(None, "extra", "unknown_field")]


def test_dataframe_problems_are_capped():
    schema = infer_schema(pd.DataFrame({"x": [1.0, 2.0]}))
    with pytest.raises(SchemaError) as info:
        schema.to_frame(pd.DataFrame({"x": np.full(1000, np.nan)}))
    problems = info.value.problems
    assert len(problems) == 101
    assert problems[0] == {"row": None, "field": "x", "issue": "null", "expected": "as above", "received": "900 more rows"}
    assert str(info.value).startswith("1000 of 1000 records failed")


_STRINGS = infer_schema(
    pd.DataFrame(
        {
            "port": ["S", "C", "Q", None],  # nullable, with categories: unseen values warn
            "code": pd.Series(["a", "b", "a", "b"], dtype="category"),  # unseen values are errors
            "name": [f"name {i}" * 3 for i in range(4)],  # free text, never missing in training
        }
    ),
    max_categories=3,
)
_STRING_VALUES = st.none() | st.sampled_from(["S", "C", "Q", "a", "b", "X", "São", "Sa\u0303o", "y" * 1100, "\ud800"]) | st.text(max_size=5)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(_STRING_VALUES, _STRING_VALUES, _STRING_VALUES), min_size=1, max_size=8))
def test_dataframe_strings_are_checked_like_records(rows):
    """The column-wise string path (batch scoring) gives the records path's frame, warnings and problems."""
    records = [dict(zip(["port", "code", "name"], row)) for row in rows]
    frame_input = pd.DataFrame(records, dtype=object)

    def outcome(data):
        try:
            frame, warnings = _STRINGS.to_frame(data)
        except SchemaError as error:
            return None, error.problems
        return frame, warnings

    expected, got = outcome(records), outcome(frame_input)
    assert got[1] == expected[1]
    if expected[0] is not None:
        pd.testing.assert_frame_equal(got[0], expected[0])


def test_dataframe_strings_input_is_not_modified():
    frame_input = pd.DataFrame({"port": ["S", None, "Sa\u0303o"], "code": ["a", "b", "a"], "name": ["x", "y", "z"]}, dtype=object)
    before = frame_input.copy()
    _STRINGS.to_frame(frame_input)
    pd.testing.assert_frame_equal(frame_input, before)


# --- robustness ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(exclude_categories=()), max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=json_values,
    values=st.lists(st.dictionaries(st.sampled_from(FEATURES + ["Age", "x"]), json_values), max_size=4),
    overrides=st.dictionaries(st.sampled_from(FEATURES + ["x"]), json_values, max_size=2),
)
def test_arbitrary_json_only_raises_schema_error(schema, record, batch, values, overrides):
    for records in (batch, [batch], values, [{**record, **overrides}]):
        try:
            frame, warnings = schema.to_frame(records)
        except SchemaError as error:
            assert error.problems and str(error)
        else:
            assert list(frame.columns) == FEATURES and len(frame) == len(records)
            json.dumps(warnings)
