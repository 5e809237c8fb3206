"""``blackbox score --jobs N``: chunks scored in local worker processes give the one-process output, byte for byte."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import blackbox
from blackbox import scoring
from blackbox.cli import main

from _helpers import PYTHON, child_env, user_module, wait_for, write_input

CRASH_SOURCE = '''
import os
import signal
import time

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

CRASH_AT = 12345.5
HANG_AT = 666.0


class CrashOn(BaseEstimator, TransformerMixin):
    """Passes its input through, except that the process segfaults on the value CRASH_AT in column a."""

    def fit(self, X, y=None):
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        a = np.asarray(X["a"], dtype=float)
        if (a == CRASH_AT).any():
            os.kill(os.getpid(), signal.SIGSEGV)
        if (a == HANG_AT).any() and os.environ.get("BBX_HANG_MARKER"):
            with open(os.environ["BBX_HANG_MARKER"], "w") as marker:
                marker.write(str(os.getpid()))
            time.sleep(3600)
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.parametrize("stop, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_stopping_the_run_while_a_worker_hangs_leaves_no_worker_and_no_file(stop, code, crash_artifact, tmp_path):
    """The parent alone gets the signal (as from `timeout`, systemd or kill), while a worker is stuck in the model."""
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"a": rng.normal(size=400).round(6), "b": rng.normal(size=400).round(6)})
    frame.loc[300, "a"] = 666.0
    source = write_input(frame, tmp_path / "in.csv")
    marker = tmp_path / "hung.pid"
    out = tmp_path / "out" / "scored.csv"
    out.parent.mkdir()
    log = tmp_path / "score.log"
    with log.open("w") as err:  # a file, not a pipe: a worker left behind would hold a pipe open
        process = subprocess.Popen([PYTHON, "-m", "blackbox", "score", str(crash_artifact), str(source), "-o", str(out),
                                    "--jobs", "2", "--chunk-size", "50", "--allow-unsigned"],
                                   env={**child_env(), "BBX_HANG_MARKER": str(marker)}, stderr=err)
    try:
        wait_for(lambda: marker.exists() and marker.read_text(), 120, what="a worker hanging in the model")
        hung = int(marker.read_text())
        process.send_signal(stop)
        assert process.wait(timeout=30) == code, log.read_text()
        wait_for(lambda: not _alive(hung), 15, what="the hung worker gone")
        assert os.listdir(out.parent) == [] or stop == signal.SIGKILL  # a killed parent cannot clean up; nothing is published
        assert not out.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if marker.exists() and marker.read_text() and _alive(int(marker.read_text())):
            os.kill(int(marker.read_text()), signal.SIGKILL)  # never leave a hung worker behind, even on failure
