"""Feature functions and the ``DataFrameMapper`` that turns a passenger table into a matrix.

Everything here is a named, module-level object (functions, ``functools.partial``
of functions, transformer classes): never a lambda. Named objects pickle by
reference, show up readably in ``repr`` and ``get_params``, and can be carried
into the artifact by value; a lambda is anonymous and fragile to serialise.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn_pandas import DataFrameMapper

from training.data import REQUIRED_FEATURES, DataError
from training.transforms import FamilySize, TitleExtractor

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


def _as_2d_float(x: ArrayLike) -> np.ndarray:
    values = np.asarray(x, dtype=float)
    return values.reshape(-1, 1) if values.ndim == 1 else values


def is_bigger_than(x: ArrayLike, threshold: float) -> np.ndarray:
    """1 where ``x > threshold``, else 0 (missing values count as 0), as a 2-D int array.

    Vectorised so ``FunctionTransformer`` can call it on a whole column at once;
    a 1-D input becomes one column.
    """
    values = _as_2d_float(x)
    with np.errstate(invalid="ignore"):
        return (values > threshold).astype(np.int64)  # NaN > t is False


#: Adult passengers (older than 18): "women and children first" made this matter.
is_adult = partial(is_bigger_than, threshold=18)


def log1p_nonnegative(x: ArrayLike) -> np.ndarray:
    """``log(1 + x)`` with negatives clipped to 0, as a 2-D float array.

    Fares are heavily right-skewed (a few first-class suites cost 30x a berth);
    the log keeps those from dominating a linear model. Clipping makes a
    nonsensical negative fare harmless instead of ``-inf``/``NaN``.
    """
    return np.log1p(np.clip(_as_2d_float(x), 0.0, None))


def build_mapper(columns: Iterable[str]) -> DataFrameMapper:
    """The feature mapper for a table with ``columns``.

    One entry per feature, each with an alias so ``transformed_names_`` reads
    well (``age``, ``is_adult``, ``fare``, ``family_size``, ``sex_0``, ...).
    The title feature is included only when a ``name`` column exists, so the
    same code serves the OpenML data (with names) and the Kaggle CSV (without).
    """
    columns = list(columns)
    missing = [c for c in REQUIRED_FEATURES if c not in columns]
    if missing:
        raise DataError(f"cannot build features: missing column(s) {', '.join(missing)}")

    def one_hot() -> OneHotEncoder:
        # Categories unseen at training time encode as all zeros instead of failing.
        return OneHotEncoder(handle_unknown="ignore", sparse_output=False)

    features = [
        (["age"], [SimpleImputer(strategy="median"), StandardScaler()], {"alias": "age"}),
        (["age"], FunctionTransformer(is_adult), {"alias": "is_adult"}),
        (
            ["fare"],
            [SimpleImputer(strategy="median"), FunctionTransformer(log1p_nonnegative), StandardScaler()],
            {"alias": "log_fare"},
        ),
        (
            ["sibsp", "parch"],
            [FamilySize(), StandardScaler()],
            {"alias": "family_size", "input_df": True},
        ),
        (["sex"], [SimpleImputer(strategy="most_frequent"), one_hot()], {"alias": "sex"}),
        (["embarked"], [SimpleImputer(strategy="most_frequent"), one_hot()], {"alias": "embarked"}),
        (["pclass"], [SimpleImputer(strategy="most_frequent"), one_hot()], {"alias": "pclass"}),
    ]
    if "name" in columns:
        features.append((["name"], [TitleExtractor(), one_hot()], {"alias": "title", "input_df": True}))
    return DataFrameMapper(features, df_out=False)
