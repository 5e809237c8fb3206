"""The model, the hyper-parameter grid and the cross-validated search.

The grid swaps the whole ``model`` step, so one ``GridSearchCV`` compares
model families (a linear model against a forest) and their settings on the
same folds. Every source of randomness takes ``seed``, so a given seed always
gives the same folds, the same forests and therefore the same winner.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import joblib
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from training.features import build_mapper

#: The metric the search ranks candidates by and refits the winner on.
SCORING = "roc_auc"


def _logistic_regression(seed: int) -> LogisticRegression:
    return LogisticRegression(max_iter=1000, random_state=seed)


def _random_forest(seed: int) -> RandomForestClassifier:
    # n_jobs stays 1: the search already runs candidates in parallel processes.
    return RandomForestClassifier(random_state=seed)


def build_pipeline(columns: Iterable[str], seed: int) -> Pipeline:
    """Features (``DataFrameMapper``) followed by a model; the search may replace the model."""
    return Pipeline([("mapper", build_mapper(columns)), ("model", _logistic_regression(seed))])


def param_grid(seed: int, small: bool = False) -> list[dict[str, list[Any]]]:
    """The search space: logistic regression and random forest, each with a few settings.

    ``small=True`` keeps both families but only 3 candidates, for fast CI runs.
    """
    if small:
        return [
            {"model": [_logistic_regression(seed)], "model__C": [0.1, 1.0]},
            {
                "model": [_random_forest(seed)],
                "model__n_estimators": [50],
                "model__max_depth": [5],
            },
        ]
    return [
        {"model": [_logistic_regression(seed)], "model__C": [0.01, 0.1, 1.0, 10.0]},
        {
            "model": [_random_forest(seed)],
            "model__n_estimators": [100, 300],
            "model__max_depth": [4, 6, None],
            "model__min_samples_leaf": [1, 3],
        },
    ]


def n_candidates(grid: list[dict[str, list[Any]]]) -> int:
    """How many parameter combinations a list-of-dicts grid holds."""
    total = 0
    for part in grid:
        count = 1
        for values in part.values():
            count *= len(values)
        total += count
    return total


@contextlib.contextmanager
def parallel_backend(backend: str = "loky", scheduler: str | None = None) -> Iterator[None]:
    """Where the search's fits run: loky processes on this machine, or a Dask cluster.

    ``dask`` runs them through joblib's Dask backend on the scheduler at
    ``scheduler``, or on a local cluster of worker processes; the fitted search,
    and so the artifact, is the same either way.
    """
    if backend == "loky":
        yield
        return
    from blackbox.scoring import dask_client

    with dask_client(scheduler), joblib.parallel_config(backend="dask"):
        yield


def search(
    X: pd.DataFrame,
    y: pd.Series,
    *,
    seed: int,
    n_jobs: int | None = -1,
    cv_folds: int = 5,
    small: bool = False,
) -> GridSearchCV:
    """Cross-validated grid search over :func:`param_grid`; returns the fitted search.

    Folds are stratified and shuffled with ``seed``; candidates are ranked by
    ROC AUC and the best one is refit on all of ``X``. ``n_jobs=-1`` runs the
    fits in loky worker processes, which must unpickle the ``DataFrameMapper``
    (and this package's transformers) on their own. ``error_score="raise"``:
    a failing candidate is a bug to see, not a score of NaN to skip.
    """
    grid = GridSearchCV(
        build_pipeline(X.columns, seed),
        param_grid(seed, small=small),
        scoring=SCORING,
        refit=True,
        cv=StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed),
        n_jobs=n_jobs,
        error_score="raise",
    )
    return grid.fit(X, y)
