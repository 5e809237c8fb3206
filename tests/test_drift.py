"""Drift against the training profile: near zero on held-out data, clearly positive on a shift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import blackbox
from blackbox.monitoring import drift


@pytest.fixture(scope="module")
def profile(saved):
    return blackbox.inspect(saved)["profile"]


def test_the_profile_is_recorded_for_every_input(profile, titanic):
    X_train, *_ = titanic
    assert set(profile) == set(X_train.columns)
    assert profile["age"]["kind"] == "numeric" and profile["age"]["missing_rate"] == pytest.approx(X_train["age"].isna().mean())
    assert sum(profile["age"]["shares"]) == pytest.approx(1.0)
    assert profile["embarked"]["kind"] == "categorical" and set(profile["embarked"]["shares"]) == {"C", "Q", "S"}
    assert profile["name"] == {"kind": "text", "missing_rate": 0.0}


def test_holdout_data_shows_no_drift(profile, titanic):
    _, X_test, *_ = titanic
    report = drift.compare(profile, X_test)
    assert max(r["psi"] for r in report.values() if r.get("psi") is not None) < 0.1
    assert report["embarked"]["unseen_share"] == 0.0


def test_shifted_ages_and_a_new_port_show_drift(profile, titanic):
    _, X_test, *_ = titanic
    shifted = X_test.copy()
    shifted["age"] = shifted["age"] + 20
    shifted["embarked"] = np.where(np.arange(len(shifted)) % 2 == 0, "X", shifted["embarked"])
    report = drift.compare(profile, shifted)
    assert report["age"]["psi"] > 0.5
    assert report["embarked"]["unseen_share"] == pytest.approx(0.5, abs=0.01)
    assert report["embarked"]["psi"] > 0.25
    assert report["fare"]["psi"] < 0.1  # untouched features stay quiet


def test_missing_rates_are_reported(profile, titanic):
    _, X_test, *_ = titanic
    gappy = X_test.copy()
    gappy.loc[gappy.index[: len(gappy) // 2], "age"] = np.nan
    assert drift.compare(profile, gappy)["age"]["missing_rate"] >= 0.5


def test_psi_is_zero_for_identical_shares_and_symmetric_in_sign():
    shares = np.array([0.2, 0.3, 0.5])
    assert drift.psi(shares, shares) == 0.0
    assert drift.psi(shares, np.array([0.5, 0.3, 0.2])) > 0
    assert drift.compare({"x": {"kind": "numeric", "missing_rate": 0.0, "edges": [1.0], "shares": [0.5, 0.5]}},
                         pd.DataFrame({"x": [np.nan]}))["x"]["psi"] is None


def test_integer_features_are_binned_by_their_values(profile, titanic):
    _, X_test, *_ = titanic
    report = drift.compare(profile, X_test)
    assert profile["pclass"]["integer"] is True and report["pclass"]["bins"] == ["<= 1", "2", ">= 3"]
    assert all(share > 0.1 for share in profile["pclass"]["shares"])  # no empty "< 1" bin
    sibsp = report["sibsp"]["bins"]
    top = int(X_test["sibsp"].max())
    assert sibsp[:3] == ["<= 0", "1", "2"] and sibsp[-1] == f">= {int(titanic[0]['sibsp'].max())}"
    assert not any(label.startswith("< ") or "." in label for label in sibsp)  # every integer its own bin
    assert sum(report["sibsp"]["live_shares"]) == pytest.approx(1.0) and top >= 1
    assert report["age"]["bins"][0].startswith("< ")  # numbers with a fraction keep their decile bins


def test_a_wide_integer_range_gets_integer_ranges():
    from blackbox.schema import infer_schema

    frame = pd.DataFrame({"count": np.arange(1000, dtype="int64")})
    profile = drift.profile(frame, infer_schema(frame))["count"]
    labels = drift.compare({"count": profile}, frame)["count"]["bins"]
    assert labels[0] == "<= 99" and labels[1] == "100 to 199" and labels[-1] == ">= 900" and len(labels) == 10
    assert profile["shares"] == pytest.approx([0.1] * 10)
    old = {key: value for key, value in profile.items() if key != "integer"}  # a profile saved before: its old labels
    assert drift.compare({"count": old}, frame)["count"]["bins"] == drift.bin_labels(profile["edges"])
