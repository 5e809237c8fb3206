"""Batch scoring: formats, schema-driven reading, rejects, exit codes and atomic publication."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

import blackbox
from blackbox import scoring
from blackbox.artifact import pack, unpack
from blackbox.cli import main
from blackbox.schema import infer_schema
from blackbox.scoring._chunks import Scored
from blackbox.scoring._reader import _column, _text_values
from blackbox.scoring._writer import BackgroundWriter, Writer

from _helpers import bad_rows, child_env, doctored, poisoned, write_input

FORMATS = ["csv", "parquet", "jsonl"]


def read_output(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"passenger": str})
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines()])


def run(*args: object) -> int:
    return main(["score", *map(str, args)])


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_equals_predict_batch(fmt, scoring_artifact, scoring_model, scoring_rows, tmp_path):
    source = write_input(scoring_rows, tmp_path / f"in.{fmt}")
    out = tmp_path / f"out.{fmt}"
    assert run(scoring_artifact, source, "-o", out, "--id-column", "passenger", "--chunk-size", 50) == 0

    got = read_output(out)
    features = scoring_rows.drop(columns="passenger")
    assert list(got.columns) == ["row", "passenger", "prediction", "proba_0", "proba_1", "warnings", "model_name", "model_version", "model_sha256"]
    assert got["row"].tolist() == list(range(1, len(scoring_rows) + 1))
    assert got["passenger"].tolist() == scoring_rows["passenger"].tolist()
    assert got["prediction"].tolist() == scoring_model.predict_batch(features)
    assert np.array_equal(got[["proba_0", "proba_1"]].to_numpy(), np.asarray(scoring_model.predict_proba(features)))
    assert set(got["model_name"]) == {"titanic"} and set(got["model_version"]) == {"2.0.0"}
    assert set(got["model_sha256"]) == {scoring_model.sha256}
    assert not (tmp_path / "out.rejects.csv").exists()  # no rejects: no rejects file


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_fast_path_scores_what_the_estimator_does_on_chunks_with_edge_rows(fmt, scoring_artifact, scoring_rows, tmp_path):
    """Chunks of 150 rows (the plan's column-wise encoders start above 64) with unseen categories and missing values."""
    from blackbox.fastpath.edges import edge_records

    reference = blackbox.load(scoring_artifact, fast_path=False)
    records = json.loads(scoring_rows.drop(columns="passenger").to_json(orient="records"))
    edges = []
    for record in edge_records(reference.schema, records):
        try:
            reference.validate([record])
        except blackbox.SchemaError:
            continue
        edges.append(record)
    frame = pd.DataFrame((records + edges) * 2).astype(scoring_rows.drop(columns="passenger").dtypes.to_dict(), errors="ignore")
    source = write_input(frame, tmp_path / f"in.{fmt}")
    outputs = []
    for fast in (True, False):
        out = tmp_path / f"out-{fast}.{fmt}"
        scoring.score(scoring_artifact, source, out, chunk_size=150, fast_path=fast, allow_unsigned=True)
        outputs.append(read_output(out))
    assert len(outputs[0]) == len(frame) > 300
    assert outputs[0]["prediction"].tolist() == outputs[1]["prediction"].tolist()
    proba = ["proba_0", "proba_1"]
    assert np.abs(outputs[0][proba].to_numpy() - outputs[1][proba].to_numpy()).max() <= 1e-9


def _expected_tags(model, frame: pd.DataFrame) -> list[str | None]:
    """Each record's warnings as the schema gives them for that record alone (the oracle for the warnings column)."""
    records = json.loads(frame.to_json(orient="records"))
    tags = []
    for record in records:
        found = model.validate([record])
        tags.append(";".join(f"{w['field']}:{w['issue']}" for w in found) or None)
    return tags


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fast", [True, False])
def test_each_scored_row_carries_its_own_warnings_uncapped_and_aligned_past_rejects(fmt, fast, scoring_artifact, scoring_rows, tmp_path):
    """450 rows: 150 out of range (past the schema's 100-per-field cap), missing values imputed, three schema rejects."""
    frame = pd.concat([scoring_rows.drop(columns="passenger")] * 3, ignore_index=True).head(450).copy()
    frame["pclass"] = frame["pclass"].astype(str)  # numeric strings score; "first" below does not
    frame.loc[frame.index % 3 == 0, "age"] = 500.0
    frame.loc[frame.index % 7 == 0, "fare"] = None
    frame.loc[[5, 200, 449], "pclass"] = "first"  # a type problem: rejected, so the rows after it shift
    source = write_input(frame, tmp_path / f"in.{fmt}")
    out = tmp_path / f"out.{fmt}"
    scoring.score(scoring_artifact, source, out, chunk_size=128, fast_path=fast, on_error="skip", allow_unsigned=True)
    got = read_output(out)
    kept = frame.drop(index=[5, 200, 449])
    assert got["row"].tolist() == [i + 1 for i in kept.index]
    model = blackbox.load(scoring_artifact)
    expected = _expected_tags(model, kept.astype({"pclass": int}))
    assert sum("age:out_of_range" in (tags or "") for tags in expected) >= 150 and any(t and ";" in t for t in expected)
    assert [None if pd.isna(tags) else tags for tags in got["warnings"]] == expected


def test_field_names_cannot_pass_for_other_warnings(scoring_artifact, scoring_rows, tmp_path):
    """Unknown names holding the separators are percent-encoded: each tag reads back as the name that caused it."""
    from urllib.parse import unquote

    record = json.loads(scoring_rows.drop(columns="passenger").head(1).to_json(orient="records"))[0]
    odd = ["x:out_of_range;age", "b%20", "new\nline", ""]
    many = {f"extra{i}": 1 for i in range(3000)}  # one row, thousands of warnings
    lines = [json.dumps({**record, name: 1}) for name in odd] + [json.dumps({**record, **many})]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    scoring.score(scoring_artifact, source, tmp_path / "out.jsonl", allow_unsigned=True)
    got = read_output(tmp_path / "out.jsonl")["warnings"].tolist()
    for name, tags in zip(odd, got):
        parsed = [tag.rsplit(":", 1) for tag in tags.split(";")]
        assert [(unquote(field), issue) for field, issue in parsed if issue == "unknown_field"] == [(name, "unknown_field")], tags
    assert got[-1].count("unknown_field") == 3000 and got[-1].startswith("extra0:unknown_field;extra1:")


def test_warnings_stay_with_their_rows_when_the_model_rejects_rows_of_the_chunk(poison_artifacts, tmp_path):
    frame = poisoned(300, (20, 260), value=7.0)  # rows 20 and 260: the model refuses them
    frame.loc[[9, 20, 258, 260, 299], "b"] = 50.0  # rows 10, 21, 259, 261, 300: out of range, scored
    source = write_input(frame, tmp_path / "in.csv")
    assert run(poison_artifacts["classifier"], source, "-o", tmp_path / "out.csv", "--on-error", "skip") == 10
    got = read_output(tmp_path / "out.csv")
    assert got["row"].tolist() == [row for row in range(1, 301) if row not in (20, 260)]
    expected = _expected_tags(blackbox.load(poison_artifacts["classifier"]), frame.drop(index=[19, 259]))
    assert all("b:out_of_range" in expected[got["row"].tolist().index(row)] for row in (10, 21, 259, 261, 300))
    assert [None if pd.isna(tags) else tags for tags in got["warnings"]] == expected


def test_output_format_follows_its_extension(scoring_artifact, scoring_model, scoring_rows, tmp_path):
    source = write_input(scoring_rows.head(20), tmp_path / "in.csv")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.parquet") == 0
    assert pd.read_parquet(tmp_path / "out.parquet")["prediction"].tolist() == scoring_model.predict_batch(scoring_rows.head(20).drop(columns="passenger"))
    assert run(scoring_artifact, source, "-o", tmp_path / "scores.txt") == 0  # unknown extension: the input's format
    assert (tmp_path / "scores.txt").read_text().startswith('"row","prediction"')


def test_probabilities_can_be_left_out(scoring_artifact, scoring_model, scoring_rows, tmp_path):
    source = write_input(scoring_rows.head(20), tmp_path / "in.csv")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.csv", "--no-probabilities") == 0
    got = read_output(tmp_path / "out.csv")
    assert list(got.columns) == ["row", "prediction", "warnings", "model_name", "model_version", "model_sha256"]
    assert got.prediction.tolist() == scoring_model.predict_batch(scoring_rows.head(20).drop(columns="passenger"))


@pytest.fixture(scope="module")
def ticket_artifact(tmp_path_factory) -> Path:
    """A model whose answer depends on a code with a leading zero: "01234" is class 1, "1234" class 0."""
    X = pd.DataFrame({"ticket": ["01234", "1234"] * 10, "fare": [7.0, 8.0, 9.0, 10.0] * 5})
    y = [1, 0] * 10
    encode = ColumnTransformer([("ticket", OneHotEncoder(handle_unknown="ignore"), ["ticket"])], remainder="passthrough")
    pipeline = make_pipeline(encode, LogisticRegression()).fit(X, y)
    return blackbox.save(pipeline, tmp_path_factory.mktemp("tickets") / "tickets.bbx", train_data=X, name="tickets", version="1")


def test_a_code_with_a_leading_zero_stays_a_string(ticket_artifact, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("ticket,fare\n01234,7.5\n1234,7.5\n")
    assert run(ticket_artifact, source, "-o", tmp_path / "out.csv") == 0
    assert read_output(tmp_path / "out.csv")["prediction"].tolist() == [1, 0]


def test_invalid_rows_fail_the_run_by_default(scoring_artifact, scoring_rows, tmp_path, capsys):
    source = write_input(bad_rows(scoring_rows, second=False), tmp_path / "in.csv")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.csv") == 9
    err = capsys.readouterr().err
    assert "row 5001 (1-based): field 'age': expected a number, got str 'abc'" in err and "--on-error skip" in err
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]  # nothing published, no temporary file left


def test_skip_rejects_invalid_rows_with_row_number_and_reason(scoring_artifact, scoring_model, scoring_rows, tmp_path, capsys):
    frame = bad_rows(scoring_rows)
    source = write_input(frame, tmp_path / "in.csv")
    code = run(scoring_artifact, source, "-o", tmp_path / "out.csv", "--on-error", "skip", "--id-column", "passenger", "--chunk-size", 3000)
    assert code == scoring.PARTIAL_SUCCESS == 10
    assert "scored 9,998 of 10,000 rows (2 rejected)" in capsys.readouterr().out

    rejects = pd.read_csv(tmp_path / "out.rejects.csv", dtype=str, keep_default_na=False)
    assert rejects[["row", "passenger", "field", "issue"]].values.tolist() == [
        ["7", frame.passenger[6], "pclass", "type"],
        ["5001", frame.passenger[5000], "age", "type"],
    ]
    assert rejects.received.tolist() == ["str 'first'", "str 'abc'"]
    out = read_output(tmp_path / "out.csv")
    assert len(out) == 9998 and 7 not in set(out.row) and 5001 not in set(out.row)
    valid = frame.drop(index=[6, 5000]).drop(columns="passenger")
    assert out.prediction.tolist() == scoring_model.predict_batch(valid.astype({"age": float, "pclass": int}))


def test_every_row_of_a_chunk_with_many_invalid_rows_is_listed(scoring_artifact, scoring_rows, tmp_path):
    """More invalid rows than the schema itemises per batch (100): each is still found and listed."""
    frame = scoring_rows.sample(n=400, replace=True, random_state=1).reset_index(drop=True).astype({"age": object, "pclass": object})
    frame.loc[::2, "age"] = "abc"  # 200 rows
    frame.loc[::3, "pclass"] = "first"  # 134 rows, 67 of them also with a bad age
    source = write_input(frame, tmp_path / "in.csv")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.csv", "--on-error", "skip") == 10
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert sorted(set(rejects.row)) == sorted({i + 1 for i in range(400) if i % 2 == 0 or i % 3 == 0})
    assert len(rejects) == 200 + 134
    assert len(read_output(tmp_path / "out.csv")) == 400 - rejects.row.nunique()


def test_jsonl_rejects_lines_that_are_not_json(scoring_artifact, scoring_rows, tmp_path):
    source = write_input(scoring_rows.head(3), tmp_path / "in.jsonl")
    lines = source.read_text().splitlines()
    source.write_text("\n".join([lines[0], "{not json", "", lines[1], '["a list"]', lines[2]]) + "\n")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.jsonl", "--on-error", "skip") == 10
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert rejects[["row", "issue"]].values.tolist() == [[2, "invalid_json"], [5, "not_an_object"]]
    assert read_output(tmp_path / "out.jsonl").row.tolist() == [1, 4, 6]  # JSON Lines rows are line numbers


def test_missing_column_is_an_input_error(scoring_artifact, scoring_rows, tmp_path, capsys):
    source = write_input(scoring_rows.drop(columns=["age", "fare"]), tmp_path / "in.csv")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.csv", "--on-error", "skip") == 9
    err = capsys.readouterr().err
    assert "lacks column(s) 'age', 'fare'" in err and not (tmp_path / "out.csv").exists()
    nullable = {field.name for field in blackbox.load(scoring_artifact).schema.fields if field.nullable}
    assert {"age", "fare"} <= nullable and "add it empty to score this one" in err  # the model imputes them
    required = next(field.name for field in blackbox.load(scoring_artifact).schema.fields if not field.nullable)
    source = write_input(scoring_rows.drop(columns=[required]), tmp_path / "in2.csv")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.csv") == 9
    assert "add it empty" not in capsys.readouterr().err


def test_column_of_the_wrong_type_fails_naming_it(scoring_artifact, scoring_rows, tmp_path, capsys):
    source = write_input(scoring_rows.assign(sex=1), tmp_path / "in.parquet")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.parquet", "--on-error", "skip") == 9
    assert "Column 'sex' of the input cannot be scored" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["in.parquet"]


def test_unreadable_input_is_an_input_error(scoring_artifact, tmp_path, capsys):
    source = tmp_path / "in.parquet"
    source.write_bytes(b"not parquet at all")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.parquet") == 9
    assert "Cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("empty.csv", "", '"row","prediction","proba_0","proba_1","warnings","model_name","model_version","model_sha256"\n'),
        ("header.csv", "pclass,sex,age,sibsp,parch,fare,embarked,name\n", '"row","prediction","proba_0","proba_1","warnings","model_name","model_version","model_sha256"\n'),
        ("empty.jsonl", "", ""),
        ("blank.jsonl", "\n\n", ""),
    ],
)
def test_empty_input_scores_zero_rows(name, content, expected, scoring_artifact, tmp_path, capsys):
    source = tmp_path / name
    source.write_text(content)
    out = tmp_path / f"out{source.suffix}"
    assert run(scoring_artifact, source, "-o", out) == 0
    assert out.read_text() == expected
    assert "scored 0 of 0 rows" in capsys.readouterr().out


def test_empty_parquet_scores_zero_rows(scoring_artifact, scoring_rows, tmp_path):
    source = write_input(scoring_rows.head(0), tmp_path / "in.parquet")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.parquet") == 0
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 0


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_output_does_not_depend_on_chunk_size_and_is_deterministic(fmt, scoring_artifact, scoring_rows, tmp_path):
    source = write_input(scoring_rows, tmp_path / f"in.{fmt}")
    outputs = []
    for i, chunk in enumerate([7, 1000, 1000]):
        out = tmp_path / f"out{i}.{fmt}"
        assert run(scoring_artifact, source, "-o", out, "--chunk-size", chunk, "--id-column", "passenger") == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_parquet_output_is_deterministic(scoring_artifact, scoring_rows, tmp_path):
    source = write_input(scoring_rows, tmp_path / "in.parquet")
    for out in ("a.parquet", "b.parquet"):
        assert run(scoring_artifact, source, "-o", tmp_path / out, "--chunk-size", 100) == 0
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_a_run_without_rejects_writes_no_rejects_file_so_a_second_format_is_not_blocked(scoring_artifact, scoring_rows, tmp_path, capsys):
    source = write_input(scoring_rows.head(5), tmp_path / "in.csv")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.csv") == 0
    assert "rejects  none (no rejects file written)" in capsys.readouterr().out
    assert run(scoring_artifact, source, "-o", tmp_path / "out.parquet") == 0  # same default rejects path: out.rejects.csv
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "out.csv", "out.parquet"]


def test_a_stale_rejects_file_is_removed_when_an_overwriting_run_has_none(scoring_artifact, scoring_rows, tmp_path):
    source = write_input(bad_rows(scoring_rows, 100), tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    assert run(scoring_artifact, source, "-o", out, "--on-error", "skip") == 10
    assert (tmp_path / "out.rejects.csv").exists()
    write_input(scoring_rows.head(5), source)
    assert run(scoring_artifact, source, "-o", out, "--overwrite") == 0
    assert not (tmp_path / "out.rejects.csv").exists()  # it listed another run's rows


def test_the_input_format_option_is_named_for_what_it_sets(scoring_artifact, scoring_rows, tmp_path, capsys):
    source = write_input(scoring_rows.head(5), tmp_path / "in.csv").rename(tmp_path / "in.data")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.jsonl", "--input-format", "csv") == 0
    assert len(read_output(tmp_path / "out.jsonl")) == 5
    capsys.readouterr()
    assert run(scoring_artifact, source, "-o", tmp_path / "old.jsonl", "--format", "csv") == 0  # the old spelling still works
    assert "--format is deprecated" in capsys.readouterr().err and len(read_output(tmp_path / "old.jsonl")) == 5
    assert main(["score", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--input-format" in help_text and "--format " not in help_text and "-o's extension" in " ".join(help_text.split())


def test_outputs_follow_the_umask(scoring_artifact, scoring_rows, tmp_path):
    source = write_input(bad_rows(scoring_rows, 100), tmp_path / "in.csv")
    old = os.umask(0o022)
    try:
        assert run(scoring_artifact, source, "-o", tmp_path / "out.csv", "--on-error", "skip") == 10
    finally:
        os.umask(old)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out.rejects.csv").stat().st_mode & 0o777 == 0o644


def test_an_earlier_runs_rejects_file_is_kept_and_named_when_another_format_is_written(scoring_artifact, scoring_rows, tmp_path, capsys):
    frame = scoring_rows.head(20).astype({"pclass": str})
    frame.loc[3, "pclass"] = "first"
    source = write_input(frame, tmp_path / "in.csv")
    assert run(scoring_artifact, source, "-o", tmp_path / "out.csv", "--on-error", "skip") == 10
    kept = (tmp_path / "out.rejects.csv").read_bytes()
    capsys.readouterr()
    assert run(scoring_artifact, source, "-o", tmp_path / "out.parquet", "--on-error", "skip") == 2
    assert "out.rejects.csv' already exists; pass overwrite=True to replace it, or choose another rejects path" in capsys.readouterr().err
    assert (tmp_path / "out.rejects.csv").read_bytes() == kept and not (tmp_path / "out.parquet").exists()
    assert run(scoring_artifact, source, "-o", tmp_path / "out.parquet", "--on-error", "skip",
               "--rejects", tmp_path / "parquet-rejects.csv") == 10


def test_existing_output_is_refused_unless_overwrite(scoring_artifact, scoring_rows, tmp_path, capsys):
    source = write_input(scoring_rows.head(5), tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    out.write_text("precious")
    assert run(scoring_artifact, source, "-o", out) == 2
    err = capsys.readouterr().err
    assert "already exists; pass overwrite=True" in err and "On the command line: --overwrite." in err
    assert out.read_text() == "precious"
    assert run(scoring_artifact, source, "-o", out, "--overwrite") == 0
    assert len(read_output(out)) == 5


def test_an_interrupted_run_publishes_nothing(scoring_artifact, scoring_rows, tmp_path, monkeypatch):
    source = write_input(scoring_rows, tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    out.write_text("previous run")
    written = []

    def write_then_fail(self, scored):
        written.append(len(scored.rows))
        if len(written) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises half-way through
        real_write(self, scored)

    real_write = scoring._writer.TableWriter.write
    monkeypatch.setattr(scoring._writer.TableWriter, "write", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        scoring.score(scoring_artifact, source, out, chunk_size=20, overwrite=True)
    assert out.read_text() == "previous run"
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "out.csv"]


class _Recording(Writer):
    """Keeps what it is given; fails on the chunk numbered ``fail_at``; remembers being closed."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.written, self.closed, self.fail_at = [], False, fail_at

    def write(self, scored):
        if len(self.written) == self.fail_at:
            raise OSError("disk full")
        time.sleep(0.001)  # let the caller run ahead, as predicting the next chunk does
        self.written.append(int(scored.rows[0]))

    def close(self):
        self.closed = True


def _scored(row: int) -> Scored:
    return Scored(rows=np.array([row]), ids=None, predictions=[0], probabilities=None, warnings=[None], rejects=[])


def test_the_background_writer_writes_every_chunk_in_order_and_finishes_the_file():
    inner = _Recording()
    with BackgroundWriter(inner) as writer:
        for row in range(1, 51):
            writer.write(_scored(row))
    assert inner.written == list(range(1, 51)) and inner.closed


def test_the_background_writers_error_reaches_the_caller_and_stops_the_writing():
    inner = _Recording(fail_at=3)
    with pytest.raises(OSError, match="disk full"), BackgroundWriter(inner) as writer:
        for row in range(1, 51):
            writer.write(_scored(row))
    assert inner.written == [1, 2, 3] and inner.closed


def test_a_killed_run_leaves_no_output_and_a_rerun_is_complete(scoring_artifact, scoring_rows, tmp_path):
    source = write_input(pd.concat([scoring_rows] * 40, ignore_index=True), tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    command = [sys.executable, "-m", "blackbox", "score", str(scoring_artifact), str(source), "-o", str(out), "--chunk-size", "50"]
    child = subprocess.Popen(command, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".out.csv.") and p.stat().st_size > 1000 for p in tmp_path.iterdir()):
        assert child.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not out.exists()

    assert list(tmp_path.glob(".out.*.tmp"))  # what SIGKILL leaves: hidden temporary files, never the output
    assert run(scoring_artifact, source, "-o", out, "--chunk-size", 50) == 0
    assert not list(tmp_path.glob(".out.*.tmp"))  # the rerun removed them: their writer is gone
    assert run(scoring_artifact, source, "-o", tmp_path / "again.csv") == 0
    assert out.read_bytes() == (tmp_path / "again.csv").read_bytes()


@pytest.mark.parametrize("damage, code", [("unsigned", 4), ("tampered", 5)])
def test_refused_artifact_gives_the_loader_exit_code_and_no_output(damage, code, scoring_artifact, scoring_rows, tmp_path):
    parts = unpack(scoring_artifact.read_bytes())
    if damage == "unsigned":
        data = pack(parts.manifest_bytes, parts.payload)
    else:
        payload = bytearray(parts.payload)
        payload[len(payload) // 2] ^= 0xFF
        data = pack(parts.manifest_bytes, bytes(payload), parts.signature)
    bad = tmp_path / "bad.bbx"
    bad.write_bytes(data)
    source = write_input(scoring_rows.head(5), tmp_path / "in.csv")
    assert run(bad, source, "-o", tmp_path / "out.csv") == code
    assert sorted(os.listdir(tmp_path)) == ["bad.bbx", "in.csv"]


def test_usage_errors(scoring_artifact, scoring_rows, tmp_path, capsys):
    source = write_input(scoring_rows.head(5), tmp_path / "in.csv")
    assert run(scoring_artifact, source, "-o", source, "--overwrite") == 2
    assert "must be three different files" in capsys.readouterr().err
    assert run(scoring_artifact, source, "-o", tmp_path / "out.csv", "--scheduler", "tcp://127.0.0.1:1") == 2
    assert "--engine dask" in capsys.readouterr().err
    assert run(scoring_artifact, source, "-o", tmp_path / "out.csv", "--id-column", "prediction") == 9  # no such input column
    assert run(scoring_artifact, source, "-o", tmp_path / "out.csv", "--id-column", "passenger", "--chunk-size", 0) == 2
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]


def test_api_summary(scoring_artifact, scoring_rows, tmp_path):
    source = write_input(bad_rows(scoring_rows, 100), tmp_path / "in.csv")
    summary = scoring.score(scoring_artifact, source, tmp_path / "out.csv", on_error="skip", rejects=tmp_path / "bad.csv")
    assert (summary.rows_read, summary.rows_scored, summary.rows_rejected, summary.exit_code) == (100, 98, 2, 10)
    assert summary.rejects == tmp_path / "bad.csv" and summary.rejects.exists()
    clean = scoring.score(scoring_artifact, write_input(scoring_rows.head(5), tmp_path / "ok.csv"), tmp_path / "ok_out.csv")
    assert clean.rejects is None and "rejects  none" in clean.describe()
    assert summary.rows_per_second > 0 and summary.worker_loads == {}


_SPELLINGS = ["5", "+5", "-5", " 5", "5 ", "1_000", "0x10", "0X1F", "5.0", "1e3", "\u0663", "007", "nan", "NaN", "inf",
              "-Infinity", ".5", "5.", "+1.5", "1E5", "1e400", "0x1p3", "", "99999999999999999999", "-0", "1,5", "e5", "."]
_BOOLEAN_SPELLINGS = ["true", "false", "True", "FALSE", "tRuE", " true", "true ", "1", "0", "yes", "t", "f", "fal\u017fe",
                      "\u0074rue", "TRUE\u0130", "", "none", "null"]
_NUMBERS = infer_schema(pd.DataFrame({"n": [1.5, None], "i": [1, 2], "b": [True, False]}))


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.none() | st.sampled_from(_SPELLINGS + _BOOLEAN_SPELLINGS) | st.text("0123456789+-.eExXna ", max_size=6),
                       min_size=1, max_size=6))
def test_csv_text_becomes_numbers_and_booleans_exactly_as_the_slow_reading_gives(values):
    """Arrow's fast parse of a CSV number or boolean column gives what the schema's value-by-value reading gives, problems included."""
    def outcome(columns):
        try:
            return _NUMBERS.to_frame(pd.DataFrame(columns))
        except blackbox.SchemaError as error:
            return None, error.problems

    text = pa.chunked_array([pa.array(values, pa.string())])
    for field in _NUMBERS.fields:
        fast = outcome({field.name: _column(field, text)})
        slow = outcome({field.name: _text_values(field, text)})
        assert fast[1] == slow[1], field.name
        if slow[0] is not None:
            pd.testing.assert_frame_equal(fast[0], slow[0])


def test_one_bad_boolean_in_a_csv_column_rejects_only_its_row():
    """A column that Arrow cannot cast as a whole still reads its true/false words as booleans."""
    field = next(f for f in _NUMBERS.fields if f.name == "b")
    text = pa.chunked_array([pa.array(["true", "FALSE", "yes", None, "False"], pa.string())])
    with pytest.raises(blackbox.SchemaError) as caught:
        _NUMBERS.to_frame(pd.DataFrame({"n": [1.0] * 5, "i": [1] * 5, "b": _column(field, text)}))
    assert [(p["row"], p["field"], p["issue"]) for p in caught.value.problems] == [(2, "b", "type"), (3, "b", "null")]


# ---------------------------------------------------------------- rows the model (not the schema) cannot score

@pytest.mark.parametrize("fmt", FORMATS)
def test_a_row_the_model_cannot_score_is_a_reject_with_its_row_and_reason(fmt, poison_artifact, tmp_path, capsys):
    frame = poisoned(300, (37, 38, 250))
    source = write_input(frame, tmp_path / f"in.{fmt}")
    out = tmp_path / f"out.{fmt}"
    assert run(poison_artifact, source, "-o", out, "--on-error", "skip", "--chunk-size", 128) == 10
    assert "scored 297 of 300 rows (3 rejected)" in capsys.readouterr().out

    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert rejects.row.tolist() == [37, 38, 250] and set(rejects.issue) == {"model_error"}
    assert all("poisoned value 13.0 in column a" in reason for reason in rejects.received)
    got = read_output(out)
    assert got.row.tolist() == [row for row in range(1, 301) if row not in (37, 38, 250)]
    model = blackbox.load(poison_artifact)
    assert got.prediction.tolist() == model.predict_batch(frame.drop(index=[36, 37, 249]))


def test_rows_the_model_names_as_refused_or_answered_nan_for_are_rejects(poison_artifacts, tmp_path):
    """ModelInputError (a value infinite after the model's transform) and ModelOutputError (a NaN answer) name their rows."""
    source = write_input(poisoned(300, (20, 260), value=7.0), tmp_path / "in.csv")
    assert run(poison_artifacts["classifier"], source, "-o", tmp_path / "out.csv", "--on-error", "skip") == 10
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert rejects[["row", "issue"]].values.tolist() == [[20, "model_rejected"], [260, "model_rejected"]]
    assert all("infinity" in reason for reason in rejects.received)

    source = write_input(poisoned(300, (3, 150), value=8.0), tmp_path / "in8.csv")
    assert run(poison_artifacts["regressor"], source, "-o", tmp_path / "out8.csv", "--on-error", "skip") == 10
    rejects = pd.read_csv(tmp_path / "out8.rejects.csv")
    assert rejects[["row", "issue", "received"]].values.tolist() == [[3, "invalid_model_output", "NaN or infinity"],
                                                                      [150, "invalid_model_output", "NaN or infinity"]]
    assert len(read_output(tmp_path / "out8.csv")) == 298


def test_with_on_error_fail_a_row_the_model_rejects_fails_the_run_naming_it(poison_artifact, tmp_path, capsys):
    source = write_input(poisoned(300, (200,)), tmp_path / "in.csv")
    assert run(poison_artifact, source, "-o", tmp_path / "out.csv", "--chunk-size", 128) == 9
    err = capsys.readouterr().err
    assert "row 200 (1-based)" in err and "the model cannot score it" in err and "poisoned value 13.0" in err
    assert "Traceback" not in err and sorted(os.listdir(tmp_path)) == ["in.csv"]


@pytest.mark.parametrize("rows, broken_from, chunk", [(300, 101, 50), (300, 1, 1000), (3, 1, 1000)])
def test_a_model_that_fails_on_every_row_of_a_chunk_fails_the_run(rows, broken_from, chunk, poison_artifact, tmp_path, capsys):
    """Not a reject per row: the model, not the data, is at fault; nothing is published."""
    frame = poisoned(rows, ())
    frame.loc[broken_from - 1:, "a"] = 150.0  # every row of the chunk holding row broken_from fails
    source = write_input(frame, tmp_path / "in.csv")
    assert run(poison_artifact, source, "-o", tmp_path / "out.csv", "--on-error", "skip", "--chunk-size", chunk) == 14
    err = capsys.readouterr().err
    assert "The model failed on every row" in err and f"from row {broken_from} to row {min(rows, broken_from + chunk - 1)}" in err
    assert "column a at or above 100.0" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_a_short_chunk_the_model_fails_on_entirely_is_rejects_when_other_rows_scored(chunk, poison_artifact, tmp_path):
    """Rows 4 and 5 poison the model: in a short last chunk of their own that is no proof the model is broken."""
    frame = poisoned(5, (4, 5))
    source = write_input(frame, tmp_path / "in.csv")
    assert run(poison_artifact, source, "-o", tmp_path / "out.csv", "--on-error", "skip", "--chunk-size", chunk) == 10
    assert read_output(tmp_path / "out.csv").row.tolist() == [1, 2, 3]
    assert pd.read_csv(tmp_path / "out.rejects.csv")[["row", "issue"]].values.tolist() == [[4, "model_error"], [5, "model_error"]]


def test_a_model_failing_on_every_row_of_a_small_input_still_fails_the_run(poison_artifact, tmp_path, capsys):
    source = write_input(poisoned(3, (1, 2, 3)), tmp_path / "in.csv")
    assert run(poison_artifact, source, "-o", tmp_path / "out.csv", "--on-error", "skip", "--chunk-size", 2) == 14
    err = capsys.readouterr().err
    assert "The model failed on every row" in err and "poisoned value 13.0" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]


# ---------------------------------------------------------------- the artifact's self-test

def test_an_artifact_failing_its_self_test_scores_nothing(scoring_artifact, scoring_rows, tmp_path, capsys):
    bad = doctored(scoring_artifact, tmp_path / "doctored.bbx")
    source = write_input(scoring_rows.head(20), tmp_path / "in.csv")
    assert run(bad, source, "-o", tmp_path / "out.csv") == 7
    assert "golden-sample predictions" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["doctored.bbx", "in.csv"]


def test_a_dask_worker_self_tests_the_artifact_it_loads(scoring_artifact, scoring_model, tmp_path):
    """A worker's copy is checked too: its packages may differ from the driver's."""
    from blackbox.scoring._dask import WorkerArtifact
    from blackbox.signing import Keyring

    bad = doctored(scoring_artifact, tmp_path / "doctored.bbx")
    remote = WorkerArtifact(str(bad), scoring_model.sha256, Keyring.from_environment(), False)
    with pytest.raises(blackbox.SelfTestError, match="golden-sample"):
        remote.load()


def test_a_worker_refuses_a_re_signed_file_with_the_same_payload(scoring_artifact, scoring_model, tmp_path):
    """Replaced while scoring by a file with the same payload but another manifest (schema, golden sample): refused."""
    from blackbox.scoring._dask import WorkerArtifact, manifest_sha256
    from blackbox.signing import Keyring

    bad = doctored(scoring_artifact, tmp_path / "doctored.bbx")
    remote = WorkerArtifact(str(bad), scoring_model.sha256, Keyring.from_environment(), False, True, manifest_sha256(scoring_model))
    with pytest.raises(blackbox.IntegrityError, match="changed while it was being scored"):
        remote.load()
    assert WorkerArtifact(str(scoring_artifact), scoring_model.sha256, Keyring.from_environment(), False, True,
                          manifest_sha256(scoring_model)).load().sha256 == scoring_model.sha256


def test_isolating_model_failures_is_bounded(poison_artifact, tmp_path, monkeypatch, capsys):
    """Rows the model fails on cost model calls to find; past the bound the run fails rather than crawl."""
    monkeypatch.setattr(scoring._scorer, "MAX_ISOLATION_CALLS", 20)
    source = write_input(poisoned(300, tuple(range(3, 300, 30))), tmp_path / "in.csv")  # 10 scattered rows
    assert run(poison_artifact, source, "-o", tmp_path / "out.csv", "--on-error", "skip") == 14
    err = capsys.readouterr().err
    assert "more rows than 20 model calls could isolate" in err and "poisoned value 13.0" in err
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]
