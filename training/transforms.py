"""Custom transformers for Titanic features, written to scikit-learn's conventions.

They are classes (not closures) so they clone, pickle and show up in
``get_params`` like any scikit-learn estimator, which ``GridSearchCV`` and
blackbox both rely on. Conventions followed to the letter: keyword-only
``__init__`` parameters stored verbatim and validated in ``fit``; ``fit`` sets
``n_features_in_`` (and ``feature_names_in_`` for DataFrames) and returns
``self``; ``transform`` refuses to run unfitted; ``get_feature_names_out``
names the output. Both accept the 2-D slice a ``DataFrameMapper`` hands over
(a DataFrame such as ``df[["sibsp", "parch"]]``, or its ``.values``) and
return a 2-D array.

They are as cheap on one row as on many (a server transforms one record at a
time): the input the mapper hands over (a DataFrame with exactly the fitted
columns, or an array of the fitted width) is checked directly, and anything
else goes through scikit-learn's own ``validate_data``, so every error and
warning is scikit-learn's; the arithmetic is plain Python and numpy, no pandas
per call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

if TYPE_CHECKING:
    from sklearn.utils import Tags


def _input_feature_names(estimator: BaseEstimator, input_features: Iterable[Any] | None) -> list[str]:
    """The input names ``get_feature_names_out`` builds on, checked like scikit-learn does.

    Fitted on a DataFrame, the estimator knows its column names and
    ``input_features`` must match them; otherwise they default to x0, x1, ...
    (A public stand-in for scikit-learn's private ``_check_feature_names_in``.)
    """
    known = getattr(estimator, "feature_names_in_", None)
    if input_features is None:
        if known is not None:
            return list(known)
        return [f"x{i}" for i in range(estimator.n_features_in_)]
    names = [str(name) for name in input_features]
    if known is not None and names != list(known):
        raise ValueError("input_features is not equal to feature_names_in_")
    if len(names) != estimator.n_features_in_:
        raise ValueError(
            f"input_features should have length equal to number of features "
            f"({estimator.n_features_in_}), got {len(names)}"
        )
    return names


def _validated(estimator: BaseEstimator, X: Any, numeric: bool) -> np.ndarray:
    """What ``validate_data(estimator, X, reset=False, ...)`` returns in ``transform``, checked cheaply when it can be.

    The cheap cases are the inputs a mapper hands over: a DataFrame with exactly
    the fitted column names (of numpy dtypes, or strings for ``numeric=False``),
    or an object/numeric ndarray of the fitted width for an estimator fitted
    without names; at least one row. ``numeric`` mirrors
    ``dtype=[np.float64, np.float32], ensure_all_finite="allow-nan"`` (the
    common dtype kept when it is one of those, else float64; infinity refused),
    otherwise ``dtype=None, ensure_all_finite=False``. Any other input, or one
    that would be refused, is handed to ``validate_data``, which raises or warns.
    """
    values = _direct(estimator, X, numeric)
    if values is None:
        if numeric:
            return validate_data(estimator, X, reset=False, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
        return validate_data(estimator, X, reset=False, dtype=None, ensure_all_finite=False)
    return values


def _direct(estimator: BaseEstimator, X: Any, numeric: bool) -> np.ndarray | None:
    names = getattr(estimator, "feature_names_in_", None)
    if type(X) is pd.DataFrame:
        if names is None or len(X) == 0 or list(X.columns) != names.tolist():
            return None
        dtypes = X.dtypes.tolist()
        if numeric:
            if not all(isinstance(d, np.dtype) and d.kind in "iuf" for d in dtypes):
                return None
            common = np.result_type(*dtypes)
            values = X.to_numpy(dtype=common if common in (np.float64, np.float32) else np.float64)
        else:
            if not all(isinstance(d, np.dtype) and d.kind in "iufO" or isinstance(d, pd.StringDtype) for d in dtypes):
                return None
            values = np.empty(X.shape, dtype=object)
            for j, (_, column) in enumerate(X.items()):
                values[:, j] = list(column.array)
    elif type(X) is np.ndarray:
        if names is not None or X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != estimator.n_features_in_:
            return None
        if numeric:
            if X.dtype.kind not in "iuf":
                return None
            values = X if X.dtype in (np.float64, np.float32) else X.astype(np.float64)
        elif X.dtype == object:
            values = X
        else:
            return None
    else:
        return None
    if numeric and np.isinf(values).any():
        return None  # validate_data raises its own error
    return values


class FamilySize(TransformerMixin, BaseEstimator):
    """Size of the family travelling together: the sum of the relatives columns (+1 for self).

    Fed ``sibsp`` (siblings/spouses) and ``parch`` (parents/children), it gives
    ``sibsp + parch + 1``. Passengers alone and in very large families fared
    worse than small families, which neither count shows by itself. A missing
    count is taken as 0 relatives rather than dropping the passenger.

    Parameters
    ----------
    include_self : bool, default=True
        Add 1 for the passenger themself.
    """

    def __init__(self, *, include_self: bool = True) -> None:
        self.include_self = include_self

    def fit(self, X: Any, y: Any = None) -> FamilySize:
        """Check the input and the parameters; learns nothing else."""
        if not isinstance(self.include_self, (bool, np.bool_)):
            raise TypeError(f"include_self must be a bool, got {self.include_self!r}")
        validate_data(self, X, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan")
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Return the row-wise family size as an ``(n_samples, 1)`` array."""
        check_is_fitted(self)
        X = _validated(self, X, numeric=True)
        size = np.nansum(X, axis=1, keepdims=True)
        if self.include_self:
            size += 1
        return size

    def get_feature_names_out(self, input_features: Iterable[Any] | None = None) -> np.ndarray:
        """One output column, ``family_size``."""
        check_is_fitted(self)
        _input_feature_names(self, input_features)
        return np.asarray(["family_size"], dtype=object)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


#: Spellings of the common titles that mean the same thing.
TITLE_ALIASES: Mapping[str, str] = {"Mlle": "Miss", "Ms": "Miss", "Mme": "Mrs"}
#: "Surname, Title. Given names": the title sits between the comma and the first dot.
_TITLE_PATTERN = r",\s*([^,.]+?)\s*\."
_TITLE = re.compile(_TITLE_PATTERN)


class TitleExtractor(TransformerMixin, BaseEstimator):
    """Honorific title from a passenger name: ``"Allen, Miss. Elisabeth Walton"`` -> ``"Miss"``.

    The title carries sex, age and social class at once (a "Master" is a boy),
    and, unlike age, it is never missing from the passenger list. Spellings
    are normalised (Mlle/Ms -> Miss, Mme -> Mrs); titles outside ``keep``
    (Dr, Rev, Col, the Countess, ...) are too rare to learn from one by one
    and become ``rare``; a missing or title-less name becomes ``missing``.

    Each input column is a column of names and gives one output column of
    strings, ready for a ``OneHotEncoder``.

    Parameters
    ----------
    keep : iterable of str, default=("Mr", "Mrs", "Miss", "Master")
        Titles kept as they are.
    rare : str, default="Rare"
        Label for any other title.
    missing : str, default="Unknown"
        Label for a missing name or one without a recognisable title.
    """

    def __init__(
        self,
        *,
        keep: Iterable[str] = ("Mr", "Mrs", "Miss", "Master"),
        rare: str = "Rare",
        missing: str = "Unknown",
    ) -> None:
        self.keep = keep
        self.rare = rare
        self.missing = missing

    def fit(self, X: Any, y: Any = None) -> TitleExtractor:
        """Check the input and the parameters; learns nothing else."""
        keep = [self.keep] if isinstance(self.keep, str) else list(self.keep)
        if not all(isinstance(t, str) for t in keep):
            raise TypeError(f"keep must be an iterable of str, got {self.keep!r}")
        for param in ("rare", "missing"):
            if not isinstance(getattr(self, param), str):
                raise TypeError(f"{param} must be a str, got {getattr(self, param)!r}")
        validate_data(self, X, dtype=None, ensure_all_finite=False)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Return the titles as an ``(n_samples, n_features)`` object array of str."""
        check_is_fitted(self)
        X = _validated(self, X, numeric=False)
        keep = {self.keep} if isinstance(self.keep, str) else set(self.keep)
        out = np.empty(X.shape, dtype=object)
        for j in range(X.shape[1]):
            out[:, j] = [self._label(value, keep) for value in X[:, j].tolist()]
        return out

    def _label(self, name: Any, keep: set[str]) -> str:
        # Anything that is not a string (None, NaN, a stray number) counts as a missing name.
        match = _TITLE.search(name) if isinstance(name, str) else None
        if match is None:
            return self.missing
        title = TITLE_ALIASES.get(match.group(1), match.group(1))
        return title if title in keep else self.rare

    def get_feature_names_out(self, input_features: Iterable[Any] | None = None) -> np.ndarray:
        """``<input>_title`` for each input column."""
        check_is_fitted(self)
        names = _input_feature_names(self, input_features)
        return np.asarray([f"{name}_title" for name in names], dtype=object)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = []  # outputs strings, whatever comes in
        return tags
