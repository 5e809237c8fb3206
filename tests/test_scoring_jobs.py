"""``blackbox score --jobs N``: chunks scored in local worker processes give the one-process output, byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import blackbox
from blackbox import scoring
from blackbox.cli import main

from _helpers import user_module, write_input

CRASH_SOURCE = '''
import os
import signal

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

CRASH_AT = 12345.5


class CrashOn(BaseEstimator, TransformerMixin):
    """Passes its input through, except that the process segfaults on the value CRASH_AT in column a."""

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        if (np.asarray(X["a"], dtype=float) == CRASH_AT).any():
            os.kill(os.getpid(), signal.SIGSEGV)
        return X
'''


@pytest.fixture(scope="module")
def crash_artifact(tmp_path_factory) -> Path:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    with user_module(tmp_path_factory.mktemp("crashsrc"), "bbx_crash_feats", CRASH_SOURCE) as module:
        rng = np.random.default_rng(0)
        X = pd.DataFrame({"a": rng.normal(size=80), "b": rng.normal(size=80)})
        pipeline = Pipeline([("crash", module.CrashOn()), ("final", LogisticRegression())]).fit(X, (X.a > 0).astype(int))
        return blackbox.save(pipeline, tmp_path_factory.mktemp("crash") / "crash.bbx", train_data=X, name="crash", version="1")


def test_jobs_give_the_one_process_output_and_rejects_byte_for_byte(scoring_artifact, scoring_rows, tmp_path):
    frame = pd.concat([scoring_rows] * 3, ignore_index=True)
    frame["pclass"] = frame["pclass"].astype(str)
    frame.loc[frame.index % 11 == 0, "pclass"] = "first"  # schema rejects in every chunk
    frame.loc[frame.index % 5 == 0, "age"] = 400.0  # warnings
    source = write_input(frame, tmp_path / "in.csv")
    outputs = {}
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}.csv"
        summary = scoring.score(scoring_artifact, source, out, chunk_size=97, id_column="passenger", on_error="skip",
                                jobs=jobs, allow_unsigned=True)
        assert summary.rows_read == len(frame) and summary.rows_rejected == len(frame.index[frame.index % 11 == 0])
        outputs[jobs] = (out.read_bytes(), (tmp_path / f"out{jobs}.rejects.csv").read_bytes())
    assert outputs[1] == outputs[2]
    assert len(outputs[2][0].splitlines()) == len(frame) - len(frame.index[frame.index % 11 == 0]) + 1


def test_a_worker_killed_by_the_model_fails_the_run_naming_its_rows(crash_artifact, tmp_path, capsys):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=300).round(6), "b": rng.normal(size=300).round(6)})
    frame.loc[149, "a"] = 12345.5  # row 150, in the third chunk of 64 rows
    source = write_input(frame, tmp_path / "in.csv")
    code = main(["score", str(crash_artifact), str(source), "-o", str(tmp_path / "out.csv"), "--jobs", "2",
                 "--chunk-size", "64", "--on-error", "skip"])
    err = capsys.readouterr().err
    assert code == 14, err
    first, last = (int(n) for n in err.split("died while scoring rows ")[1].split(" (1-based")[0].split(" to "))
    assert first <= 150 <= last and (first - 1) % 64 == 0 and (last % 64 == 0 or last == 300), err  # whole chunks
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]  # nothing published, no temporary file left


@pytest.mark.parametrize("options, message", [
    (["--jobs", "0"], "0 is not in the range x>=1"),
    (["--jobs", "2", "--engine", "dask"], "jobs applies to the local engine"),
])
def test_bad_jobs_are_usage_errors(options, message, scoring_artifact, scoring_rows, tmp_path, capsys):
    source = write_input(scoring_rows.head(5), tmp_path / "in.csv")
    assert main(["score", str(scoring_artifact), str(source), "-o", str(tmp_path / "out.csv"), *options]) == 2
    assert message in capsys.readouterr().err
