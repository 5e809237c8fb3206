"""From a fitted pipeline to nodes: each step compiled, then proved on the verification rows, or run as it is.

Scope: choosing a node for every fitted object and checking it in isolation.
Every node is built from the step's fitted attributes and the input the step
really receives on the verification rows (traced through the reference), then
run on that same input: a transformer must give the reference's output bit
for bit, a final estimator the same labels and probabilities within 1e-9.
Anything that fails, raises, or is not compiled runs as it is:

* the user's own classes (not scikit-learn's or sklearn-pandas') are called
  as they are, with the input they expect (``mode: called``), by design;
* a library step without a compiler, with settings outside the compiled ones,
  or that did not match, runs the reference way (``mode: reference``) and the
  record says why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from . import boosting, estimators, transformers
from .base import Called, Defer, Node, Unsupported, is_library_object
from .composites import FRAME, SERIES, VALUES, VECTOR, Chain, Columns, Identity, Slice
from .table import Table

TOLERANCE = 1e-9
"""Largest absolute difference in a probability or regression output accepted (the self-test's)."""


def _leaf_builders() -> dict[type, Callable[[Any, str, np.dtype], Node]]:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import (
        MaxAbsScaler,
        MinMaxScaler,
        OneHotEncoder,
        OrdinalEncoder,
        RobustScaler,
        StandardScaler,
    )

    return {SimpleImputer: transformers.Imputer, StandardScaler: transformers.Scaler, MinMaxScaler: transformers.Scaler,
            RobustScaler: transformers.Scaler, MaxAbsScaler: transformers.Scaler, OneHotEncoder: transformers.OneHot,
            OrdinalEncoder: transformers.Ordinal}


def _fallback(step: Any, path: str, reason: str) -> Called:
    if is_library_object(step):
        return Called(step, path, "reference", reason)
    return Called(step, path, "called")


def same(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of two outputs (NaN equal to NaN), including dtype and shape (and a sparse matrix's format)."""
    if isinstance(a, (pd.DataFrame, pd.Series)) or isinstance(b, (pd.DataFrame, pd.Series)):
        return type(a) is type(b) and a.equals(b) and _dtypes(a) == _dtypes(b)
    from scipy import sparse

    if sparse.issparse(a) or sparse.issparse(b):
        if type(a) is not type(b) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        differ = (a != b).tocoo()  # not ==, which would list every equal zero (scipy warns)
        if a.dtype.kind != "f" or not differ.nnz:
            return not differ.nnz
        at = differ.row, differ.col
        return bool(np.isnan(a.tocsr()[at]).all() and np.isnan(b.tocsr()[at]).all())
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    if a.dtype == object:
        return all(x == y or (x != x and y != y) for x, y in zip(a.ravel().tolist(), b.ravel().tolist()))
    return bool(np.array_equal(a, b))


def _dtypes(data: pd.DataFrame | pd.Series) -> list[Any]:
    return list(data.dtypes) if isinstance(data, pd.DataFrame) else [data.dtype]


def close(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.all(np.abs(a - b) <= TOLERANCE) or np.array_equal(a, b, equal_nan=True))
    return same(a, b)


def transformer(step: Any, path: str, ref_in: Any, arr_in: Any, *, dense: bool = False) -> Node:
    """A verified node for a transformer receiving ``ref_in`` (its own input) and ``arr_in`` (the same as values, or None).

    ``dense``: its container makes its output an array (a ColumnTransformer
    with a dense output calls ``toarray()`` on a sparse part), so the node is
    held to that array and may compute it directly.
    """
    expected = _kept(step.transform(ref_in), dense)
    try:
        node = _build(step, path, ref_in, arr_in, dense)
    except Unsupported as exc:
        return _fallback(step, path, str(exc))
    if isinstance(node, Called):
        return node
    given = arr_in if node.form == "array" else ref_in
    if given is None:
        return _fallback(step, path, "its input is a single column (1-D), which the compiled step does not take")
    try:
        got = _kept(node.transform(given), dense)
    except Defer as exc:
        return _fallback(step, path, f"deferred on the verification rows: {exc}")
    except Exception as exc:  # noqa: BLE001 - any failure of compiled code means: run the reference
        return _fallback(step, path, f"compiled step failed: {exc!r}")
    if not same(got, expected):
        return _fallback(step, path, "its output differed from the reference's on the verification rows")
    return node


def _kept(out: Any, dense: bool) -> Any:
    """What the container keeps of a step's output: its ``toarray()`` where ``dense`` and it is sparse, else itself."""
    from scipy import sparse

    return out.toarray() if dense and sparse.issparse(out) else out


def _build(step: Any, path: str, ref_in: Any, arr_in: Any, dense: bool) -> Node:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    builder = _leaf_builders().get(type(step))
    if builder is not None:
        if not isinstance(arr_in, np.ndarray) or arr_in.ndim != 2:
            raise Unsupported("its input is not a 2-D array of values")
        if getattr(step, "sparse_output", False) and not dense:
            raise Unsupported("sparse_output=True where the next step gets the sparse matrix "
                              "(compiled inside a ColumnTransformer whose output is dense)")
        return builder(step, path, arr_in.dtype)
    if type(step) is FunctionTransformer:
        return transformers.Function(step, path)
    if type(step) is Pipeline or type(step).__name__ == "TransformerPipeline" and type(step).__module__.startswith("sklearn_pandas"):
        return _chain(step, path, ref_in, arr_in, dense)
    if not is_library_object(step):
        return Called(step, path, "called")
    raise Unsupported(f"no compiler for {type(step).__name__}")


def _chain(pipeline: Any, path: str, ref_in: Any, arr_in: Any, dense: bool) -> Chain:
    """Each step verified on what the one before gives; ``dense`` holds for the last only (its output is the chain's)."""
    nodes: list[Node] = []
    steps = [(name, step) for name, step in pipeline.steps if step is not None and step != "passthrough"]
    for i, (name, step) in enumerate(steps):
        node = transformer(step, f"{path}.{name}", ref_in, arr_in, dense=dense and i == len(steps) - 1)
        nodes.append(node)
        ref_in = arr_in = step.transform(ref_in)
    return Chain(pipeline, path, nodes)


def first_step(step: Any, path: str, frame: pd.DataFrame, table: Table) -> Node:
    """The step that receives the whole input frame: a container compiled over the table, or the step as it is."""
    expected = step.transform(frame)
    try:
        node = _columns(step, path, frame, table)
    except Unsupported as exc:
        return _fallback(step, path, str(exc))
    try:
        got = node.transform(table)
    except Defer as exc:
        return _fallback(step, path, f"deferred on the verification rows: {exc}")
    except Exception as exc:  # noqa: BLE001
        return _fallback(step, path, f"compiled step failed: {exc!r}")
    if not same(got, expected):
        return _fallback(step, path, "its output differed from the reference's on the verification rows")
    return node


def _columns(step: Any, path: str, frame: pd.DataFrame, table: Table) -> Columns:
    from sklearn.compose import ColumnTransformer

    if type(step).__name__ == "DataFrameMapper" and type(step).__module__.startswith("sklearn_pandas"):
        return _mapper(step, path, frame, table)
    if type(step) is ColumnTransformer:
        return _column_transformer(step, path, frame, table)
    raise Unsupported(f"no compiler for {type(step).__name__} as the first step")


def _slice(frame: pd.DataFrame, positions: list[int], how: str) -> Slice:
    dtype = frame.iloc[:0, positions].values.dtype if how == VALUES else None
    return Slice(positions, how, dtype)


def _part(child: Any, path: str, frame: pd.DataFrame, table: Table, positions: list[int], vector: bool,
          as_frame: bool, ref_in: Any, dense: bool = False) -> tuple[Slice, Node | None]:
    """A container's child on its columns, verified on the slice it will be handed at run time."""
    values = None if vector else _slice(frame, positions, VALUES)
    reference_how = (SERIES if as_frame else VECTOR) if vector else (FRAME if as_frame else VALUES)
    reference = _slice(frame, positions, reference_how)
    if child is None or child == "passthrough":
        return (values or reference), (Identity(child, path) if child == "passthrough" else None)
    arr_in = values.take(table) if values is not None else None
    node = transformer(child, path, ref_in, arr_in, dense=dense)
    if node.form == "array" and values is not None:
        return values, node
    if node.form != "array":
        given = reference.take(table)
        if not same(_kept(node.transform(given), dense), _kept(child.transform(ref_in), dense)):
            return reference, Called(child, path, "reference", "the rebuilt column slice gave another output")
    return reference, node


def _mapper(mapper: Any, path: str, frame: pd.DataFrame, table: Table) -> Columns:
    if mapper.default is not False:
        raise Unsupported(f"default={mapper.default!r} (only default=False is compiled)")
    if mapper.df_out:
        raise Unsupported("df_out=True")
    names = list(frame.columns)
    parts = []
    for index, (columns, child, options) in enumerate(mapper.built_features):
        if callable(columns):
            raise Unsupported(f"features[{index}] selects columns with a callable")
        vector = isinstance(columns, str)
        wanted = [columns] if vector else list(columns)
        if not all(c in names for c in wanted):
            raise Unsupported(f"features[{index}] names a column the frame does not have")
        as_frame = bool(options.get("input_df", mapper.input_df))
        ref_in = mapper._get_col_subset(frame, columns, as_frame)
        label = options.get("alias") or "_".join(map(str, wanted))
        parts.append(_part(child, f"{path}.features[{index}]:{label}", frame, table, [names.index(c) for c in wanted],
                           vector, as_frame, ref_in))
    return Columns(mapper, path, parts, one_d="column")


def _column_transformer(ct: Any, path: str, frame: pd.DataFrame, table: Table) -> Columns:
    from sklearn.utils import _safe_indexing

    if getattr(ct, "sparse_output_", False):
        raise Unsupported("sparse output")
    if getattr(ct, "_sklearn_output_config", {}).get("transform", "default") != "default":
        raise Unsupported("set_output(transform=...) other than the default")
    fitted_on = getattr(ct, "feature_names_in_", None)
    if fitted_on is None:
        raise Unsupported("fitted on an array (its columns have no names to find in the schema)")
    names = list(frame.columns)
    parts = []
    for name, child, columns in ct.transformers_:
        # Its indices count the columns it was fit on (all of train_data); the plan's frame holds only the
        # schema's inputs, so find each column by name there, as the ColumnTransformer itself does at transform.
        wanted = [str(fitted_on[i]) for i in ct._transformer_to_input_indices[name]]
        if child == "drop" or not wanted:
            continue
        if not all(c in names for c in wanted):
            raise Unsupported(f"{name} reads a column the schema does not hold")
        vector = np.isscalar(columns) and not isinstance(columns, bool)
        ref_in = _safe_indexing(frame, wanted[0] if vector else wanted, axis=1)
        parts.append(_part(child, f"{path}.{name}", frame, table, [names.index(c) for c in wanted], vector, True, ref_in,
                           dense=True))
    return Columns(ct, path, parts, one_d="refuse", densify=True)


def final_step(step: Any, path: str, X: Any, expected: tuple[Any, Any]) -> estimators.Estimator:
    """A verified node for the last step, given its input ``X`` and the reference's (labels, probabilities).

    The node classes are tried in turn; the first whose kind the step is builds it or says why not.
    """
    try:
        for compiled in (estimators.Linear, estimators.Trees, boosting.Boosting):
            try:
                node: estimators.Estimator = compiled(step, path)
                break
            except estimators.NotThisKind:
                continue
        else:
            raise Unsupported(f"no compiler for {type(step).__name__}")
    except Unsupported as exc:
        return estimators.CalledEstimator(step, path, "reference" if is_library_object(step) else "called",
                                          str(exc) if is_library_object(step) else None)
    labels, proba = expected
    try:
        got_labels, got_proba = node.both(X) if proba is not None else (node.predict(X), None)
        ok = same(got_labels, labels) if node.classifier else close(got_labels, labels)
        ok = ok and (proba is None or close(got_proba, proba))
    except Defer as exc:
        return estimators.CalledEstimator(step, path, "reference", f"deferred on the verification rows: {exc}")
    except Exception as exc:  # noqa: BLE001
        return estimators.CalledEstimator(step, path, "reference", f"compiled step failed: {exc!r}")
    if not ok:
        return estimators.CalledEstimator(step, path, "reference", "its output differed from the reference's on the verification rows")
    return node
