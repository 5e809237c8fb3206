"""Shared fixtures: the real Titanic data, a small fitted search, and artifacts of both serializers."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
from sklearn.model_selection import train_test_split

import blackbox

SERIALIZERS = ["dill", "cloudpickle"]


@pytest.fixture(scope="session")
def titanic():
    from training.data import load_titanic

    X, y = load_titanic()
    return train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)


@pytest.fixture(scope="session")
def search(titanic):
    """A fitted GridSearchCV over the training package's pipeline (two families, small grid)."""
    from training.pipeline import search

    X_train, _, y_train, _ = titanic
    return search(X_train, y_train, seed=0, n_jobs=1, cv_folds=3, small=True)


@pytest.fixture(scope="session", params=SERIALIZERS)
def saved(request, search, titanic, tmp_path_factory) -> Path:
    """An artifact of the fitted search, saved with each serializer."""
    X_train, X_test, _, _ = titanic
    path = tmp_path_factory.mktemp("artifacts") / f"titanic-{request.param}.bbx"
    return blackbox.save(
        search,
        path,
        serializer=request.param,
        train_data=X_train,
        name="titanic",
        version="1.0.0",
        metrics={"holdout": {"accuracy": 0.8}},
        data_source="test-split",
        seed=0,
    )


def marker_payload(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when (and only when) it is unpickled."""

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Exploit(), protocol=5)


def child_env() -> dict[str, str]:
    """The environment for a child interpreter (no PYTHON* variables)."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


PYTHON = sys.executable
