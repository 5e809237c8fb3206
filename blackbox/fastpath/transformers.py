"""Compiled scikit-learn transformers: the fitted attributes applied with the estimator's own arithmetic.

Scope: SimpleImputer, StandardScaler, MinMaxScaler, RobustScaler, MaxAbsScaler,
OneHotEncoder, OrdinalEncoder and FunctionTransformer, each for the settings listed in its ``compile``; any other
setting raises :class:`~blackbox.fastpath.base.Unsupported` (the step then runs
the reference way). Rules:

* Inputs are 2-D ndarrays (what the containers hand an ``"array"`` node). The
  dtype the step was verified with is recorded; any other dtype defers.
* Each node copies before it writes: the caller's arrays are never changed.
* Where scikit-learn's ``check_array`` would refuse an input (infinity for a
  scaler or imputer, a non-string in a column of string categories), the node
  defers, so the reference raises its own error.
* Warnings scikit-learn emits (OneHotEncoder's "unknown categories") are not
  repeated; the numbers are the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .base import Defer, Node, Unsupported


def _checked(X: Any, dtype: np.dtype, width: int) -> np.ndarray:
    if type(X) is not np.ndarray or X.dtype != dtype or X.ndim != 2 or X.shape[1] != width:
        raise Defer("input is not the array the step was verified with")
    return X


def _no_infinity(X: np.ndarray) -> None:
    if X.dtype.kind == "f" and np.isinf(X).any():
        raise Defer("infinity: scikit-learn refuses it")


class Imputer(Node):
    """``SimpleImputer`` with ``missing_values=np.nan``, no indicator, no empty (all-missing) feature."""

    def __init__(self, step: Any, path: str, dtype: np.dtype) -> None:
        super().__init__(step, path)
        if step.add_indicator:
            raise Unsupported("add_indicator=True")
        if not (isinstance(step.missing_values, float) and np.isnan(step.missing_values)):
            raise Unsupported(f"missing_values={step.missing_values!r} (only NaN is compiled)")
        statistics = np.asarray(step.statistics_)
        if statistics.dtype.kind == "f" and np.isnan(statistics).any() or statistics.dtype == object and any(
            v != v for v in statistics
        ):
            raise Unsupported("a feature was all missing in training (scikit-learn drops or keeps it)")
        self.out_dtype = np.dtype(np.float64) if dtype.kind in "biu" and step.strategy in ("mean", "median") else dtype
        if dtype.kind not in "biufO":
            raise Unsupported(f"input dtype {dtype}")
        self.dtype, self.width = dtype, len(statistics)
        self.statistics = statistics

    def transform(self, X: Any) -> np.ndarray:
        X = _checked(X, self.dtype, self.width)
        if X.dtype.kind in "biu":  # no NaN fits in an integer array: nothing to impute
            out: np.ndarray = X.astype(self.out_dtype)
            return out
        if X.dtype.kind == "f" and np.isfinite(X).all():  # nothing missing, nothing refused: the copy as it is
            copied: np.ndarray = X.copy()
            return copied
        _no_infinity(X)
        out = X.copy()
        mask = out != out  # NaN, as scikit-learn's _get_mask finds it for float and object arrays
        if mask.any():
            rows, cols = np.nonzero(mask)
            out[rows, cols] = self.statistics[cols]
        return out


class Scaler(Node):
    """``StandardScaler``, ``MinMaxScaler``, ``RobustScaler``, ``MaxAbsScaler`` (dense): in-place arithmetic on a float copy, as scikit-learn does."""

    def __init__(self, step: Any, path: str, dtype: np.dtype) -> None:
        super().__init__(step, path)
        from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler

        if dtype.kind not in "biuf":
            raise Unsupported(f"input dtype {dtype}")
        self.dtype, self.width = dtype, int(step.n_features_in_)
        self.out_dtype = dtype if dtype.kind == "f" else np.dtype(np.float64)
        if type(step) is StandardScaler:
            self.ops = [op for op in (("sub", step.mean_) if step.with_mean else None,
                                      ("div", step.scale_) if step.with_std else None) if op]
            self.clip = None
        elif type(step) is MinMaxScaler:
            self.ops = [("mul", step.scale_), ("add", step.min_)]
            self.clip = step.feature_range if step.clip else None
        elif type(step) is RobustScaler:
            self.ops = [op for op in (("sub", step.center_) if step.with_centering else None,
                                      ("div", step.scale_) if step.with_scaling else None) if op]
            self.clip = None
        elif type(step) is MaxAbsScaler:
            self.ops, self.clip = [("div", step.scale_)], None
        else:
            raise Unsupported("not a StandardScaler, MinMaxScaler, RobustScaler or MaxAbsScaler")

    def transform(self, X: Any) -> np.ndarray:
        X = _checked(X, self.dtype, self.width)
        _no_infinity(X)
        out: np.ndarray = X.astype(self.out_dtype)  # a copy, like check_array(copy=True)
        for op, value in self.ops:
            if op == "sub":
                out -= value
            elif op == "div":
                out /= value
            elif op == "mul":
                out *= value
            else:
                out += value
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out


class OneHot(Node):
    """``OneHotEncoder``: no ``drop``, no infrequent categories, unknown categories as zeros; always a dense output.

    With ``sparse_output=True`` (the encoder's default) it is the ``toarray()``
    of the encoder's output, built only where that is what the next step gets
    (see ``compiler.transformer``'s ``dense``).
    """

    def __init__(self, step: Any, path: str, dtype: np.dtype) -> None:
        super().__init__(step, path)
        if step.handle_unknown not in ("ignore", "infrequent_if_exist", "warn"):
            raise Unsupported(f"handle_unknown={step.handle_unknown!r}")
        if step.drop is not None or getattr(step, "drop_idx_", None) is not None:
            raise Unsupported(f"drop={step.drop!r}")
        self.out_dtype = np.dtype(step.dtype)
        self._read(dtype)

    def _read(self, dtype: np.dtype) -> None:
        self.dtype, self.width, self.features = _encoder_input(self.step, dtype)
        self.offsets = np.cumsum([0] + [len(c) for c in self.step.categories_]).tolist()
        self.n_out = self.offsets.pop()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A node pickled before the encoders shared one reading of the categories held ``lookups`` (output columns,
        in artifacts saved until f7794e1): read the categories again from the fitted encoder it holds."""
        self.__dict__.update(state)
        if "features" not in state:
            del self.__dict__["lookups"]
            self._read(self.dtype)

    def transform(self, X: Any) -> np.ndarray:
        X = _checked(X, self.dtype, self.width)
        _no_infinity(X)
        out = np.zeros((X.shape[0], self.n_out), dtype=self.out_dtype)
        for j, (feature, offset) in enumerate(zip(self.features, self.offsets)):
            column = X[:, j]
            found = _found(column, *feature) if len(column) > COLUMNWISE_ROWS else None
            if found is not None:
                rows = np.flatnonzero(found >= 0)
                out[rows, offset + found[rows]] = 1
                continue
            for i, value in enumerate(column.tolist()):
                at = _position(value, *feature)
                if at is not None:
                    out[i, offset + at] = 1
        return out


class Ordinal(Node):
    """``OrdinalEncoder``: each category's index; NaN as ``encoded_missing_value``; no infrequent categories.

    An unseen category is ``unknown_value`` with ``handle_unknown="use_encoded_value"``;
    with ``"error"`` it defers, so the reference raises its own error.
    """

    def __init__(self, step: Any, path: str, dtype: np.dtype) -> None:
        super().__init__(step, path)
        self.dtype, self.width, self.features = _encoder_input(step, dtype)
        self.out_dtype = np.dtype(step.dtype)
        self.unknown = step.unknown_value if step.handle_unknown == "use_encoded_value" else None
        self.missing = step.encoded_missing_value

    def transform(self, X: Any) -> np.ndarray:
        X = _checked(X, self.dtype, self.width)
        _no_infinity(X)
        out = np.empty((X.shape[0], self.width), dtype=self.out_dtype)
        for j, feature in enumerate(self.features):
            column = X[:, j]
            found = _found(column, *feature) if len(column) > COLUMNWISE_ROWS else None
            if found is None:
                positions = (_position(value, *feature) for value in column.tolist())
                found = np.array([-1 if at is None else at for at in positions], dtype=np.intp)
            unseen = found < 0
            if unseen.any() and self.unknown is None:
                raise Defer("an unseen category: the encoder (handle_unknown='error') refuses it")
            out[:, j] = found
            if feature[1] is not None:
                out[found == feature[1], j] = self.missing
            if unseen.any():  # None (handle_unknown='error') fits no integer output, even written nowhere
                out[unseen, j] = self.unknown
        return out


Feature = tuple[dict[Any, int], int | None, str | None]
"""One encoder input column's categories: each one's index (NaN's apart), NaN's index (None: not a category),
and the categories' kind ("str", "number", or None for a numeric dtype)."""


def _encoder_input(step: Any, dtype: np.dtype) -> tuple[np.dtype, int, list[Feature]]:
    """The input an encoder's node takes (dtype, width) and its features' categories; Unsupported for the rest."""
    if getattr(step, "_infrequent_enabled", False):
        raise Unsupported("infrequent categories (min_frequency / max_categories)")
    if dtype.kind not in "biufO":
        raise Unsupported(f"input dtype {dtype}")
    features = []
    for categories in step.categories_:
        values = list(categories)
        nan_at = None
        if values and isinstance(values[-1], (float, np.floating)) and values[-1] != values[-1]:  # float32's NaN too
            nan_at, values = len(values) - 1, values[:-1]
        kind = _object_kind(values) if categories.dtype == object else None
        if categories.dtype == object and kind is None:
            raise Unsupported("object categories that are neither all strings nor all numbers")
        if categories.dtype != object and categories.dtype.kind not in "biuf":
            raise Unsupported(f"categories of dtype {categories.dtype}")
        features.append(({v: i for i, v in enumerate(values)}, nan_at, kind))
    return dtype, len(features), features


def _position(value: Any, lookup: dict[Any, int], nan_at: int | None, kind: str | None) -> int | None:
    """The index of ``value``'s category (None: unseen); a value of another type than the categories' defers.

    Only a float NaN is the missing category, as scikit-learn's ``is_scalar_nan`` says: pd.NA (no truth value)
    and pd.NaT (unequal to itself) are other types. Numeric categories (``kind`` None) take numbers, and bools
    of a bool column.
    """
    of = _value_kind(value)
    if of == "number" and value != value:
        return nan_at
    if of != (kind or "number") and not (kind is None and isinstance(value, (bool, np.bool_))):
        raise Defer(f"a value of type {type(value).__name__} among categories of another type: the reference decides")
    return lookup.get(value)


COLUMNWISE_ROWS = 64
"""Rows above which a column is encoded column-wise (batch scoring's chunks), not value by value."""


def _found(column: np.ndarray, lookup: dict[Any, int], nan_at: int | None, kind: str | None) -> np.ndarray | None:
    """Every value's :func:`_position` at once (-1: unseen), or None where only the value-by-value loop answers.

    Strings (with float NaNs) are found by one hash lookup, numbers by one
    sorted search; anything else (a number among strings: the loop defers) is None.
    """
    if kind == "str":
        types = set(map(type, column))
        if not types <= {str, float}:
            return None
        missing = np.zeros(len(column), dtype=bool)
        if float in types:
            missing = np.fromiter(map(float.__instancecheck__, column), dtype=bool, count=len(column))
            if not all(v != v for v in column[missing].tolist()):
                return None
        found = np.full(len(column), -1 if nan_at is None else nan_at, dtype=np.intp)
        rows = np.flatnonzero(~missing)
        found[rows] = pd.Index(list(lookup), dtype=object).get_indexer(column[rows])
        return found
    keys = np.array(list(lookup), dtype=object)
    if column.dtype.kind not in "iuf" or not all(type(k) in (int, float) or isinstance(k, (np.integer, np.floating)) for k in keys):
        return None
    numbers = keys.astype(np.float64)
    if not (len(numbers) and np.isfinite(numbers).all() and (np.abs(numbers) < 2.0**53).all() and (numbers == keys).all()):
        return None
    values = column.astype(np.float64)
    if column.dtype.kind in "iu" and not (np.abs(values) < 2.0**53).all():
        return None
    order = np.argsort(numbers, kind="stable")
    ranked = numbers[order]
    at = np.minimum(np.searchsorted(ranked, values), len(ranked) - 1)
    found = np.where(ranked[at] == values, order[at], -1)  # NaN never equals
    if nan_at is not None:
        found[np.isnan(values)] = nan_at
    return found


def _value_kind(value: Any) -> str | None:
    """``_object_kind([value])``, without the list (a one-row call checks every value)."""
    if type(value) is str:
        return "str"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return "number"
    return None


def _object_kind(values: list[Any]) -> str | None:
    """``"str"`` or ``"number"`` when every value is one (bools are neither), else None."""
    if all(type(v) is str for v in values):
        return "str"
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in values):
        return "number"
    return None


class Function(Node):
    """``FunctionTransformer(validate=False)``: the user's function called as it is."""

    form = "reference"

    def __init__(self, step: Any, path: str) -> None:
        super().__init__(step, path)
        if step.validate:
            raise Unsupported("validate=True")
        if getattr(step, "_sklearn_output_config", {}).get("transform", "default") != "default":
            raise Unsupported("set_output(transform=...) other than the default")
        self.func = step.func if step.func is not None else None
        self.kw_args = step.kw_args or {}

    def transform(self, X: Any) -> Any:
        return X if self.func is None else self.func(X, **self.kw_args)
