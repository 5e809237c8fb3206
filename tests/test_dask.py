"""Scale-out on Dask: batch scoring on workers, and the training search through joblib's Dask backend.

Both run on a local cluster of two separate worker processes and must give
exactly what a single process gives.
"""

from __future__ import annotations

import pytest

import blackbox
from blackbox import scoring
from blackbox.cli import main
from blackbox.signing import TRUSTED_KEYS_ENV

from _helpers import bad_rows, doctored, poisoned, write_input

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes that trust no key of their own: scoring works only if the driver's policy travels."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", env={TRUSTED_KEYS_ENV: ""}
    ) as local:
        yield local


def test_scoring_on_workers_equals_one_process(cluster, scoring_artifact, scoring_rows, tmp_path):
    source = write_input(bad_rows(scoring_rows, 600), tmp_path / "in.csv")
    options = {"chunk_size": 50, "id_column": "passenger", "on_error": "skip"}
    alone = scoring.score(scoring_artifact, source, tmp_path / "alone.csv", **options)
    spread = scoring.score(scoring_artifact, source, tmp_path / "spread.csv", engine="dask", scheduler=cluster.scheduler_address, **options)

    assert (tmp_path / "spread.csv").read_bytes() == (tmp_path / "alone.csv").read_bytes()
    assert (tmp_path / "spread.rejects.csv").read_bytes() == (tmp_path / "alone.rejects.csv").read_bytes()
    assert (spread.rows_read, spread.rows_rejected, spread.exit_code) == (alone.rows_read, alone.rows_rejected, 10)
    # 12 chunks, two worker processes: each loaded (and verified) the artifact once, not once per chunk.
    assert len(spread.worker_loads) == 2 and set(spread.worker_loads.values()) <= {0, 1}
    assert sum(spread.worker_loads.values()) >= 1


def test_cli_dask_engine_on_its_own_local_cluster(scoring_artifact, scoring_rows, tmp_path, capsys):
    source = write_input(scoring_rows, tmp_path / "in.parquet")
    assert main(["score", str(scoring_artifact), str(source), "-o", str(tmp_path / "alone.parquet")]) == 0
    assert main(["score", str(scoring_artifact), str(source), "-o", str(tmp_path / "spread.parquet"), "--engine", "dask"]) == 0
    assert (tmp_path / "spread.parquet").read_bytes() == (tmp_path / "alone.parquet").read_bytes()
    assert "model loads per Dask worker" in capsys.readouterr().out


def test_training_on_dask_gives_the_same_verified_artifact(cluster, tmp_path):
    from training.__main__ import train

    common = {"seed": 3, "small_grid": True, "verify": False, "quiet": True}
    alone = train(tmp_path / "alone.bbx", n_jobs=1, **common)
    spread = train(tmp_path / "spread.bbx", n_jobs=-1, backend="dask", scheduler=cluster.scheduler_address, **common)

    for key in ("best_params", "cv", "holdout"):
        assert spread[key] == alone[key], key
    made = [blackbox.inspect(tmp_path / name) for name in ("alone.bbx", "spread.bbx")]
    for key in ("estimator", "schema", "output", "golden"):
        assert made[0][key] == made[1][key], key
    outcome = blackbox.verify(tmp_path / "spread.bbx")
    assert outcome.ok, outcome.message


def test_dask_engine_refuses_an_artifact_failing_its_self_test(cluster, scoring_artifact, scoring_rows, tmp_path, capsys):
    bad = doctored(scoring_artifact, tmp_path / "doctored.bbx")
    source = write_input(scoring_rows.head(40), tmp_path / "in.csv")
    args = ["score", str(bad), str(source), "-o", str(tmp_path / "out.csv"), "--engine", "dask", "--scheduler", cluster.scheduler_address]
    assert main(args) == 7
    assert "golden-sample predictions" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doctored.bbx", "in.csv"]


def test_rows_the_model_rejects_on_workers_are_rejects_as_in_one_process(cluster, poison_artifact, tmp_path):
    source = write_input(poisoned(400, (5, 120, 121, 399)), tmp_path / "in.csv")
    options = {"chunk_size": 64, "on_error": "skip"}
    alone = scoring.score(poison_artifact, source, tmp_path / "alone.csv", **options)
    spread = scoring.score(poison_artifact, source, tmp_path / "spread.csv", engine="dask", scheduler=cluster.scheduler_address, **options)
    assert (spread.rows_rejected, spread.exit_code) == (alone.rows_rejected, 10) == (4, 10)
    assert (tmp_path / "spread.csv").read_bytes() == (tmp_path / "alone.csv").read_bytes()
    assert (tmp_path / "spread.rejects.csv").read_bytes() == (tmp_path / "alone.rejects.csv").read_bytes()
